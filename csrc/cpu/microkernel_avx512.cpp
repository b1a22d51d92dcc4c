// The float micro-kernel for AVX-512: 12 rows x 32 pixels, 24 zmm accumulators. Compiled for
// AVX-512 by the pragma (the rest of the build stays portable) and called only when the CPU
// reports avx512f (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#pragma GCC target("avx512f")
// GCC 12's _mm512_max_ps and _mm512_unpack{lo,hi}_ps pass _mm512_undefined_ps() as their unused merge
// source, which -Wmaybe-uninitialized and -Wuninitialized report as a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "cpu/copy_runs.h"
#include "cpu/microkernel_broadcast_pixels.h"
#include "cpu/microkernel_register_blocked.h"
#include "cpu/plane_means_lanes.h"
#include "cpu/winograd_transform_lanes.h"

namespace nin_ext {
namespace cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  static constexpr int lanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fmadd(reg a, reg b, reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  // MAXPS returns its second operand when either is NaN: max(0, NaN) = NaN, as torch.relu.
  static reg relu(reg v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // The mask of the first n <= 16 lanes.
  static __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
  // The lanes of `bits` from b, the others from a.
  using mask = __mmask16;
  static mask lane_mask(uint32_t bits) { return static_cast<__mmask16>(bits); }
  static reg blend(mask m, reg a, reg b) { return _mm512_mask_blend_ps(m, a, b); }
};

// r[i][j] -> r[j][i] for a 16 x 16 block in registers.
inline void transpose_16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  const __m512i low = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
  const __m512i high = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_permutex2var_ps(r[i], low, r[i + 4]);
    t[i + 4] = _mm512_permutex2var_ps(r[i], high, r[i + 4]);
    t[i + 8] = _mm512_permutex2var_ps(r[i + 8], low, r[i + 12]);
    t[i + 12] = _mm512_permutex2var_ps(r[i + 8], high, r[i + 12]);
  }
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_permutex2var_ps(t[i], first, t[i + 8]);
    r[i + 8] = _mm512_permutex2var_ps(t[i], second, t[i + 8]);
  }
}

// store_transposed by two 16 x 16 transposes in registers: a block of up to 12 rows (its rows past
// ROWS read as zero) of 32 channels, each channel one masked store of `rows` lanes.
struct StoreTransposedAvx512 {
  template <typename RowClass>
  void operator()(RowClass, const float* block, float* c, int64_t ldc, int64_t rows) const {
    constexpr int ROWS = RowClass::value;
    const __mmask16 lanes = Avx512::first_lanes(rows);
    for (int half = 0; half < 2; ++half) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = i < ROWS ? _mm512_load_ps(block + i * 32 + half * 16) : _mm512_setzero_ps();
      }
      transpose_16x16(r);
      for (int j = 0; j < 16; ++j) {
        _mm512_mask_storeu_ps(c + (half * 16 + j) * ldc, lanes, r[j]);
      }
    }
  }
};

}  // namespace

void microkernel_avx512_12x32(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias, float* c,
                              int64_t ldc, int64_t rows) {
  register_blocked_microkernel_rows<Avx512, 12, 2>(K, a, b, ldb, bias, c, ldc, rows);
}

void swapped_product_avx512_12x32(int64_t K, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                                  int64_t rows) {
  register_blocked_swapped_product<Avx512, 12, 2>(K, a, lda, b, c, ldc, rows, StoreTransposedAvx512{});
}

void shifted_microkernel_avx512_12x32(int64_t K, int64_t shifts, const int64_t* offsets, const float* a,
                                      const float* b, int64_t ldb, const int64_t* lanes,
                                      const float* bias, bool accumulate, float* c, int64_t ldc, int64_t rows) {
  register_blocked_shifted_microkernel<Avx512, 12, 2>(K, shifts, offsets, a, b, ldb, lanes, bias, accumulate, c,
                                                      ldc, rows);
}

void winograd_input_transform_avx512_32(int m, int r, const float* in, int64_t in_stride, float* out,
                                        int64_t out_stride) {
  winograd_transform_lanes<Avx512, 32, false>(m, r, in, in_stride, out, out_stride);
}

void winograd_output_transform_avx512_32(int m, int r, const float* in, int64_t in_stride, float* out,
                                         int64_t out_stride) {
  winograd_transform_lanes<Avx512, 32, true>(m, r, in, in_stride, out, out_stride);
}

void winograd_output_gradient_transform_avx512_32(int m, int r, const float* in, int64_t in_stride, float* out,
                                                  int64_t out_stride) {
  winograd_output_gradient_lanes<Avx512, 32>(m, r, in, in_stride, out, out_stride);
}

// winograd_gather_portable with permutes: per band row, the 32 values that up to `chunk` blocks read
// are loaded once, and each patch element's lanes are one two-source permute of them (stride m) and
// one masked store. The scalar reads were 4% of the seed's block 2.
void winograd_gather_avx512(const float* band, int64_t band_width, int m, int alpha, int64_t bx, int64_t length,
                            float* d, int64_t nr) {
  const int64_t chunk = std::min<int64_t>(16, (32 - alpha) / m + 1);  // blocks whose values fit in 32
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i strided = _mm512_mullo_epi32(lane, _mm512_set1_epi32(m));
  for (int64_t l0 = 0; l0 < length; l0 += chunk) {
    const int64_t count = std::min(chunk, length - l0), values = m * (count - 1) + alpha;
    const __mmask16 store_mask = Avx512::first_lanes(count);
    const __mmask16 low_mask = static_cast<__mmask16>(values >= 16 ? 0xffffu : (1u << values) - 1);
    const __mmask16 high_mask = static_cast<__mmask16>(values <= 16 ? 0u : (1u << (values - 16)) - 1);
    for (int i = 0; i < alpha; ++i) {
      const float* src = band + i * band_width + m * (bx + l0);
      const __m512 low = _mm512_maskz_loadu_ps(low_mask, src), high = _mm512_maskz_loadu_ps(high_mask, src + 16);
      for (int j = 0; j < alpha; ++j) {
        const __m512 patch = _mm512_permutex2var_ps(low, _mm512_add_epi32(strided, _mm512_set1_epi32(j)), high);
        _mm512_mask_storeu_ps(d + (i * alpha + j) * nr + l0, store_mask, patch);
      }
    }
  }
}

