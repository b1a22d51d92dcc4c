// The float micro-kernel for AVX2 + FMA: 6 rows x 16 pixels, 12 ymm accumulators. Compiled for
// AVX2 by the pragma (the rest of the build stays portable) and called only when the CPU reports
// avx2 and fma (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#pragma GCC target("avx2,fma")
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

struct Avx2 {
  using reg = __m256;
  static constexpr int lanes = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static reg fmadd(reg a, reg b, reg acc) { return _mm256_fmadd_ps(a, b, acc); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  // MAXPS returns its second operand when either is NaN: max(0, NaN) = NaN, as torch.relu.
  static reg relu(reg v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  // The lanes of `bits` from b, the others from a.
  using mask = __m256;
  static mask lane_mask(uint32_t bits) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit));
  }
  static reg blend(mask m, reg a, reg b) { return _mm256_blendv_ps(a, b, m); }
};

}  // namespace

void microkernel_avx2_6x16(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias, float* c,
                           int64_t ldc, int64_t rows) {
  register_blocked_microkernel_rows<Avx2, 6, 2>(K, a, b, ldb, bias, c, ldc, rows);
}

void swapped_product_avx2_6x16(int64_t K, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                               int64_t rows) {
  register_blocked_swapped_product<Avx2, 6, 2>(
      K, a, lda, b, c, ldc, rows, [](auto, const float* block, float* c_, int64_t ldc_, int64_t rows_) {
        store_transposed<16>(block, c_, ldc_, rows_);
      });
}

void shifted_microkernel_avx2_6x16(int64_t K, int64_t shifts, const int64_t* offsets, const float* a,
                                   const float* b, int64_t ldb, const int64_t* lanes,
                                   const float* bias, bool accumulate, float* c, int64_t ldc, int64_t rows) {
  register_blocked_shifted_microkernel<Avx2, 6, 2>(K, shifts, offsets, a, b, ldb, lanes, bias, accumulate, c, ldc,
                                                   rows);
}

void winograd_input_transform_avx2_16(int m, int r, const float* in, int64_t in_stride, float* out,
                                      int64_t out_stride) {
  winograd_transform_lanes<Avx2, 16, false>(m, r, in, in_stride, out, out_stride);
}

void winograd_output_transform_avx2_16(int m, int r, const float* in, int64_t in_stride, float* out,
                                       int64_t out_stride) {
  winograd_transform_lanes<Avx2, 16, true>(m, r, in, in_stride, out, out_stride);
}

void winograd_output_gradient_transform_avx2_16(int m, int r, const float* in, int64_t in_stride, float* out,
                                                int64_t out_stride) {
  winograd_output_gradient_lanes<Avx2, 16>(m, r, in, in_stride, out, out_stride);
}

namespace {

// winograd_gather_avx2 for one block size m: per band row and 8 blocks, the m registers that hold
// the 8 m values from column q m of the blocks' first on, and each output (column q m + j of the 8
// blocks, at lanes m l + j) permuted out of each register and blended by register.
template <int m>
void winograd_gather_blocks_of(const float* band, int64_t band_width, int alpha, int64_t bx, int64_t length, float* d,
                               int64_t nr) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i strided = _mm256_mullo_epi32(iota, _mm256_set1_epi32(m));
  const int64_t full = length / 8 * 8;
  for (int q = 0; q * m < alpha; ++q) {
    // The 8 blocks read 7 m + alpha values: the last register's lanes past them are not loaded (the
    // last band row's may lie past the band).
    const __m256i last_lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(7 * m + alpha - q * m - 8 * (m - 1)), iota);
    for (int64_t l0 = 0; l0 < full; l0 += 8) {
      for (int i = 0; i < alpha; ++i) {
        const float* src = band + i * band_width + m * (bx + l0) + q * m;
        __m256 r[m];
        for (int k = 0; k < m - 1; ++k) {
          r[k] = _mm256_loadu_ps(src + 8 * k);
        }
        r[m - 1] = _mm256_maskload_ps(src + 8 * (m - 1), last_lanes);
        for (int j = 0; j < m && q * m + j < alpha; ++j) {
          const __m256i position = _mm256_add_epi32(strided, _mm256_set1_epi32(j));  // VPERMPS reads its low 3 bits
          const __m256i reg = _mm256_srli_epi32(position, 3);
          __m256 v = _mm256_permutevar8x32_ps(r[0], position);
          for (int k = 1; k < m; ++k) {
            v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(r[k], position),
                                 _mm256_castsi256_ps(_mm256_cmpeq_epi32(reg, _mm256_set1_epi32(k))));
          }
          _mm256_storeu_ps(d + (i * alpha + q * m + j) * nr + l0, v);
        }
      }
    }
  }
  if (full < length) {
    winograd_gather_portable(band, band_width, m, alpha, bx + full, length - full, d + full, nr);
  }
}

}  // namespace

