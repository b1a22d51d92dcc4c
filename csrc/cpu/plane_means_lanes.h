// global_avg_pool's float planes by vectors: the sums of global_avg_pool_cpu.cpp's sum_in_lanes
// (8 interleaved partial sums in double, added up in a fixed order: the same bits), its 8 lanes held
// in vectors, four planes at a time (one plane's sum is a chain of dependent adds). Included by the
// ISA's translation unit, which compiles it for that ISA.
#pragma once

#include <algorithm>
#include <cstdint>

namespace nin_ext {
namespace cpu {

// DoubleLanes: 8 double partial sums; zero(), add(acc, const float* 8 values), store(double* 8).
template <typename DoubleLanes>
void plane_means_by_lanes(const float* in, int64_t planes, int64_t pixels, float* out) {
  using lanes_t = typename DoubleLanes::type;
  constexpr int kPlanes = 4;
  const double inv_pixels = 1.0 / static_cast<double>(pixels);
  for (int64_t first = 0; first < planes; first += kPlanes) {
    const int count = static_cast<int>(std::min<int64_t>(kPlanes, planes - first));
    lanes_t partial[kPlanes] = {DoubleLanes::zero(), DoubleLanes::zero(), DoubleLanes::zero(), DoubleLanes::zero()};
    int64_t p = 0;
    for (; p + 8 <= pixels; p += 8) {
      for (int i = 0; i < kPlanes; ++i) {
        if (i < count) {
          partial[i] = DoubleLanes::add(partial[i], in + (first + i) * pixels + p);
        }
      }
    }
    for (int i = 0; i < count; ++i) {
      alignas(64) double lanes[8];
      DoubleLanes::store(lanes, partial[i]);
      for (int64_t q = p; q < pixels; ++q) {
        lanes[0] += static_cast<double>(in[(first + i) * pixels + q]);
      }
      double total = 0;
      for (int lane = 0; lane < 8; ++lane) {
        total += lanes[lane];
      }
      out[first + i] = static_cast<float>(total * inv_pixels);
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext
