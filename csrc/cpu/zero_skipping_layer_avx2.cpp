// A 1x1 layer that skips the products of its zero inputs, for AVX2 + FMA (see microkernel.h).
//
// A 1x1 layer's inputs are a ReLU's outputs, about half of them zero with PyTorch's initialization
// (more in trained networks). The register-blocked kernel holds 16 pixels in its vector lanes and
// cannot skip one pixel's zero; this kernel walks one pixel at a time, its output channels in the
// lanes (up to 12 vectors of accumulators), over the input channels where that pixel is nonzero:
// per nonzero input, one broadcast and a multiply-add per vector with the weights' row of that input.
// The multiply-adds it does run in the plain kernel's order and the skipped ones add exactly zero,
// so the bits are the plain kernel's (weights must be finite: 0 x inf is NaN; the caller checks).
// Its costs beyond the multiply-adds: the masks of nonzero inputs (transposed from the panel layout),
// a mispredicted loop exit and the accumulators saved and reloaded per pixel and chunk of at most 64
// inputs, the sums transposed back. On a 96 x 96 layer of a 640-pixel tile (one Zen 3 thread) it ran
// 0.65-0.85x the plain kernel with no zeros, 1.13-1.23x at half zeros, 1.57-1.81x at 70%
// (benchmarks/NOTES.md, v45), hence the caller's threshold (zero_skipping_min_fraction).
#include "cpu/microkernel.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#if NIN_EXT_X86_64
#pragma GCC target("avx2,fma,bmi,popcnt")
#include <immintrin.h>

namespace nin_ext {
namespace cpu {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kPanel = 16;   // the AVX2 kernel's NR: the panel layout's pixels
constexpr int kMaxVectors = 12;  // accumulators: 12 of the 16 ymm registers
// A chunk of the reduction keeps its weights (chunk x vectors x 32 bytes) within this, so that they
// stay in a 32 KB L1 while a panel's pixels walk them.
constexpr int64_t kChunkWeightBytes = 18 * 1024;

__attribute__((always_inline)) inline void transpose8(__m256 (&r)[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
  }
}

// How many of in[0, count) are nonzero (NaN included); count a multiple of 8.
int64_t count_nonzero(const float* in, int64_t count) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t nonzero = 0;
  for (int64_t i = 0; i < count; i += kLanes) {
    nonzero += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(in + i), zero, _CMP_NEQ_UQ)));
  }
  return nonzero;
}

// Bit k of masks[j * words + k / 64] set where input k of the panel's pixel j is nonzero (NaN
// included). in: the panel's [K][16], K a multiple of 8.
void panel_masks(const float* in, int64_t K, int64_t words, uint64_t* masks) {
  std::memset(masks, 0, kPanel * words * sizeof(uint64_t));
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
    for (int64_t j0 = 0; j0 < kPanel; j0 += kLanes) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        r[i] = _mm256_cmp_ps(_mm256_loadu_ps(in + (k0 + i) * kPanel + j0), zero, _CMP_NEQ_UQ);
      }
      transpose8(r);  // r[i]: pixel j0 + i, inputs k0 to k0 + 7
      for (int i = 0; i < 8; ++i) {
        masks[(j0 + i) * words + k0 / 64] |= uint64_t(static_cast<uint32_t>(_mm256_movemask_ps(r[i]))) << (k0 % 64);
      }
    }
  }
}

// Bits [k0, k0 + count) of a pixel's masks, count <= 64: one word to walk, so one loop exit to
// mispredict per chunk.
inline uint64_t chunk_bits(const uint64_t* mask, int64_t words, int64_t k0, int64_t count) {
  const int64_t w = k0 / 64, offset = k0 % 64;
  uint64_t bits = mask[w] >> offset;
  if (offset != 0 && w + 1 < words) {
    bits |= mask[w + 1] << (64 - offset);
  }
  return count == 64 ? bits : bits & ((uint64_t(1) << count) - 1);
}

