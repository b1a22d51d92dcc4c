// The choice of conv2d_weight_grad_cpu.cpp: whether the weight gradient of a float32 stride-1 conv
// runs by Winograd tiles, and their output-block size m; nin_ext._C asks it for the tests.
#pragma once

#include <cstdint>

#include "cpu/winograd_cpu.h"

namespace nin_ext {
namespace cpu {

// The least work (direct convolution's FLOPs) that the tiles take on: below it their buffers'
// set-up costs more than they save.
constexpr double kWeightGradWinogradMinFlops = 5e7;

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
  const double direct_flops = 2.0 * N * OH * OW * CI * CO * KH * KW;
  return winograd_mode().load() != 0 && CI >= 16 && CO >= 16 && direct_flops >= kWeightGradWinogradMinFlops ? m : 0;
}

}  // namespace cpu
}  // namespace nin_ext
