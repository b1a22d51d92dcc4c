// Whether AMX tiles (Sapphire Rapids and later) could run the CPU backend's float layers faster than
// the AVX-512 FMA peak, at float32 accuracy: each float split into three bfloat16 parts (x = x0 + x1
// + x2, round to nearest each) and w x summed as the six part products down to 2^-16 of it
// ("bf16x6"; the products are exact in float32, which the tiles accumulate in). On one thread it
// prints TDPBF16PS's register-only rate, the rate with a tile load per product from L1, and a
// 1x1 layer's (M x K weights on N pixels, 2 x 2 tiles of 16 x 16 outputs, the weights' 32-row
// panels outer) rate in float32-equivalent GFLOP/s with its error against float64. NOTES.md v33
// reads it. The Winograd-shaped layers (v35) cycle through 64 copies of the weights, as a tile's
// products read each transform point's weights once, from L3. The parts sit on cache lines (v41:
// v33's and v35's rates were taken from 16-byte aligned vectors, every tile row across two lines).
//
//     g++ -O2 -mamx-tile -mamx-bf16 benchmarks/amx_bf16x6_rate.cpp -o /tmp/amx_rate && /tmp/amx_rate
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

namespace {

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

uint16_t bf16(float x) {  // round to nearest even (finite x)
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float widen(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void split(float x, uint16_t p[3]) {
  p[0] = bf16(x);
  const float r1 = x - widen(p[0]);
  p[1] = bf16(r1);
  p[2] = bf16(r1 - widen(p[1]));
}

constexpr double kTileFlop = 2.0 * 16 * 16 * 32;

void tile_rates() {
  static uint16_t a[8][512] __attribute__((aligned(64)));
  for (auto& tile : a) std::fill(tile, tile + 512, uint16_t{0x3f80});
  const long n = 20000000;
  auto start = std::chrono::steady_clock::now();
  _tile_loadd(4, a[0], 64); _tile_loadd(5, a[1], 64); _tile_loadd(6, a[2], 64); _tile_loadd(7, a[3], 64);
  for (long i = 0; i < n; ++i) {
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  std::printf("TDPBF16PS from registers: %.0f GFLOP/s bf16\n", 4.0 * n * kTileFlop / seconds_since(start) / 1e9);
  start = std::chrono::steady_clock::now();
  for (long i = 0; i < n / 4; ++i) {
    const int s = static_cast<int>(i % 2) * 4;
    _tile_loadd(4, a[s], 64); _tile_loadd(5, a[s + 1], 64); _tile_loadd(6, a[s + 2], 64); _tile_loadd(7, a[s + 3], 64);
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  std::printf("one tile load (L1) per product: %.0f GFLOP/s bf16\n", n * kTileFlop / seconds_since(start) / 1e9);
}

// out (M x N, row-major) = w (M x K) x (K x N), M and N multiples of 32, K of 32; each call takes the
// next of `copies` copies of w.
void layer_rate(int M, int K, int N, int copies = 1) {
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  std::vector<float> w(M * K), x(K * N), out(M * N);
  for (float& v : w) v = normal(gen) * 0.06f;
  for (float& v : x) v = std::fabs(normal(gen));
  const int steps = K / 32;
  // Weights: [16-row half][step][part][16][32]; pixels: [16-pixel half][step][part][16 pairs][16][2].
  nin_ext::cpu::AlignedVector<uint16_t> a(size_t(M) * K * 3 * copies), b(size_t(K) * N * 3);
  int copy = 0;
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) {
      uint16_t p[3];
      split(w[m * K + k], p);
      for (int c = 0; c < copies; ++c)
        for (int s = 0; s < 3; ++s)
          a[size_t(c) * M * K * 3 + (((size_t(m / 16) * steps + k / 32) * 3 + s) * 16 + m % 16) * 32 + k % 32] = p[s];
    }
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) {
      uint16_t p[3];
      split(x[k * N + n], p);
      for (int s = 0; s < 3; ++s)
        b[((((size_t(n / 16) * steps + k / 32) * 3 + s) * 16 + (k % 32) / 2) * 16 + n % 16) * 2 + k % 2] = p[s];
    }
  auto layer = [&] {
    for (int mh = 0; mh < M / 16; mh += 2)
      for (int nh = 0; nh < N / 16; nh += 2) {
        const uint16_t* a0 = &a[size_t(copy) * M * K * 3 + size_t(mh) * steps * 1536];
        const uint16_t* a1 = a0 + steps * 1536;
        const uint16_t* b0 = &b[size_t(nh) * steps * 1536];
        const uint16_t* b1 = b0 + steps * 1536;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int step = 0; step < steps; ++step) {
          const size_t o = size_t(step) * 1536;
          auto load_a = [&](int part) { _tile_loadd(4, a0 + o + part * 512, 64); _tile_loadd(5, a1 + o + part * 512, 64); };
          auto load_b = [&](int part) { _tile_loadd(6, b0 + o + part * 512, 64); _tile_loadd(7, b1 + o + part * 512, 64); };
          auto products = [] {
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          };
          // one operand part changes at a time: 14 tile loads a step (smallest first took 16)
          load_a(0); load_b(2); products();  // w0 x2
          load_b(1); products();             // w0 x1
          load_a(1); products();             // w1 x1
          load_b(0); products();             // w1 x0
          load_a(2); products();             // w2 x0
          load_a(0); products();             // w0 x0
        }
        float* c = &out[size_t(mh) * 16 * N + nh * 16];
        _tile_stored(0, c, N * 4); _tile_stored(1, c + 16, N * 4);
        _tile_stored(2, c + 16 * N, N * 4); _tile_stored(3, c + 16 * N + 16, N * 4);
      }
    copy = (copy + 1) % copies;
  };
  layer();
  double error = 0, error_fp32 = 0, largest = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double exact = 0;
      float fp32 = 0;
      for (int k = 0; k < K; ++k) {
        exact += double(w[m * K + k]) * x[k * N + n];
        fp32 += w[m * K + k] * x[k * N + n];
      }
      error = std::max(error, std::fabs(exact - out[m * N + n]));
      error_fp32 = std::max(error_fp32, std::fabs(exact - fp32));
      largest = std::max(largest, std::fabs(exact));
    }
  const int reps = std::max(10, static_cast<int>(2e9 / (2.0 * M * N * K)));
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) layer();
  const double s = seconds_since(start) / reps;
  std::printf("layer %dx%d on %d pixels, %d weight cop%s: %.1f GFLOP/s float32-equivalent; max error %.2e of %.2f (a float32 loop: %.2e)\n",
              M, K, N, copies, copies == 1 ? "y" : "ies", 2.0 * M * N * K / s / 1e9, error, largest, error_fp32);
}

}  // namespace

int main() {
  constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) {
    std::printf("no AMX tile state from the OS\n");
    return 1;
  }
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
  tile_rates();
  for (int N : {64, 256, 512}) layer_rate(256, 256, N);
  layer_rate(96, 96, 512);
  // The Winograd products of the seed's blocks 2 (96 -> 256) and 3 (256 -> 384): one pixel panel per
  // point (a tile of 32 blocks) or two.
  for (int copies : {1, 64})
    for (int N : {32, 64}) {
      layer_rate(256, 96, N, copies);
      layer_rate(384, 256, N, copies);
    }
  _tile_release();
}