// Output channels [m0, m0 + 8 V) of a panel's 16 pixels, summed over their nonzero inputs in
// [k0, k1), k1 - k0 <= 64: from zero (first chunk) or the sums so far; the last chunk adds the bias
// and applies the ReLU (NaN passes, as in torch). in: the panel's [K][16]; weights [K][M]; sums [16][M].
template <int V>
void chunk_over_panel(const float* weights, const float* bias, int64_t M, int64_t K, const float* in, int64_t words,
                      const uint64_t* masks, int64_t m0, int64_t k0, int64_t k1, float* sums) {
  const bool first = k0 == 0;
  const float* shift = k1 == K ? bias + m0 : nullptr;
  const float* chunk_weights = weights + k0 * M + m0;
  for (int64_t j = 0; j < kPanel; ++j) {
    float* s = sums + j * M + m0;
    __m256 acc[V];
#pragma GCC unroll 12
    for (int v = 0; v < V; ++v) {
      acc[v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(s + v * kLanes);
    }
    uint64_t bits = chunk_bits(masks + j * words, words, k0, k1 - k0);
    const float* x = in + k0 * kPanel + j;
    while (bits != 0) {
      const int64_t k = __builtin_ctzll(bits);
      bits &= bits - 1;
      const __m256 xk = _mm256_broadcast_ss(x + k * kPanel);
      const float* wk = chunk_weights + k * M;
#pragma GCC unroll 12
      for (int v = 0; v < V; ++v) {
        acc[v] = _mm256_fmadd_ps(xk, _mm256_loadu_ps(wk + v * kLanes), acc[v]);
      }
    }
    if (shift != nullptr) {
#pragma GCC unroll 12
      for (int v = 0; v < V; ++v) {
        acc[v] = _mm256_max_ps(_mm256_setzero_ps(), _mm256_add_ps(acc[v], _mm256_loadu_ps(shift + v * kLanes)));
      }
    }
#pragma GCC unroll 12
    for (int v = 0; v < V; ++v) {
      _mm256_storeu_ps(s + v * kLanes, acc[v]);
    }
  }
}

using ChunkFn = void (*)(const float*, const float*, int64_t, int64_t, const float*, int64_t, const uint64_t*,
                         int64_t, int64_t, int64_t, float*);

template <int... V>
constexpr std::array<ChunkFn, sizeof...(V)> chunk_kernels(std::integer_sequence<int, V...>) {
  return {&chunk_over_panel<V + 1>...};
}

}  // namespace

bool zero_skipping_layer_avx2(const float* weights, const float* bias, int64_t M, int64_t K, const float* in,
                              float* out, int64_t panels, double min_zero_fraction, float* sums, uint64_t* masks) {
  // The tile's zeros estimated from every fourth panel: the count reads its panels from L2, and a
  // full count cost about 1% of the seed's blocks 2 and 3, which stay on the plain kernel.
  constexpr int64_t kSampleStride = 4;
  int64_t values = 0, nonzero = 0;
  for (int64_t p = 0; p < panels; p += kSampleStride) {
    values += kPanel * K;
    nonzero += count_nonzero(in + p * K * kPanel, kPanel * K);
  }
  if (static_cast<double>(values - nonzero) < min_zero_fraction * static_cast<double>(values)) {
    return false;
  }
  const int64_t words = (K + 63) / 64;
  static constexpr auto kChunks = chunk_kernels(std::make_integer_sequence<int, kMaxVectors>{});
  for (int64_t p = 0; p < panels; ++p) {
    const float* panel_in = in + p * K * kPanel;
    panel_masks(panel_in, K, words, masks);  // just before the walks, which read the panel again
    for (int64_t m0 = 0; m0 < M; m0 += kMaxVectors * kLanes) {
      const int vectors = static_cast<int>(std::min<int64_t>(kMaxVectors, (M - m0) / kLanes));
      const int64_t chunk = std::clamp<int64_t>(kChunkWeightBytes / (vectors * 32) / kLanes * kLanes, kLanes, 64);
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        kChunks[vectors - 1](weights, bias, M, K, panel_in, words, masks, m0, k0, std::min(K, k0 + chunk),
                             sums);
      }
    }
    // The panel's sums, pixel by pixel, into the panel layout.
    for (int64_t c0 = 0; c0 < M; c0 += kLanes) {
      for (int64_t j0 = 0; j0 < kPanel; j0 += kLanes) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) {
          r[i] = _mm256_loadu_ps(sums + (j0 + i) * M + c0);
        }
        transpose8(r);
        for (int i = 0; i < 8; ++i) {
          _mm256_storeu_ps(out + (p * M + c0 + i) * kPanel + j0, r[i]);
        }
      }
    }
  }
  return true;
}

}  // namespace cpu
}  // namespace nin_ext
#endif
