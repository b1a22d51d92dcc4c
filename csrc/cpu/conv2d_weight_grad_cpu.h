// The choice of conv2d_weight_grad_cpu.cpp: whether the weight gradient of a float32 stride-1 conv
// runs by Winograd tiles, and their output-block size m; nin_ext._C asks it for the tests.
#pragma once

#include <cstdint>

#include "cpu/winograd_cpu.h"

namespace nin_ext {
namespace cpu {

// The least work (direct convolution's FLOPs) and the fewest output blocks that the tiles take on.
// A call's fixed costs grow with the channels (dU's zeroing and sums, G^T dU G) and with its buffers
// (17.8 MB for the seed's block 2), which a call faults in afresh when other ops run between calls,
// as in a training step; its savings grow with the blocks. On a 2-vCPU Intel Xeon, calls alternating
// with ATen's (benchmarks/NOTES.md v35): the seed's block 2 ran at 0.65x ATen's speed at 98 blocks,
// 0.76-0.84x at 196 and 1.57-1.65x at 392; block 3 0.84-0.86x at 144, 0.95-0.98x at 288 and
// 1.11-1.13x at 576. (On a Zen 4 machine, v30, block 2 had gained 1.70x at 196.)
constexpr double kWeightGradWinogradMinFlops = 5e7;
constexpr int64_t kWeightGradWinogradMinBlocks = 384;

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