// winograd_scatter_portable with permutes: 16 raster values per masked store, from masked loads of
// the m columns' lanes (the raster order lets the tile's writes copy whole rows; a scalar pass there
// was 4-6% of the seed's block 2).
void winograd_scatter_avx512(const float* y, int m, int64_t nr, float shift, const WinogradRowRun* runs,
                             int64_t run_count, float* out) {
  const RowInterleaveTable& table = kRowInterleaveTable;
  const __m512 bias = _mm512_set1_ps(shift);
  for_each_row_vector<16>(y, m, runs, run_count, out, [&](const float* src, int phase, int64_t n, float* dst) {
    const __mmask16 lanes = Avx512::first_lanes((phase + n - 1) / m + 1);
    const __m512i index = _mm512_load_si512(table.pair_index[m][phase]);
    __m512 v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(lanes, src), index,
                                      _mm512_maskz_loadu_ps(lanes, src + nr));
    if (m > 2) {
      const __m512 column2 = _mm512_maskz_loadu_ps(lanes, src + 2 * nr);
      const __m512 column3 = m > 3 ? _mm512_maskz_loadu_ps(lanes, src + 3 * nr) : column2;
      const __mmask16 high = _mm512_cmpge_epi32_mask(_mm512_load_si512(table.column[m][phase]), _mm512_set1_epi32(2));
      v = _mm512_mask_blend_ps(high, v, _mm512_permutex2var_ps(column2, index, column3));
    }
    _mm512_mask_storeu_ps(dst, Avx512::first_lanes(n), Avx512::relu(_mm512_add_ps(v, bias)));
  });
}

void copy_runs_avx512(const float* in, const CopyRun* runs, int64_t run_count, float* out) {
  copy_runs_vectors<Avx512>(in, runs, run_count, out);
}

void broadcast_pixels_avx512_12x32(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                   const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                   const float* bias, bool accumulate, float* c, int64_t ldc) {
  broadcast_pixels_microkernel<Avx512, 12, 2>(tap_count, taps, channels, x, pixels, rows, w, tap_stride, bias,
                                              accumulate, c, ldc);
}

void broadcast_pixels_avx512_12x16(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                   const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                   const float* bias, bool accumulate, float* c, int64_t ldc) {
  broadcast_pixels_microkernel<Avx512, 12, 1>(tap_count, taps, channels, x, pixels, rows, w, tap_stride, bias,
                                              accumulate, c, ldc);
}

// channels_last_row_portable by 16 x 16 blocks transposed in registers (masked at the edges) where
// the row's columns are contiguous.
void channels_last_row_avx512(const float* src, int64_t channel_stride, int64_t column_stride, int64_t channels,
                              int64_t width, float* dst, int64_t pixel_stride) {
  if (column_stride != 1) {
    channels_last_row_portable(src, channel_stride, column_stride, channels, width, dst, pixel_stride);
    return;
  }
  for (int64_t c0 = 0; c0 < channels; c0 += 16) {
    const int64_t nc = std::min<int64_t>(16, channels - c0);
    const __mmask16 channel_mask = Avx512::first_lanes(nc);
    for (int64_t w0 = 0; w0 < width; w0 += 16) {
      const int64_t nw = std::min<int64_t>(16, width - w0);
      const __mmask16 column_mask = Avx512::first_lanes(nw);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = i < nc ? _mm512_maskz_loadu_ps(column_mask, src + (c0 + i) * channel_stride + w0) : _mm512_setzero_ps();
      }
      transpose_16x16(r);
      for (int i = 0; i < nw; ++i) {
        _mm512_mask_storeu_ps(dst + (w0 + i) * pixel_stride + c0, channel_mask, r[i]);
      }
    }
  }
}

void gather_lanes_avx512(const float* in, const int32_t* index, int64_t count, float* out) {
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 lanes = Avx512::first_lanes(std::min<int64_t>(16, count - j));
    const __m512i at = _mm512_maskz_loadu_epi32(lanes, index + j);
    _mm512_mask_storeu_ps(out + j, lanes, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, at, in, 4));
  }
}

namespace {

// plane_means_by_lanes's 8 double lanes in one zmm, two floats converted per instruction.
struct Avx512DoubleLanes {
  using type = __m512d;
  static type zero() { return _mm512_setzero_pd(); }
  static type add(type acc, const float* values) { return _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_loadu_ps(values))); }
  static void store(double* lanes, type acc) { _mm512_store_pd(lanes, acc); }
};

}  // namespace

// 1.9x the baseline build's speed on 384-channel 12x12 maps.
void plane_means_avx512(const float* in, int64_t planes, int64_t pixels, float* out) {
  plane_means_by_lanes<Avx512DoubleLanes>(in, planes, pixels, out);
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
