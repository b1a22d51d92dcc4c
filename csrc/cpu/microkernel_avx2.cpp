// The float micro-kernel for AVX2 + FMA: 6 rows x 16 pixels, 12 ymm accumulators.
// Compiled for AVX2 through the target attribute (the rest of the build stays portable) and called
// only when the CPU reports avx2 and fma (microkernel_select.cpp).
#include "cpu/microkernel.h"

#if NIN_EXT_X86_64
#include <immintrin.h>

namespace nin_ext {
namespace cpu {

__attribute__((target("avx2,fma"))) void microkernel_avx2_6x16(int64_t K, const float* a, const float* b,
                                                              const float* bias, float* c, int64_t ldc,
                                                              int64_t rows) {
  constexpr int MR = 6;
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm256_setzero_ps();
    acc[r][1] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * 16);
    const __m256 b1 = _mm256_loadu_ps(b + k * 16 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 a_r = _mm256_broadcast_ss(a + k * MR + r);
      acc[r][0] = _mm256_fmadd_ps(a_r, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a_r, b1, acc[r][1]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    if (r < rows) {
      const __m256 shift = _mm256_broadcast_ss(bias + r);
      // max(0, v) returns v when v is NaN (MAXPS returns its second operand then).
      _mm256_storeu_ps(c + r * ldc, _mm256_max_ps(zero, _mm256_add_ps(acc[r][0], shift)));
      _mm256_storeu_ps(c + r * ldc + 8, _mm256_max_ps(zero, _mm256_add_ps(acc[r][1], shift)));
    }
  }
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
