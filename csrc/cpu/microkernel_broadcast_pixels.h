// The pixel-broadcast micro-kernel: the conv with output channels in the vector lanes and pixels
// broadcast, reading each pixel's input in place from channels-last rows (no im2col). One call
// computes PR pixels x NV vectors of output channels:
//   c[r * ldc + o] = relu(bias[o] + sum_{t, ci} x[pixels[r] + taps[t] + ci] * w[(t * tap_stride + ci) * G + o])
// for r < rows, o < G = NV lanes; t < tap_count, ci < channels. With `accumulate` it adds c's values
// first; bias == nullptr stores the plain sum. pixels[] has PR entries (the caller repeats the last
// one past `rows`). Where a conv has few output channels, the im2col gather of the pixel-vector
// kernels costs as much as the products (each gathered value meets CC weights); here the input is
// read where it lies and each weight vector meets PR pixels.
#pragma once

#include <cstdint>

namespace nin_ext {
namespace cpu {

template <typename Vec, int PR, int NV>
void broadcast_pixels_microkernel(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                  const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                  const float* bias, bool accumulate, float* c, int64_t ldc) {
  constexpr int G = NV * Vec::lanes;
  typename Vec::reg acc[PR][NV];
#pragma GCC unroll 32
  for (int r = 0; r < PR; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = Vec::zero();
    }
  }
  for (int64_t t = 0; t < tap_count; ++t) {
    const float* in[PR];
#pragma GCC unroll 32
    for (int r = 0; r < PR; ++r) {
      in[r] = x + pixels[r] + taps[t];
    }
    const float* wt = w + t * tap_stride * G;
    for (int64_t ci = 0; ci < channels; ++ci) {
      typename Vec::reg weights[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        weights[v] = Vec::load(wt + ci * G + v * Vec::lanes);
      }
#pragma GCC unroll 32
      for (int r = 0; r < PR; ++r) {
        const typename Vec::reg value = Vec::broadcast(in[r] + ci);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          acc[r][v] = Vec::fmadd(value, weights[v], acc[r][v]);
        }
      }
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < PR; ++r) {
    if (r < rows) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        float* out = c + r * ldc + v * Vec::lanes;
        typename Vec::reg sum = accumulate ? Vec::add(Vec::load(out), acc[r][v]) : acc[r][v];
        if (bias != nullptr) {
          sum = Vec::relu(Vec::add(sum, Vec::load(bias + v * Vec::lanes)));
        }
        Vec::store(out, sum);
      }
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext
