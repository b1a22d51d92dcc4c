// The direct path's conv by the pixel-broadcast micro-kernel (microkernel_broadcast_pixels.h): the
// tile's input rows are copied once into a channels-last band and every tap of every pixel is read
// from there in place, with no im2col patch. It serves convs into few output channels, where the
// gather costs as much as the products (benchmarks/NOTES.md, v23).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/aligned_vector_cpu.h"
#include "cpu/microkernel.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// The most reduction steps (input channel and tap pairs) that the broadcast conv sums in one chunk.
constexpr int64_t kBroadcastChunkSteps = 2048;

// Whether the direct path may run convs by the broadcast kernel: yes unless NIN_EXT_CPU_BROADCAST=0,
// changeable at run time for tests and comparisons (the shifted path's tests run without it).
inline std::atomic<bool>& broadcast_mode() {
  static std::atomic<bool> mode([] {
    const char* flag = std::getenv("NIN_EXT_CPU_BROADCAST");
    return flag == nullptr || std::string(flag) != "0";
  }());
  return mode;
}

// Whether the direct path runs a conv of these shapes by the broadcast kernel (float only): 16 input
// channels or more (a tap's inner loop runs over them) into up to 128 output channels, where the
// gather costs a quarter of the products or more, or up to 192 by 3x3 kernels or smaller. Wider convs
// amortise the gather: 384 -> 192 channels by 7x7 at stride 4 ran 1.36x as long by the broadcast
// kernel, 32 -> 160 by 11x11 1.07x; 3x3 convs into 160-192 channels ran 0.99-1.18x as fast (NOTES v23).
inline bool direct_conv_by_broadcast(const NinBlockGeometry& g, int64_t element_size) {
  return element_size == sizeof(float) && broadcast_mode().load() && g.C0 >= 16 &&
         (g.CC <= 128 || (g.CC <= 192 && g.KH * g.KW <= 9));
}

// What the broadcast conv's products cost against the shifted path's, per multiply-add: its band
// copy, the products' trip through a pixel-major buffer and the per-tap setup. Measured as ties at
// most on stride-1 blocks that the shifted path runs without its overhang (384 -> 16 channels by 3x3 on
// 16x16 maps: 10% slower by the broadcast kernel); 1.1 keeps those on the shifted path.
constexpr double kBroadcastProductCost = 1.1;

// The broadcast kernel for a conv into CC output channels: the one that pads CC the least, the wider
// one on a tie.
inline const BroadcastPixelsKernel& broadcast_kernel_for(const MicroKernel<float>& kernel, int64_t CC) {
  const int64_t wide = kernel.broadcast_pixels.channels, narrow = kernel.broadcast_pixels_narrow.channels;
  return (CC + narrow - 1) / narrow * narrow < (CC + wide - 1) / wide * wide ? kernel.broadcast_pixels_narrow
                                                                             : kernel.broadcast_pixels;
}

// The conv weight packed for the broadcast kernel that runs it (broadcast_kernel_for): per group of G
// output channels (the kernel's), per tap, per input channel, the group's G weights (zero past the last
// channel); the bias padded to whole groups.
struct PackedBroadcastConv {
  BroadcastPixelsKernel kernel;
  int64_t group_channels, groups, taps, C0;
  AlignedVector<float> w, bias;

  // From the conv's MR-row panels (PackedLayer: a[(panel K + k) MR + r], k = ci taps + tap) and its bias.
  PackedBroadcastConv(const BroadcastPixelsKernel& k, const float* panels, const float* panel_bias, int64_t M,
                      int64_t c0, int64_t tap_count, int64_t mr)
      : kernel(k), group_channels(k.channels), groups((M + k.channels - 1) / k.channels), taps(tap_count), C0(c0),
        w(groups * taps * C0 * group_channels, 0.f), bias(groups * group_channels, 0.f) {
    const int64_t K = C0 * taps, G = group_channels;
    for (int64_t m = 0; m < M; ++m) {
      const float* row = panels + (m / mr) * K * mr + m % mr;
      float* group = w.data() + (m / G) * taps * C0 * G + m % G;
      for (int64_t ci = 0; ci < C0; ++ci) {
        for (int64_t t = 0; t < taps; ++t) {
          group[(t * C0 + ci) * G] = row[(ci * taps + t) * mr];
        }
      }
      bias[m] = panel_bias[m];
    }
  }

  const float* group(int64_t index) const { return w.data() + index * taps * C0 * group_channels; }
};

}  // namespace cpu
}  // namespace nin_ext