// winograd_gather_portable by 8 blocks at a time, with permutes (m permutes and m - 1 blends per 8
// values, where the portable pass takes a load and a store per value: 0.27 against 0.64 ns a value
// at m = 4 on the Zen 3, 0.20 against 0.43 at m = 3). Unmasked stores: AMD's masked stores are slow.
void winograd_gather_avx2(const float* band, int64_t band_width, int m, int alpha, int64_t bx, int64_t length,
                          float* d, int64_t nr) {
  switch (m) {
    case 2:
      return winograd_gather_blocks_of<2>(band, band_width, alpha, bx, length, d, nr);
    case 3:
      return winograd_gather_blocks_of<3>(band, band_width, alpha, bx, length, d, nr);
    case 4:
      return winograd_gather_blocks_of<4>(band, band_width, alpha, bx, length, d, nr);
    default:
      return winograd_gather_portable(band, band_width, m, alpha, bx, length, d, nr);
  }
}

// winograd_scatter_portable with permutes: 8 raster values per vector, each column's lanes
// permuted into place and blended where the value is that column's (the portable pass takes a load,
// a store and the column and lane bookkeeping per value).
void winograd_scatter_avx2(const float* y, int m, int64_t nr, float shift, const WinogradRowRun* runs,
                           int64_t run_count, float* out) {
  const RowInterleaveTable& table = kRowInterleaveTable;
  const __m256 bias = _mm256_set1_ps(shift);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for_each_row_vector<8>(y, m, runs, run_count, out, [&](const float* src, int phase, int64_t n, float* dst) {
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>((phase + n - 1) / m + 1)), iota);
    const __m256i lane = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.lane[m][phase]));
    const __m256i column = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.column[m][phase]));
    __m256 v = _mm256_permutevar8x32_ps(_mm256_maskload_ps(src, lanes), lane);
    for (int dx = 1; dx < m; ++dx) {
      const __m256 value = _mm256_permutevar8x32_ps(_mm256_maskload_ps(src + dx * nr, lanes), lane);
      v = _mm256_blendv_ps(v, value, _mm256_castsi256_ps(_mm256_cmpeq_epi32(column, _mm256_set1_epi32(dx))));
    }
    v = Avx2::relu(_mm256_add_ps(v, bias));
    if (n == 8) {
      _mm256_storeu_ps(dst, v);
    } else {
      alignas(32) float values[8];
      _mm256_store_ps(values, v);
      std::copy(values, values + n, dst);
    }
  });
}

void copy_runs_avx2(const float* in, const CopyRun* runs, int64_t run_count, float* out) {
  copy_runs_vectors<Avx2>(in, runs, run_count, out);
}

void broadcast_pixels_avx2_6x16(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                const float* bias, bool accumulate, float* c, int64_t ldc) {
  broadcast_pixels_microkernel<Avx2, 6, 2>(tap_count, taps, channels, x, pixels, rows, w, tap_stride, bias,
                                           accumulate, c, ldc);
}

void broadcast_pixels_avx2_6x8(int64_t tap_count, const int64_t* taps, int64_t channels, const float* x,
                                const int64_t* pixels, int64_t rows, const float* w, int64_t tap_stride,
                                const float* bias, bool accumulate, float* c, int64_t ldc) {
  broadcast_pixels_microkernel<Avx2, 6, 1>(tap_count, taps, channels, x, pixels, rows, w, tap_stride, bias,
                                            accumulate, c, ldc);
}

namespace {

// plane_means_by_lanes's 8 double lanes in two ymm, lanes 0-3 and 4-7.
struct Avx2DoubleLanes {
  struct type {
    __m256d low, high;
  };
  static type zero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  static type add(type acc, const float* values) {
    return {_mm256_add_pd(acc.low, _mm256_cvtps_pd(_mm_loadu_ps(values))),
            _mm256_add_pd(acc.high, _mm256_cvtps_pd(_mm_loadu_ps(values + 4)))};
  }
  static void store(double* lanes, type acc) {
    _mm256_store_pd(lanes, acc.low);
    _mm256_store_pd(lanes + 4, acc.high);
  }
};

}  // namespace

void plane_means_avx2(const float* in, int64_t planes, int64_t pixels, float* out) {
  plane_means_by_lanes<Avx2DoubleLanes>(in, planes, pixels, out);
}

void gather_lanes_avx2(const float* in, const int32_t* index, int64_t count, float* out) {
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    const __m256i at = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + j));
    _mm256_storeu_ps(out + j, _mm256_i32gather_ps(in, at, 4));
  }
  gather_lanes_portable(in, index + j, count - j, out + j);
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
