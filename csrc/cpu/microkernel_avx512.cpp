// The float micro-kernel for AVX-512: 12 rows x 32 pixels, 24 zmm accumulators.
// Compiled for AVX-512 through the target attribute (the rest of the build stays portable) and
// called only when the CPU reports avx512f (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#include <immintrin.h>

namespace nin_ext {
namespace cpu {

__attribute__((target("avx512f"))) void microkernel_avx512_12x32(int64_t K, const float* a, const float* b,
                                                                const float* bias, float* c, int64_t ldc,
                                                                int64_t rows) {
  constexpr int MR = 12;
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm512_setzero_ps();
    acc[r][1] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b + k * 32);
    const __m512 b1 = _mm512_loadu_ps(b + k * 32 + 16);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512 a_r = _mm512_set1_ps(a[k * MR + r]);
      acc[r][0] = _mm512_fmadd_ps(a_r, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a_r, b1, acc[r][1]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    if (r < rows) {
      const __m512 shift = _mm512_set1_ps(bias[r]);
      // max(0, v) returns v when v is NaN (MAXPS returns its second operand then).
      _mm512_storeu_ps(c + r * ldc, _mm512_max_ps(zero, _mm512_add_ps(acc[r][0], shift)));
      _mm512_storeu_ps(c + r * ldc + 16, _mm512_max_ps(zero, _mm512_add_ps(acc[r][1], shift)));
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
