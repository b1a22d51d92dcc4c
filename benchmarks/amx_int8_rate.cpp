// Whether int8 AMX tiles (TDPBUSD) run a float32 1x1 layer faster than the three-part bfloat16
// split of amx_bf16x6_rate.cpp, at float32 accuracy: the pixels (ReLU outputs, >= 0) scaled per
// pixel and cut into three unsigned slices (8 + 7 + 7 bits, floor), the weights scaled per row and cut
// into three signed ones (round to nearest), the six slice products down to 2^-14 of the leading one
// accumulated in int32 by their weight (C0 = u1 v1, C7 = u1 v2 + u2 v1, C14 = u1 v3 + u2 v2 + u3 v1).
// One thread: TDPBUSD's register-only rate, then layers (M x K weights on N pixels, one 16 x 16
// output tile at a time, five operand tiles, one load per product) in float32-equivalent GFLOP/s
// with the error against float64 relative to the largest output. NOTES.md v40 reads it. The slices sit
// on cache lines (v41: from std::vector's 16-byte alignment every tile row spans two lines, and the
// layers ran at about half these rates).
//
//     g++ -O2 -mamx-tile -mamx-int8 -mavx512f benchmarks/amx_int8_rate.cpp -o /tmp/amx_int8 && /tmp/amx_int8
// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized (a false positive, as in the kernels).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../csrc/cpu/aligned_vector_cpu.h"

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

static double since(std::chrono::steady_clock::time_point s) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count();
}

static void tile_rates() {
  static int8_t a[8][1024] __attribute__((aligned(64)));
  for (auto& t : a) std::fill(t, t + 1024, int8_t{1});
  const long n = 20000000;
  auto s = std::chrono::steady_clock::now();
  _tile_loadd(4, a[0], 64); _tile_loadd(5, a[1], 64); _tile_loadd(6, a[2], 64); _tile_loadd(7, a[3], 64);
  for (long i = 0; i < n; ++i) {
    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
  }
  std::printf("TDPBUSD from registers: %.0f GOP/s\n", 4.0 * n * 2 * 16 * 16 * 64 / since(s) / 1e9);
}

// y (N x M, pixel-major) = relu-free x (N x K, >= 0) . w^T (M x K)
static void layer(int M, int K, int N) {
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  std::vector<float> w(M * K), x(N * K), y(N * M);
  for (float& v : w) v = normal(gen) * 0.06f;
  for (float& v : x) v = std::max(0.f, normal(gen));
  const int chunks = K / 64;
  // pixels: [pb][chunk][slice][16][64] u8 ; weights: [cb][chunk][slice][16 quads][16][4] s8
  nin_ext::cpu::AlignedVector<uint8_t> a(size_t(N) * K * 3);
  nin_ext::cpu::AlignedVector<int8_t> b(size_t(M) * K * 3);
  std::vector<float> sx(N), sw(M);
  for (int n = 0; n < N; ++n) {
    float mx = 0;
    for (int k = 0; k < K; ++k) mx = std::max(mx, x[n * K + k]);
    const float scale = mx > 0 ? 255.99f / mx : 0.f;  // x * scale in [0, 256)
    sx[n] = mx > 0 ? 1.f / scale : 0.f;
    for (int k = 0; k < K; ++k) {
      float r = x[n * K + k] * scale;
      for (int s = 0; s < 3; ++s) {
        const float f = std::floor(r);
        a[(((size_t(n / 16) * chunks + k / 64) * 3 + s) * 16 + n % 16) * 64 + k % 64] = uint8_t(f);
        r = (r - f) * 128.f;
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    float mx = 0;
    for (int k = 0; k < K; ++k) mx = std::max(mx, std::fabs(w[m * K + k]));
    const float scale = 127.f / mx;
    sw[m] = 1.f / scale;
    for (int k = 0; k < K; ++k) {
      float r = w[m * K + k] * scale;
      for (int s = 0; s < 3; ++s) {
        float f = std::nearbyint(r);
        f = std::min(127.f, std::max(-127.f, f));
        b[((((size_t(m / 16) * chunks + k / 64) * 3 + s) * 16 + (k % 64) / 4) * 16 + m % 16) * 4 + k % 4] = int8_t(f);
        r = (r - f) * 128.f;
      }
    }
  }
  alignas(64) int32_t c[3][256];
  auto run = [&] {
    for (int pb = 0; pb < N / 16; ++pb)
      for (int cb = 0; cb < M / 16; ++cb) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2);
        const uint8_t* A = &a[size_t(pb) * chunks * 3 * 1024];
        const int8_t* B = &b[size_t(cb) * chunks * 3 * 1024];
        for (int ch = 0; ch < chunks; ++ch) {
          const uint8_t* Ac = A + ch * 3072;
          const int8_t* Bc = B + ch * 3072;
          _tile_loadd(3, Ac, 64); _tile_loadd(4, Bc, 64);
          _tile_dpbusd(0, 3, 4);
          _tile_loadd(5, Bc + 1024, 64);
          _tile_dpbusd(1, 3, 5);
          _tile_loadd(6, Ac + 1024, 64);
          _tile_dpbusd(1, 6, 4);
          _tile_dpbusd(2, 6, 5);
          _tile_loadd(7, Bc + 2048, 64);
          _tile_dpbusd(2, 3, 7);
          _tile_loadd(3, Ac + 2048, 64);
          _tile_dpbusd(2, 3, 4);
        }
        _tile_stored(0, c[0], 64); _tile_stored(1, c[1], 64); _tile_stored(2, c[2], 64);
        const __m512 s7 = _mm512_set1_ps(1.f / 128);
        const __m512 wsc = _mm512_loadu_ps(&sw[cb * 16]);
        for (int r = 0; r < 16; ++r) {
          __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(c[2] + r * 16));
          v = _mm512_fmadd_ps(v, s7, _mm512_cvtepi32_ps(_mm512_load_si512(c[1] + r * 16)));
          v = _mm512_fmadd_ps(v, s7, _mm512_cvtepi32_ps(_mm512_load_si512(c[0] + r * 16)));
          v = _mm512_mul_ps(_mm512_mul_ps(v, wsc), _mm512_set1_ps(sx[pb * 16 + r]));
          _mm512_storeu_ps(&y[size_t(pb * 16 + r) * M + cb * 16], v);
        }
      }
  };
  run();
  double err = 0, err32 = 0, big = 0;
  for (int n = 0; n < N; ++n)
    for (int m = 0; m < M; ++m) {
      double e = 0;
      float f = 0;
      for (int k = 0; k < K; ++k) { e += double(w[m * K + k]) * x[n * K + k]; f += w[m * K + k] * x[n * K + k]; }
      err = std::max(err, std::fabs(e - y[n * M + m]));
      err32 = std::max(err32, std::fabs(e - f));
      big = std::max(big, std::fabs(e));
    }
  const int reps = std::max(10, int(2e9 / (2.0 * M * N * K)));
  auto s = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) run();
  const double t = since(s) / reps;
  std::printf("layer %dx%d on %d px: %.0f GFLOP/s fp32-eq; rel err %.2e (fp32 loop %.2e)\n", M, K, N,
              2.0 * M * N * K / t / 1e9, err / big, err32 / big);
}

int main() {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) { std::printf("no AMX\n"); return 1; }
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) { cfg.bytes_per_row[t] = 64; cfg.rows[t] = 16; }
  _tile_loadconfig(&cfg);
  tile_rates();
  for (int N : {64, 256, 512}) layer(256, 256, N);
  layer(384, 384, 288);
  layer(96, 128, 512);
  _tile_release();
}
