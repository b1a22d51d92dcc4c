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
// (x: N x CI, grad_out: N x CO x OH x OW, a KH x KW kernel), 0 where ATen runs it. F(2x2, 3x3) keeps
// the error below ATen's own (4.4e-7 against 1.2e-6 of the scale on the seed's block 3); for 5x5
// kernels every m gave about 8e-6, so the one with the fewest multiplications; 7x7 has only F(2x2).
// Fewer than 16 channels on either side leave the products too short for the transforms to pay.
inline int conv2d_weight_grad_tile_size(int64_t N, int64_t CI, int64_t CO, int64_t OH, int64_t OW, int64_t KH,
                                        int64_t KW) {
  const int m = KH != KW ? 0 : KH == 3 ? 2 : KH == 5 ? 4 : KH == 7 ? 2 : 0;
  const double direct_flops = 2.0 * N * OH * OW * CI * CO * KH * KW;
  return winograd_mode().load() != 0 && CI >= 16 && CO >= 16 && direct_flops >= kWeightGradWinogradMinFlops ? m : 0;
}

}  // namespace cpu
}  // namespace nin_ext
