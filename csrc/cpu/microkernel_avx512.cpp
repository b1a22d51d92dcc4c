// The float micro-kernel for AVX-512: 12 rows x 32 pixels, 24 zmm accumulators. Compiled for
// AVX-512 by the pragma (the rest of the build stays portable) and called only when the CPU
// reports avx512f (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#pragma GCC target("avx512f")
// GCC 12's _mm512_max_ps passes _mm512_undefined_ps() as its unused merge source, which
// -Wmaybe-uninitialized reports as a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "cpu/copy_runs.h"
#include "cpu/microkernel_register_blocked.h"
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

}  // namespace

void microkernel_avx512_12x32(int64_t K, const float* a, const float* b, int64_t ldb, const float* bias, float* c,
                              int64_t ldc, int64_t rows) {
  register_blocked_microkernel_rows<Avx512, 12, 2>(K, a, b, ldb, bias, c, ldc, rows);
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

void gather_lanes_avx512(const float* in, const int32_t* index, int64_t count, float* out) {
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 lanes = Avx512::first_lanes(std::min<int64_t>(16, count - j));
    const __m512i at = _mm512_maskz_loadu_epi32(lanes, index + j);
    _mm512_mask_storeu_ps(out + j, lanes, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, at, in, 4));
  }
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
