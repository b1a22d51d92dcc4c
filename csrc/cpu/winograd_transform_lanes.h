// The Winograd transforms' inner step, shared by the per-ISA translation units (like the
// micro-kernel body): for LANES tiles side by side (one per SIMD lane),
//   out[(i * rows + j) * out_stride + lane] = sum_{k, l} M[i][k] in[(k * inner + l) * in_stride + lane] M[j][l]
// with M (rows x inner) row-major, inner <= 8. Input transform: M = BT; output transform: M = AT.
// Each pass keeps a column of its input and the rows it makes in registers (Vec, as in
// microkernel_register_blocked.h) for one vector of lanes at a time, so that every input is loaded
// once; zero coefficients are skipped (the matrices are sparse). Also the portable patch gather and
// output scatter of a tile's lanes (the AVX-512 ones are in microkernel_avx512.cpp).
#pragma once

#include <cstdint>
#include <cstdlib>

#include "cpu/microkernel.h"

namespace nin_ext {
namespace cpu {

// out[i * out_i + c * out_c + lane] = sum_k M[i][k] in[k * in_k + c * in_c + lane] for i < ROWS,
// c < columns and the LANES lanes (NV vectors, which share each coefficient's broadcast).
template <typename Vec, int LANES, int ROWS, int INNER>
__attribute__((always_inline)) inline void transform_pass(const float* M, int columns, const float* in, int64_t in_k,
                                                          int64_t in_c, float* out, int64_t out_i, int64_t out_c) {
  constexpr int NV = LANES / Vec::lanes;
  for (int c = 0; c < columns; ++c) {
    typename Vec::reg x[INNER][NV];
#pragma GCC unroll 8
    for (int k = 0; k < INNER; ++k) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        x[k][v] = Vec::load(in + k * in_k + c * in_c + v * Vec::lanes);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i) {
      typename Vec::reg acc[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        acc[v] = Vec::zero();
      }
#pragma GCC unroll 8
      for (int k = 0; k < INNER; ++k) {
        if (M[i * INNER + k] != 0.f) {
          const typename Vec::reg coefficient = Vec::broadcast(M + i * INNER + k);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) {
            acc[v] = Vec::fmadd(coefficient, x[k][v], acc[v]);
          }
        }
      }
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        Vec::store(out + i * out_i + c * out_c + v * Vec::lanes, acc[v]);
      }
    }
  }
}

// M in M^T for LANES lanes, ROWS x INNER fixed so that the passes unroll into registers.
template <typename Vec, int LANES, int ROWS, int INNER>
void transform_fixed(const float* M, const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  float half[ROWS * INNER * LANES];  // M in: [i][l][lane]
  // half[i][l] = sum_k M[i][k] in[k][l]: column l of in, over k.
  transform_pass<Vec, LANES, ROWS, INNER>(M, INNER, in, INNER * in_stride, in_stride, half, INNER * LANES, LANES);
  // out[i][j] = sum_l M[j][l] half[i][l]: row i of half, over l.
  transform_pass<Vec, LANES, ROWS, INNER>(M, ROWS, half, LANES, INNER * LANES, out, out_stride, ROWS * out_stride);
}

// The sizes that winograd_transform() builds: input transforms alpha x alpha (alpha = m + r - 1 for
// m = 2..4, r = 3, 5), output transforms m x alpha.
template <typename Vec, int LANES>
void winograd_transform_lanes(const float* M, int rows, int inner, const float* in, int64_t in_stride, float* out,
                              int64_t out_stride) {
  switch (rows * 16 + inner) {
#define NIN_EXT_TRANSFORM_SIZE(R, I) \
  case R * 16 + I:                   \
    return transform_fixed<Vec, LANES, R, I>(M, in, in_stride, out, out_stride);
    NIN_EXT_TRANSFORM_SIZE(4, 4)
    NIN_EXT_TRANSFORM_SIZE(5, 5)
    NIN_EXT_TRANSFORM_SIZE(6, 6)
    NIN_EXT_TRANSFORM_SIZE(7, 7)
    NIN_EXT_TRANSFORM_SIZE(8, 8)
    NIN_EXT_TRANSFORM_SIZE(2, 4)
    NIN_EXT_TRANSFORM_SIZE(2, 6)
    NIN_EXT_TRANSFORM_SIZE(3, 5)
    NIN_EXT_TRANSFORM_SIZE(3, 7)
    NIN_EXT_TRANSFORM_SIZE(4, 6)
    NIN_EXT_TRANSFORM_SIZE(4, 8)
#undef NIN_EXT_TRANSFORM_SIZE
  }
  std::abort();  // unreachable: winograd_transform() builds no other size
}

// The input patches of `length` consecutive m x m blocks, the first at block column bx, side by side:
//   d[(i * alpha + j) * nr + l] = band[i * band_width + m * (bx + l) + j]   for i, j < alpha, l < length
// (band: alpha padded input rows). Scalar: a stride-m read per value.
inline void winograd_gather_portable(const float* band, int64_t band_width, int m, int alpha, int64_t bx,
                                     int64_t length, float* d, int64_t nr) {
  for (int i = 0; i < alpha; ++i) {
    for (int j = 0; j < alpha; ++j) {
      const float* src = band + i * band_width + m * bx + j;
      float* dst = d + (i * alpha + j) * nr;
      for (int64_t l = 0; l < length; ++l) {
        dst[l] = src[m * l];
      }
    }
  }
}

// Bias + ReLU of an output block's lanes into the tile's panels, run by run (LaneRun, microkernel.h).
inline void winograd_scatter_portable(const float* y, float shift, const LaneRun* runs, int64_t run_count,
                                      float* out) {
  for (int64_t r = 0; r < run_count; ++r) {
    for (int64_t i = 0; i < runs[r].count; ++i) {
      const float value = y[runs[r].src + i] + shift;
      out[runs[r].dst + i] = value < 0.f ? 0.f : value;  // NaN passes, as in torch.relu
    }
  }
}

// One float per "vector", for the portable kernel (the compiler vectorises what it can).
struct ScalarVec {
  using reg = float;
  static constexpr int lanes = 1;
  static reg zero() { return 0.f; }
  static reg load(const float* p) { return *p; }
  static reg broadcast(const float* p) { return *p; }
  static reg fmadd(reg a, reg b, reg acc) { return acc + a * b; }
  static void store(float* p, reg v) { *p = v; }
};

}  // namespace cpu
}  // namespace nin_ext
