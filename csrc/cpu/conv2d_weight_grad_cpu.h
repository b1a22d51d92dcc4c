// The choice of conv2d_weight_grad_cpu.cpp: whether the weight gradient of a float32 stride-1 conv
// runs by Winograd tiles, and their output-block size m; nin_ext._C asks it for the tests.
#pragma once

#include <cstdint>

#include "cpu/winograd_cpu.h"

namespace nin_ext {
namespace cpu {

// The least work (direct convolution's FLOPs) and the fewest output blocks that the tiles take on.
// A call's fixed costs (dU's zeroing and sums, G^T dU G) grow with the channels, its savings with the
// blocks: at batch 1 the seed's block 2 (49 blocks) ran at 0.89x ATen's speed and block 3 (36) at
// 0.62x; at batch 4 (196 and 144 blocks) 1.70x and 1.05x (benchmarks/NOTES.md v30).
constexpr double kWeightGradWinogradMinFlops = 5e7;
constexpr int64_t kWeightGradWinogradMinBlocks = 128;

// The output-block size m of the Winograd tiles for the weight gradient of a float32 stride-1 conv
// (x: N x CI, grad_out: N x CO x OH x OW, a KH x KW kernel), 0 where ATen runs it. The error, as
// max|err| / max|dW| against float64 (benchmarks/NOTES.md v30): F(2x2, 3x3) at ATen's own (2-4e-7);
// F(4x4, 5x5) 4.5-9e-6, within the float32 gradients' tolerance (1e-5 of the scale; every m of a
// 5x5 gave about the same in a simulation, so the one with the fewest multiplications); F(2x2, 7x7)
// reached 1.2-1.9e-5, so 7x7 kernels stay with ATen. Fewer than 16 channels on either side leave the
// products too short for the transforms to pay.
inline int conv2d_weight_grad_tile_size(int64_t N, int64_t CI, int64_t CO, int64_t OH, int64_t OW, int64_t KH,
                                        int64_t KW) {
  const int m = KH != KW ? 0 : KH == 3 ? 2 : KH == 5 ? 4 : 0;
  if (m == 0 || winograd_mode().load() == 0 || CI < 16 || CO < 16) {
    return 0;
  }
  const double direct_flops = 2.0 * N * OH * OW * CI * CO * KH * KW;
  const int64_t blocks = N * ((OH + m - 1) / m) * ((OW + m - 1) / m);
  return direct_flops >= kWeightGradWinogradMinFlops && blocks >= kWeightGradWinogradMinBlocks ? m : 0;
}

}  // namespace cpu
}  // namespace nin_ext
