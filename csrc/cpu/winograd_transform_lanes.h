// The Winograd transforms' inner step, shared by the per-ISA translation units (like the
// micro-kernel body): for LANES tiles side by side (one per SIMD lane),
//   out[(i * rows_r + j) * out_stride + lane] = sum_{k, l} L[i][k] in[(k * inner + l) * in_stride + lane] R[j][l]
// with L (rows_l x inner) and R (rows_r x inner) row-major, inner <= 8. Input transform: L = R = BT;
// output transform: L = R = AT. Zero coefficients are skipped (the matrices are sparse).
#pragma once

#include <cstdint>

namespace nin_ext {
namespace cpu {

template <int LANES>
inline void winograd_transform_lanes(const float* L, int rows_l, const float* R, int rows_r, int inner,
                                     const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  float half[8 * 8 * LANES];
  for (int i = 0; i < rows_l; ++i) {
    for (int l = 0; l < inner; ++l) {
      float acc[LANES] = {};
      for (int k = 0; k < inner; ++k) {
        const float c = L[i * inner + k];
        if (c == 0.f) {
          continue;
        }
        const float* src = in + (k * inner + l) * in_stride;
#pragma GCC unroll 4
        for (int lane = 0; lane < LANES; ++lane) {
          acc[lane] += c * src[lane];
        }
      }
      float* dst = half + (i * inner + l) * LANES;
      for (int lane = 0; lane < LANES; ++lane) {
        dst[lane] = acc[lane];
      }
    }
  }
  for (int i = 0; i < rows_l; ++i) {
    for (int j = 0; j < rows_r; ++j) {
      float acc[LANES] = {};
      for (int l = 0; l < inner; ++l) {
        const float c = R[j * inner + l];
        if (c == 0.f) {
          continue;
        }
        const float* src = half + (i * inner + l) * LANES;
#pragma GCC unroll 4
        for (int lane = 0; lane < LANES; ++lane) {
          acc[lane] += c * src[lane];
        }
      }
      float* dst = out + (i * rows_r + j) * out_stride;
      for (int lane = 0; lane < LANES; ++lane) {
        dst[lane] = acc[lane];
      }
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext
