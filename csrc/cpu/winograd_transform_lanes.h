// The Winograd transforms' inner step, shared by the per-ISA translation units (like the
// micro-kernel body): for LANES tiles side by side (one per SIMD lane),
//   out[(i * rows_r + j) * out_stride + lane] = sum_{k, l} L[i][k] in[(k * inner + l) * in_stride + lane] R[j][l]
// with L (rows_l x inner) and R (rows_r x inner) row-major, inner <= 8. Input transform: L = R = BT;
// output transform: L = R = AT. Zero coefficients are skipped (the matrices are sparse).
#pragma once

#include <cstdint>

namespace nin_ext {
namespace cpu {

// dst[lane] = sum_k c[k] src[k * src_stride + lane] for k < count, zero coefficients skipped.
// Always inlined: as a call it costs about 10% of a Winograd block (measured on block 3).
template <int LANES>
__attribute__((always_inline)) inline void combine_lanes(const float* c, int count, const float* src,
                                                         int64_t src_stride, float* dst) {
  float acc[LANES] = {};
  for (int k = 0; k < count; ++k) {
    if (c[k] == 0.f) {
      continue;
    }
#pragma GCC unroll 4
    for (int lane = 0; lane < LANES; ++lane) {
      acc[lane] += c[k] * src[k * src_stride + lane];
    }
  }
  for (int lane = 0; lane < LANES; ++lane) {
    dst[lane] = acc[lane];
  }
}

template <int LANES>
inline void winograd_transform_lanes(const float* L, int rows_l, const float* R, int rows_r, int inner,
                                     const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  float half[8 * 8 * LANES];  // L in: rows_l x inner
  for (int i = 0; i < rows_l; ++i) {
    for (int l = 0; l < inner; ++l) {
      combine_lanes<LANES>(L + i * inner, inner, in + l * in_stride, inner * in_stride, half + (i * inner + l) * LANES);
    }
  }
  for (int i = 0; i < rows_l; ++i) {  // (L in) R^T
    for (int j = 0; j < rows_r; ++j) {
      combine_lanes<LANES>(R + j * inner, inner, half + i * inner * LANES, LANES, out + (i * rows_r + j) * out_stride);
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext
