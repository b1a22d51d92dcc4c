// nin_ext::max_pool2d's and max_pool2d_with_argmax's NCHW plane kernels for AVX-512
// (max_pool2d_plane.h with vector steps): 16 values per instruction, and stride-2 windows (the NiN
// pools) read as two vectors whose even lanes one permute gathers. Compiled for AVX-512 by the pragma and called only when the float
// micro-kernel is the AVX-512 one (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#pragma GCC target("avx512f")
// GCC 12's _mm512_max_ps passes _mm512_undefined_ps() as its unused merge source, which
// -Wmaybe-uninitialized reports as a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "cpu/max_pool2d_plane.h"

namespace nin_ext {
namespace cpu {
namespace {

// max(m, v) where NaN wins, as nan_max: MAXPS returns its second operand when either is NaN, so
// the running max m goes second (a NaN in m stays) and a NaN in v is put back by a blend.
inline __m512 nan_max16(__m512 m, __m512 v) {
  return _mm512_mask_mov_ps(_mm512_max_ps(v, m), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
}

inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// Lanes 0, 2, ..., 30 of the 32 lanes of (lo, hi).
inline __m512 even_of(__m512 lo, __m512 hi) {
  return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), hi);
}

// p[0], p[2], ..., p[30], reading no further than p[left - 1] (zero past it): the starts of 16
// stride-2 windows.
inline __m512 even_lanes(const float* p, int64_t left) {
  return even_of(_mm512_maskz_loadu_ps(tail_mask(left), p),
                 _mm512_maskz_loadu_ps(tail_mask(left > 16 ? left - 16 : 0), p + 16));
}

// The other strides and the argmax's windows: the plain steps, compiled for AVX-512 here.
struct Avx512Isa;
using Avx512CompilerPoolSteps = CompilerVectorisedPoolSteps<Avx512Isa>;

struct Avx512PoolSteps {
  // One pass: each vector of the window's rows is loaded once and the max stored once. Full
  // vectors by plain loads: masked loads for every vector (a first version) ran a 36 MB pool, whose
  // input streams from memory, 2.3x slower, as if the hardware prefetcher skipped them.
  static void max_of_rows(const float* first, int64_t row_stride, int64_t rows, float* out, int64_t n) {
    auto max_at = [&](int64_t i, auto load) {
      __m512 m = load(first + i);
      for (int64_t r = 1; r < rows; ++r) {
        m = nan_max16(m, load(first + r * row_stride + i));
      }
      return m;
    };
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      _mm512_storeu_ps(out + i, max_at(i, [&](const float* p) { return _mm512_loadu_ps(p); }));
    }
    if (i < n) {
      const __mmask16 k = tail_mask(n - i);
      _mm512_mask_storeu_ps(out + i, k, max_at(i, [k](const float* p) { return _mm512_maskz_loadu_ps(k, p); }));
    }
  }

  static void windows(const float* first, float* out, int64_t count, int64_t sw, int64_t kw) {
    if (sw != 2) {
      Avx512CompilerPoolSteps::windows(first, out, count, sw, kw);
      return;
    }
    // Window i reads first[2i .. 2i + kw); the last one ends at first[2 count + kw - 3].
    const int64_t available = 2 * count + kw - 2;
    for (int64_t i = 0; i < count; i += 16) {
      __m512 m = even_lanes(first + 2 * i, available - 2 * i);
      for (int64_t kx = 1; kx < kw; ++kx) {
        m = nan_max16(m, even_lanes(first + 2 * i + kx, available - 2 * i - kx));
      }
      _mm512_mask_storeu_ps(out + i, tail_mask(count - i), m);
    }
  }

  static void windows_argmax(const float* in, int64_t w, int64_t ih_begin, int64_t ih_end, int64_t first_col,
                             int64_t count, int64_t sw, int64_t kw, float* out, int32_t* arg) {
    if (sw != 2) {
      Avx512CompilerPoolSteps::windows_argmax(in, w, ih_begin, ih_end, first_col, count, sw, kw, out,
                                              arg);
      return;
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const int64_t row_end = first_col + 2 * count + kw - 2;  // one past the last column any window reads
    for (int64_t i = 0; i < count; i += 16) {
      __m512 best = _mm512_setzero_ps();
      __m512i best_index = _mm512_setzero_si512();
      for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
        for (int64_t kx = 0; kx < kw; ++kx) {
          const int64_t start = first_col + 2 * i + kx;
          const __m512 v = even_lanes(in + ih * w + start, row_end - start);
          const __m512i index = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(ih * w + start)), even);
          // Row-major order: the first candidate, then any greater value or NaN.
          const __mmask16 take = ih == ih_begin && kx == 0
                                     ? __mmask16(0xFFFF)
                                     : __mmask16(_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) |
                                                 _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
          best = _mm512_mask_mov_ps(best, take, v);
          best_index = _mm512_mask_mov_epi32(best_index, take, index);
        }
      }
      const __mmask16 k = tail_mask(count - i);
      _mm512_mask_storeu_ps(out + i, k, best);
      _mm512_mask_storeu_epi32(arg + i, k, best_index);
    }
  }
};

// max_pool2d_3x3_stride2_plane's steps: 16 windows per vector.
struct Avx512Pool3x3Steps {
  using reg = __m512;
  static constexpr int64_t lanes = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_first(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg nan_max(reg m, reg v) { return nan_max16(m, v); }
  static reg even(reg lo, reg hi) { return even_of(lo, hi); }
  static reg odd(reg lo, reg hi) {
    return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), hi);
  }
  // Columns 2, 4, ..., 32: the even lanes of (lo, hi) and (hi, next) shifted by two.
  static reg even_next(reg lo, reg hi, reg next) { return even(shift_by_two(lo, hi), shift_by_two(hi, next)); }
  static void store_first(float* p, int64_t n, reg v) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }

 private:
  // Lanes 2..15 of lo, then lanes 0 and 1 of hi.
  static reg shift_by_two(reg lo, reg hi) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 2));
  }
};

}  // namespace

void max_pool2d_plane_avx512(const float* in, float* out, const MaxPool2dGeometry& g, float* row) {
  if (is_inner_3x3_stride2(g)) {
    max_pool2d_3x3_stride2_plane<Avx512Pool3x3Steps>(in, out, g);
    return;
  }
  max_pool2d_plane<float, Avx512PoolSteps>(in, out, g, row);
}

void max_pool2d_argmax_plane_avx512(const float* in, float* out, int32_t* arg, const MaxPool2dGeometry& g) {
  max_pool2d_argmax_plane<float, Avx512PoolSteps>(in, out, arg, g);
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
