// nin_ext::max_pool2d's and max_pool2d_with_argmax's NCHW plane kernels for AVX2: the vector
// primitives of max_pool2d_plane.h's kernels, 8 values per instruction, with stride-2 windows (the
// NiN pools) read as two vectors whose even lanes two permutes and a blend gather. Compiled for AVX2
// by the pragma and called only when the float micro-kernel is the AVX2 one (microkernel_select.cpp).
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

// The pool kernels' primitives, 8 lanes (max_pool2d_plane.h: max_pool2d_3x3_stride2_plane and
// VectorPoolSteps): the even and odd lanes of two registers gathered by a permute of each and a blend,
// lane masks as vectors (sign bits).
struct Avx2PoolVector {
  using reg = __m256;
  using index = __m256i;
  using mask = __m256;
  static constexpr int64_t lanes = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_first(const float* p, int64_t n) { return _mm256_maskload_ps(p, lanes_below(n)); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static void store_first(float* p, int64_t n, reg v) { _mm256_maskstore_ps(p, lanes_below(n), v); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg nan_max(reg m, reg v) { return nan_max8(m, v); }
  static reg even(reg lo, reg hi) { return permuted_halves(lo, hi, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)); }
  static reg odd(reg lo, reg hi) { return permuted_halves(lo, hi, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7)); }
  // Columns 2, 4, ..., 16: lo's 2, 4, 6, hi's 0, 2, 4, 6, next's 0.
  static reg even_next(reg lo, reg hi, reg next) {
    const __m256i shifted = _mm256_setr_epi32(2, 4, 6, 0, 2, 4, 6, 0);
    const __m256 from_lo_hi =
        _mm256_blend_ps(_mm256_permutevar8x32_ps(lo, shifted), _mm256_permutevar8x32_ps(hi, shifted), 0x78);
    return _mm256_blend_ps(from_lo_hi, _mm256_permutevar8x32_ps(next, shifted), 0x80);
  }
  static reg even_lanes(const float* p, int64_t left) { return even(load_first(p, left), load_first(p + 8, left - 8)); }

  static index even_indices(int32_t start) {
    return _mm256_add_epi32(_mm256_set1_epi32(start), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
  }
  static mask greater_or_nan(reg v, reg best) {
    return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static reg select(mask take, reg v, reg best) { return _mm256_blendv_ps(best, v, take); }
  static index select_index(mask take, index i, index best) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best), _mm256_castsi256_ps(i), take));
  }
  static void store_index_first(int32_t* p, int64_t n, index v) { _mm256_maskstore_epi32(p, lanes_below(n), v); }
};

// The other strides: the plain steps, compiled for AVX2 here.
struct Avx2Isa;
using Avx2PoolSteps = VectorPoolSteps<Avx2PoolVector, CompilerVectorisedPoolSteps<Avx2Isa>>;

}  // namespace

void max_pool2d_plane_avx2(const float* in, float* out, const MaxPool2dGeometry& g, float* row) {
  if (is_inner_3x3_stride2(g)) {
    max_pool2d_3x3_stride2_plane<Avx2PoolVector>(in, out, g);
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
