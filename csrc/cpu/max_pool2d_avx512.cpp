// nin_ext::max_pool2d's and max_pool2d_with_argmax's NCHW plane kernels for AVX-512: the vector
// primitives of max_pool2d_plane.h's kernels, 16 values per instruction, with stride-2 windows (the
// NiN pools) read as two vectors whose even lanes one permute gathers. Compiled for AVX-512 by the
// pragma and called only when the float micro-kernel is the AVX-512 one (microkernel_select.cpp).
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

// The pool kernels' primitives, 16 lanes (max_pool2d_plane.h: max_pool2d_3x3_stride2_plane and
// VectorPoolSteps).
struct Avx512PoolVector {
  using reg = __m512;
  using index = __m512i;
  using mask = __mmask16;
  static constexpr int64_t lanes = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_first(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static void store_first(float* p, int64_t n, reg v) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg nan_max(reg m, reg v) { return nan_max16(m, v); }
  // Lanes 0, 2, ..., 30 of the 32 lanes of (lo, hi); odd: 1, 3, ..., 31.
  static reg even(reg lo, reg hi) {
    return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), hi);
  }
  static reg odd(reg lo, reg hi) {
    return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), hi);
  }
  // Columns 2, 4, ..., 32: the even lanes of (lo, hi) and (hi, next) shifted by two.
  static reg even_next(reg lo, reg hi, reg next) { return even(shift_by_two(lo, hi), shift_by_two(hi, next)); }
  static reg even_lanes(const float* p, int64_t left) {
    return even(load_first(p, left), load_first(p + 16, left > 16 ? left - 16 : 0));
  }

  static index even_indices(int32_t start) {
    return _mm512_add_epi32(_mm512_set1_epi32(start),
                            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
  }
  static mask greater_or_nan(reg v, reg best) {
    return _kor_mask16(_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
  }
  static reg select(mask take, reg v, reg best) { return _mm512_mask_mov_ps(best, take, v); }
  static index select_index(mask take, index i, index best) { return _mm512_mask_mov_epi32(best, take, i); }
  static void store_index_first(int32_t* p, int64_t n, index v) { _mm512_mask_storeu_epi32(p, tail_mask(n), v); }

 private:
  // Lanes 2..15 of lo, then lanes 0 and 1 of hi.
  static reg shift_by_two(reg lo, reg hi) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 2));
  }
};

// The other strides: the plain steps, compiled for AVX-512 here.
struct Avx512Isa;
using Avx512PoolSteps = VectorPoolSteps<Avx512PoolVector, CompilerVectorisedPoolSteps<Avx512Isa>>;

}  // namespace

void max_pool2d_plane_avx512(const float* in, float* out, const MaxPool2dGeometry& g, float* row) {
  if (is_inner_3x3_stride2(g)) {
    max_pool2d_3x3_stride2_plane<Avx512PoolVector>(in, out, g);
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
