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
  // MAXPS returns its second operand when either is NaN: max(0, NaN) = NaN, as torch.relu.
  static reg relu(reg v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
};

}  // namespace

void microkernel_avx512_12x32(int64_t K, const float* a, const float* b, const float* bias, float* c, int64_t ldc,
                              int64_t rows) {
  register_blocked_microkernel_rows<Avx512, 12, 2>(K, a, b, bias, c, ldc, rows);
}

void shifted_microkernel_avx512_12x32(int64_t K, int64_t shifts, const int64_t* offsets, const float* a,
                                      const float* b, int64_t ldb, const float* bias, float* c, int64_t ldc,
                                      int64_t rows) {
  register_blocked_shifted_microkernel<Avx512, 12, 2>(K, shifts, offsets, a, b, ldb, bias, c, ldc, rows);
}

void winograd_transform_avx512_32(const float* M, int rows, int inner, const float* in, int64_t in_stride,
                                  float* out, int64_t out_stride) {
  winograd_transform_lanes<Avx512, 32>(M, rows, inner, in, in_stride, out, out_stride);
}

}  // namespace cpu
}  // namespace nin_ext

#endif  // NIN_EXT_X86_64
