// The AVX-512 float micro-kernel's own rate on one thread: 12 x 32 blocks from cached panels (K = 96,
// Winograd block 2's products; K = 256, its 1x1 layers), one weight panel or 22 in turn, against
// fma_peak.cpp's register-only peak. NOTES.md v15 reads it: what the kernel loses is not what
// separates blocks 2 and 3 from the peak.
//
//     g++ -O3 -std=c++20 -Icsrc $(python -c "import torch.utils.cpp_extension as c; \
//         print(' '.join('-I' + p for p in c.include_paths()))") \
//         benchmarks/microkernel_rate.cpp -o /tmp/microkernel_rate && /tmp/microkernel_rate
#include "cpu/microkernel_avx512.cpp"

#include <chrono>
#include <cstdio>
#include <vector>

int main() {
  using nin_ext::cpu::microkernel_avx512_12x32;
  for (int K : {96, 256}) {
    for (int panels : {1, 22}) {
      std::vector<float> a(panels * 12 * K, 0.01f), b(K * 32, 0.5f), c(panels * 12 * 32), bias(panels * 12, 0.f);
      const long iters = 2000000000L / (2L * 12 * 32 * K);
      const auto start = std::chrono::steady_clock::now();
      for (long it = 0; it < iters; ++it) {
        const int p = static_cast<int>(it % panels);
        microkernel_avx512_12x32(K, a.data() + p * 12 * K, b.data(), 32, K == 256 ? bias.data() + 12 * p : nullptr,
                                 c.data() + p * 12 * 32, 32, 12);
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("K=%d, %d weight panel(s): %.1f GFLOP/s\n", K, panels, iters * 2.0 * 12 * 32 * K / s / 1e9);
    }
  }
}
