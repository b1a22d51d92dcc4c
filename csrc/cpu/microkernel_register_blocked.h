// The register-blocked micro-kernel bodies shared by the SIMD kernels (see microkernel.h for what they
// compute). Each ISA's translation unit includes this after `#pragma GCC target(...)`, so that it is
// compiled for that ISA only, and instantiates it with a vector type providing:
//   reg, lanes, zero(), load(const float*), broadcast(const float*), fmadd(a, b, acc),
//   store(float*, reg), relu(reg) (NaN passes), add(reg, reg); the Winograd transforms also sub and mul
#pragma once

#include <cstdint>
#include <type_traits>

namespace nin_ext {
namespace cpu {

// How far ahead the kernels prefetch their weight panel. The panels stream from L3 or memory (a
// Winograd tile reads all the per-point weights, 6-14 MB for the seed's blocks 2 and 3; the weights
// of the network do not fit in L3 together), and the hardware prefetcher leaves their latency
// exposed: 3 KiB ahead cut the network's time at batch 16 by a tenth with the AVX-512 kernel and by
// 2-3% with the AVX2 one (benchmarks/NOTES.md, v10). Prefetches past the panel's end are harmless.
constexpr int64_t kWeightPrefetchBytes = 3072;

template <int MR>
constexpr int64_t weight_prefetch_steps() {
  return kWeightPrefetchBytes / (MR * int64_t(sizeof(float)));
}

// MR rows x (NV * Vec::lanes) pixels, MR * NV accumulators held in registers; with `accumulate`, c's
// first `rows` rows are added to the products before the bias (a sum of its own, not the start of
// the reduction, so that a reduction in chunks rounds as short sums). `for_each_k(step)` calls
// step(a_k, b_k) once per reduction index: a_k the MR weights of that index, b_k its NR pixels.
// Always inlined, with the steps, so that the accumulators never leave the registers.
template <typename Vec, int MR, int NV, typename ForEachK>
__attribute__((always_inline)) inline void register_blocked_product(const ForEachK& for_each_k, const float* bias,
                                                                    float* c, int64_t ldc, int64_t rows,
                                                                    bool accumulate = false) {
  typename Vec::reg acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = Vec::zero();
    }
  }
  for_each_k([&](const float* a_k, const float* b_k) __attribute__((always_inline)) {
    typename Vec::reg b_v[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      b_v[v] = Vec::load(b_k + v * Vec::lanes);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const typename Vec::reg a_r = Vec::broadcast(a_k + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = Vec::fmadd(a_r, b_v[v], acc[r][v]);
      }
    }
  });
  if (accumulate) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if (r < rows) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          acc[r][v] = Vec::add(Vec::load(c + r * ldc + v * Vec::lanes), acc[r][v]);
        }
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

// The kernel on a pixel panel: b_k = b + k * ldb. Computes the first ROWS rows of the MR-row weight
// panel.
template <typename Vec, int MR, int NV, int ROWS = MR>
inline void register_blocked_microkernel(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias,
                                         float* c, int64_t ldc, int64_t rows) {
  register_blocked_product<Vec, ROWS, NV>(
      [&](const auto& step) __attribute__((always_inline)) {
        for (int64_t k = 0; k < K; ++k) {
          __builtin_prefetch(a + (k + weight_prefetch_steps<MR>()) * MR);
          step(a + k * MR, b + k * ldb);
        }
      },
      bias, c, ldc, rows);
}

// Calls body(std::integral_constant<int, ROWS>{}) with ROWS the smallest third of MR that covers
// `rows`: a panel's rows past `rows` are zero padding, so a layer's last panel computes its rows
// rounded up to a third of MR only (the seed's 256-channel block 2 has 21 full panels of 12 and one
// of 4 rows: 3% of its products and 1x1 layers were padding).
template <int MR, typename Body>
__attribute__((always_inline)) inline void with_row_class(int64_t rows, const Body& body) {
  static_assert(MR % 3 == 0, "the row classes are thirds of MR");
  if (rows <= MR / 3) {
    body(std::integral_constant<int, MR / 3>{});
  } else if (rows <= 2 * MR / 3) {
    body(std::integral_constant<int, 2 * MR / 3>{});
  } else {
    body(std::integral_constant<int, MR>{});
  }
}

// The kernel for any `rows`, by row class.
template <typename Vec, int MR, int NV>
inline void register_blocked_microkernel_rows(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias,
                                              float* c, int64_t ldc, int64_t rows) {
  with_row_class<MR>(rows, [&](auto row_class) {
    register_blocked_microkernel<Vec, MR, NV, decltype(row_class)::value>(K, a, b, ldb, bias, c, ldc, rows);
  });
}

// The kernel on shifted rows of an unpacked input (microkernel.h, ShiftedMicroKernelFn), by row class
// (with_row_class).
template <typename Vec, int MR, int NV>
inline void register_blocked_shifted_microkernel(int64_t K, int64_t shifts, const int64_t* offsets, const float* a,
                                                 const float* b, int64_t ldb, const float* bias, bool accumulate,
                                                 float* c, int64_t ldc, int64_t rows) {
  with_row_class<MR>(rows, [&](auto row_class) {
    register_blocked_product<Vec, decltype(row_class)::value, NV>(
        [&](const auto& step) __attribute__((always_inline)) {
          for (int64_t k = 0; k < K; ++k) {
            for (int64_t s = 0; s < shifts; ++s) {
              __builtin_prefetch(a + (k * shifts + s + weight_prefetch_steps<MR>()) * MR);
              step(a + (k * shifts + s) * MR, b + k * ldb + offsets[s]);
            }
          }
        },
        bias, c, ldc, rows, accumulate);
  });
}

}  // namespace cpu
}  // namespace nin_ext
