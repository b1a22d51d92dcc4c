// The CPU's fp32 FMA peak: 10 independent register-only FMA chains per thread, AVX-512 and AVX2,
// on one thread and on two (the floors in NOTES.md are FLOPs over this peak). AVX-512 runs only where
// the CPU has it (an AVX2-only CPU would stop on its first instruction).
//
//     g++ -O2 -mavx512f -mfma -std=c++17 -pthread benchmarks/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>
#define BODY(V, FMA) \
  V a0 = set(0), a1 = set(1), a2 = set(2), a3 = set(3), a4 = set(4), a5 = set(5), a6 = set(6), a7 = set(7), a8 = set(8), a9 = set(9); \
  const V b = set(1.0000001f), c = set(1e-7f); \
  for (long it = 0; it < iters; ++it) { a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c); a4 = FMA(a4, b, c); \
    a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c); a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); } \
  V s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9;
__attribute__((target("avx512f"))) float run512(long iters) {
  auto set = [](float v) { return _mm512_set1_ps(v); };
  BODY(__m512, _mm512_fmadd_ps) return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx2,fma"))) float run256(long iters) {
  auto set = [](float v) { return _mm256_set1_ps(v); };
  BODY(__m256, _mm256_fmadd_ps) float o[8]; _mm256_storeu_ps(o, s); return o[0];
}
int main() {
  const long iters = 3000000000L;
  for (int width : {512, 256}) for (int threads : {1, 2}) {
    if (width == 512 && !__builtin_cpu_supports("avx512f")) continue;
    std::vector<std::thread> ts; volatile float sink = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) ts.emplace_back([&] { sink = width == 512 ? run512(iters) : run256(iters); });
    for (auto& t : ts) t.join();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%d-bit FMA, %d thread(s): %.1f GFLOP/s (%.2f s)\n", width, threads, double(iters) * 10 * (width / 32) * 2 * threads / sec / 1e9, sec);
  }
}
