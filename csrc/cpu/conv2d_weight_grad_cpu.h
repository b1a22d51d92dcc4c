// The choices of conv2d_weight_grad_cpu.cpp: whether the weight gradient of a float32 conv runs by
// Winograd tiles (stride 1), and their output-block size m, or as one im2col product
// (conv2d_weight_grad_im2col_cpu.cpp), or by ATen; nin_ext._C asks them for the tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "cpu/microkernel.h"
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

// Both paths run the swapped product (microkernel.h) with the reduction over blocks or pixels: its
// block, nr output channels of up to MR rows, is stored with this row stride, then added up.
constexpr int64_t kSwappedProductStride = 16;

// The float micro-kernel, which both paths need with a swapped product of at most
// kSwappedProductStride rows.
inline MicroKernel<float> swapped_product_kernel() {
  const MicroKernel<float> kernel = microkernel_for<float>();
  TORCH_INTERNAL_ASSERT(kernel.mr <= kSwappedProductStride && kernel.swapped_fn != nullptr,
                        "conv2d_weight_grad: kernel ", kernel.isa, " has no swapped product of at most ",
                        kSwappedProductStride, " rows");
  return kernel;
}

// sum[j * ld + r] += product[j * kSwappedProductStride + r] for j < channels, r < rows: a swapped
// product's block added into a sum whose rows are output channels.
inline void add_swapped_product(const float* product, int64_t channels, int64_t rows, float* sum, int64_t ld) {
  for (int64_t j = 0; j < channels; ++j) {
    float* dst = sum + j * ld;
    const float* src = product + j * kSwappedProductStride;
    for (int64_t r = 0; r < rows; ++r) {
      dst[r] += src[r];
    }
  }
}

// Whether the weight gradient of a float32 conv that the tiles do not take runs as one im2col product
// (conv2d_weight_grad_im2col) rather than by ATen. On a Zen 3 (benchmarks/NOTES.md v46) ATen's
// backward ran 1- and 2-channel convs 1.3-7x slower than the product (the seed's block 1 at batch 16:
// 90-146 against 18-21 ms), and 3-channel ones 1.2-2x faster.
inline bool conv2d_weight_grad_by_im2col(int64_t N, int64_t CI, int64_t CO, int64_t OH, int64_t OW, int64_t KH,
                                         int64_t KW) {
  return N * OH * OW > 0 && CO > 0 && KH * KW > 0 && CI >= 1 && CI <= 2;
}

// dW of a float32 conv as dY cols^T, the reduction over the output pixels; any stride and padding.
at::Tensor conv2d_weight_grad_im2col(const at::Tensor& grad_out, const at::Tensor& x, c10::IntArrayRef kernel_size,
                                     c10::IntArrayRef stride, c10::IntArrayRef padding);

}  // namespace cpu
}  // namespace nin_ext
