// nin_ext::max_pool2d's and max_pool2d_with_argmax's NCHW plane kernels for AVX2 (max_pool2d_plane.h
// with vector steps): 8 values per instruction, and stride-2 windows (the NiN pools) read as two
// vectors whose even lanes two permutes and a blend gather. Compiled for AVX2 by the pragma and
// called only when the float micro-kernel is the AVX2 one (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "cpu/max_pool2d_plane.h"

namespace nin_ext {
namespace cpu {
namespace {

// max(m, v) where NaN wins, as nan_max: MAXPS returns its second operand when either is NaN, so
// the running max m goes second (a NaN in m stays) and a NaN in v is put back by a blend.
inline __m256 nan_max8(__m256 m, __m256 v) {
  return _mm256_blendv_ps(_mm256_max_ps(v, m), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

// Lanes [0, n) set (sign bits) for the masked loads and stores.
inline __m256i lanes_below(int64_t n) {
  const int32_t count = static_cast<int32_t>(n < 0 ? 0 : n > 8 ? 8 : n);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Lanes 0-3 of lo permuted by `index`, then lanes 4-7 of hi permuted by it.
inline __m256 permuted_halves(__m256 lo, __m256 hi, __m256i index) {
  return _mm256_blend_ps(_mm256_permutevar8x32_ps(lo, index), _mm256_permutevar8x32_ps(hi, index), 0xF0);
}

// p[0], p[2], ..., p[14], reading no further than p[left - 1] (zero past it): the starts of 8
// stride-2 windows.
inline __m256 even_lanes(const float* p, int64_t left) {
  return permuted_halves(_mm256_maskload_ps(p, lanes_below(left)), _mm256_maskload_ps(p + 8, lanes_below(left - 8)),
                         _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
}

// The other strides: the plain steps, compiled for AVX2 here.
struct Avx2Isa;
using Avx2CompilerPoolSteps = CompilerVectorisedPoolSteps<Avx2Isa>;

struct Avx2PoolSteps {
  // One pass over the window's rows, 8 values at a time: plain loads, masked ones for the tail.
  static void max_of_rows(const float* first, int64_t row_stride, int64_t rows, float* out, int64_t n) {
    auto max_at = [&](int64_t i, auto load) {
      __m256 m = load(first + i);
      for (int64_t r = 1; r < rows; ++r) {
        m = nan_max8(m, load(first + r * row_stride + i));
      }
      return m;
    };
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(out + i, max_at(i, [&](const float* p) { return _mm256_loadu_ps(p); }));
    }
    if (i < n) {
      const __m256i k = lanes_below(n - i);
      _mm256_maskstore_ps(out + i, k, max_at(i, [k](const float* p) { return _mm256_maskload_ps(p, k); }));
    }
  }

  static void windows(const float* first, float* out, int64_t count, int64_t sw, int64_t kw) {
    if (sw != 2) {
      Avx2CompilerPoolSteps::windows(first, out, count, sw, kw);
      return;
    }
    // Window i reads first[2i .. 2i + kw); the last one ends at first[2 count + kw - 3].
    const int64_t available = 2 * count + kw - 2;
    for (int64_t i = 0; i < count; i += 8) {
      __m256 m = even_lanes(first + 2 * i, available - 2 * i);
      for (int64_t kx = 1; kx < kw; ++kx) {
        m = nan_max8(m, even_lanes(first + 2 * i + kx, available - 2 * i - kx));
      }
      _mm256_maskstore_ps(out + i, lanes_below(count - i), m);
    }
  }

  static void windows_argmax(const float* in, int64_t w, int64_t ih_begin, int64_t ih_end, int64_t first_col,
                             int64_t count, int64_t sw, int64_t kw, float* out, int32_t* arg) {
    if (sw != 2) {
      Avx2CompilerPoolSteps::windows_argmax(in, w, ih_begin, ih_end, first_col, count, sw, kw, out, arg);
      return;
    }
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const int64_t row_end = first_col + 2 * count + kw - 2;  // one past the last column any window reads
    for (int64_t i = 0; i < count; i += 8) {
      __m256 best = _mm256_setzero_ps();
      __m256i best_index = _mm256_setzero_si256();
      for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
        for (int64_t kx = 0; kx < kw; ++kx) {
          const int64_t start = first_col + 2 * i + kx;
          const __m256 v = even_lanes(in + ih * w + start, row_end - start);
          const __m256i index = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(ih * w + start)), even);
          // Row-major order: the first candidate, then any greater value or NaN.
          const __m256 take = ih == ih_begin && kx == 0
                                  ? _mm256_castsi256_ps(_mm256_set1_epi32(-1))
                                  : _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
          best = _mm256_blendv_ps(best, v, take);
          best_index = _mm256_castps_si256(
              _mm256_blendv_ps(_mm256_castsi256_ps(best_index), _mm256_castsi256_ps(index), take));
        }
      }
      const __m256i k = lanes_below(count - i);
      _mm256_maskstore_ps(out + i, k, best);
      _mm256_maskstore_epi32(arg + i, k, best_index);
    }
  }
};

// max_pool2d_3x3_stride2_plane's steps: 8 windows per vector, the even and odd lanes of two
// registers gathered by a permute of each and a blend.
struct Avx2Pool3x3Steps {
  using reg = __m256;
  static constexpr int64_t lanes = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_first(const float* p, int64_t n) { return _mm256_maskload_ps(p, lanes_below(n)); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg nan_max(reg m, reg v) { return nan_max8(m, v); }
  static reg even(reg lo, reg hi) { return permuted_halves(lo, hi, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)); }
  static reg odd(reg lo, reg hi) { return permuted_halves(lo, hi, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7)); }
  // Columns 2, 4, ..., 16: lo's 2, 4, 6, hi's 0, 2, 4, 6, next's 0.
  static reg even_next(reg lo, reg hi, reg next) {
    const __m256i shifted = _mm256_setr_epi32(2, 4, 6, 0, 2, 4, 6, 0);
    return _mm256_blend_ps(_mm256_blend_ps(_mm256_permutevar8x32_ps(lo, shifted), _mm256_permutevar8x32_ps(hi, shifted), 0x78),
                           _mm256_permutevar8x32_ps(next, shifted), 0x80);
  }
  static void store_first(float* p, int64_t n, reg v) { _mm256_maskstore_ps(p, lanes_below(n), v); }
};

}  // namespace

void max_pool2d_plane_avx2(const float* in, float* out, const MaxPool2dGeometry& g, float* row) {
  if (is_inner_3x3_stride2(g)) {
    max_pool2d_3x3_stride2_plane<Avx2Pool3x3Steps>(in, out, g);
    return;
  }
  max_pool2d_plane<float, Avx2PoolSteps>(in, out, g, row);
}

void max_pool2d_argmax_plane_avx2(const float* in, float* out, int32_t* arg, const MaxPool2dGeometry& g) {
  max_pool2d_argmax_plane<float, Avx2PoolSteps>(in, out, arg, g);
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
