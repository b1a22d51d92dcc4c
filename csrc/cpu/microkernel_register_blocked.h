// The register-blocked micro-kernel body shared by the SIMD kernels (see microkernel.h for what it
// computes). Each ISA's translation unit includes it after `#pragma GCC target(...)`, so that it is
// compiled for that ISA only, and instantiates it with a vector type providing:
//   reg, lanes, zero(), load(const float*), broadcast(const float*), fmadd(a, b, acc),
//   store(float*, reg), relu(reg) (NaN passes), add(reg, reg)
#pragma once

#include <cstdint>

namespace nin_ext {
namespace cpu {

// MR rows x (NV * Vec::lanes) pixels, MR * NV accumulators held in registers.
template <typename Vec, int MR, int NV>
inline void register_blocked_microkernel(int64_t K, const float* a, const float* b, const float* bias, float* c,
                                         int64_t ldc, int64_t rows) {
  constexpr int NR = NV * Vec::lanes;
  typename Vec::reg acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = Vec::zero();
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    typename Vec::reg b_k[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      b_k[v] = Vec::load(b + k * NR + v * Vec::lanes);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const typename Vec::reg a_r = Vec::broadcast(a + k * MR + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = Vec::fmadd(a_r, b_k[v], acc[r][v]);
      }
    }
  }
  if (bias == nullptr) {  // a linear product (Winograd's per-point products)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if (r < rows) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          Vec::store(c + r * ldc + v * Vec::lanes, acc[r][v]);
        }
      }
    }
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (r < rows) {
      const typename Vec::reg shift = Vec::broadcast(bias + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        Vec::store(c + r * ldc + v * Vec::lanes, Vec::relu(Vec::add(acc[r][v], shift)));
      }
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext
