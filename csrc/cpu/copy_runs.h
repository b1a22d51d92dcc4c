// The copies of the tiles' gathers and writes: runs of consecutive values (CopyRun, microkernel.h)
// from an input to a tile's buffers, or from them to an output. A gather copies thousands of short
// runs per tile (the seed's block 1: 121 taps x 19 panels x 1-2 output rows; block 2: 104-byte input
// rows), where a memmove call per run costs more than the copy itself.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/microkernel.h"

namespace nin_ext {
namespace cpu {

// dst[0, n) = src[0, n): runs under 64 bytes as two overlapping fixed-size copies (inlined moves),
// longer ones by std::copy.
template <typename T>
inline void copy_run(const T* src, int64_t n, T* dst) {
  const size_t bytes = static_cast<size_t>(n) * sizeof(T);
  auto two_copies = [&](auto size) {
    std::memcpy(dst, src, size);
    std::memcpy(reinterpret_cast<char*>(dst) + bytes - size, reinterpret_cast<const char*>(src) + bytes - size, size);
  };
  if (bytes >= 64) {
    std::copy(src, src + n, dst);
  } else if (bytes >= 32) {
    two_copies(std::integral_constant<size_t, 32>{});
  } else if (bytes >= 16) {
    two_copies(std::integral_constant<size_t, 16>{});
  } else if (bytes >= 8) {
    two_copies(std::integral_constant<size_t, 8>{});
  } else {
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = src[i];
    }
  }
}

// out[run.dst + i] = in[run.src + i] for every run; in and out do not overlap.
template <typename T>
inline void copy_runs_portable(const T* in, const CopyRun* runs, int64_t run_count, T* out) {
  for (int64_t r = 0; r < run_count; ++r) {
    copy_run(in + runs[r].src, runs[r].count, out + runs[r].dst);
  }
}

// out[j] = in[index[j]] for j < count.
template <typename T>
inline void gather_lanes_portable(const T* in, const int32_t* index, int64_t count, T* out) {
  for (int64_t j = 0; j < count; ++j) {
    out[j] = in[index[j]];
  }
}

// dst[iw * pixel_stride + ci] = src[ci * channel_stride + iw * column_stride] for ci < channels, iw <
// width: an input row into channels-last order, by blocks of 16 channels (each pixel's 16 values are
// one cache line, from 16 input rows that stay in cache along the row).
template <typename T>
inline void channels_last_row_portable(const T* src, int64_t channel_stride, int64_t column_stride, int64_t channels,
                                       int64_t width, T* dst, int64_t pixel_stride) {
  for (int64_t c0 = 0; c0 < channels; c0 += 16) {
    const int64_t c1 = std::min<int64_t>(channels, c0 + 16);
    for (int64_t iw = 0; iw < width; ++iw) {
      for (int64_t ci = c0; ci < c1; ++ci) {
        dst[iw * pixel_stride + ci] = src[ci * channel_stride + iw * column_stride];
      }
    }
  }
}

// copy_runs_portable with SIMD vectors (Vec as in microkernel_register_blocked.h), for the per-ISA
// translation units: a run of at least one vector is whole vectors plus one last vector that ends
// with the run (overlapping the one before: the same values, stored twice), shorter runs as
// copy_run's fixed-size copies.
template <typename Vec>
inline void copy_runs_vectors(const float* in, const CopyRun* runs, int64_t run_count, float* out) {
  for (int64_t r = 0; r < run_count; ++r) {
    const float* src = in + runs[r].src;
    float* dst = out + runs[r].dst;
    const int64_t n = runs[r].count;
    if (n < Vec::lanes) {
      copy_run(src, n, dst);
      continue;
    }
    for (int64_t i = 0; i < n - Vec::lanes; i += Vec::lanes) {
      Vec::store(dst + i, Vec::load(src + i));
    }
    Vec::store(dst + n - Vec::lanes, Vec::load(src + n - Vec::lanes));
  }
}

}  // namespace cpu
}  // namespace nin_ext
