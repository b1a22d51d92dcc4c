// Launch parameters of the nin_ext CUDA kernels: plain C++ structs shared by the host code
// (nin_ext_cuda.cpp, which includes torch) and the device code (*.cu, which includes no torch header).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/nin_block_tile_plan.h"

namespace nin_ext {
namespace cuda {

enum class ElemType { f32, f64, f16, bf16 };

// One nin_block / nin_block_gap call. Strides are in elements; weights and biases are contiguous.
struct NinBlockLaunch {
  ElemType dtype;
  bool tf32;   // f32 on tensor cores in TF32; otherwise f32 is exact (FFMA)
  bool gap;    // nin_block_gap: per-tile channel sums to gap_partial, then their mean to out (N, C2)
  const void* x;
  int64_t N, C0, H, W;
  int64_t x_stride[4];
  const void* w;   // [CC][C0 * KH * KW]
  const void* b;   // [CC] or null
  int64_t CC, KH, KW, SH, SW, PH, PW;
  const void* w1;  // [C1][CC]
  const void* b1;
  int64_t C1;
  const void* w2;  // [C2][C1]
  const void* b2;
  int64_t C2;
  int64_t OH, OW;
  void* out;       // nin_block: (N, C2, OH, OW) with out_stride; nin_block_gap: (N, C2) contiguous
  int64_t out_stride[4];
  void* gap_partial;  // nin_block_gap: [tiles][C2] in the accumulation type (double for f64, else float)
  // Workspace of packed_shapes().elems() elements of dtype: w, w1 and w2 as the kernel stages them
  // (PackedWeightShape), written by the launch before the block's kernel.
  void* packed_weights;
  PixelTiling tiling;
  SmemLayout smem;

  NIN_HOST_DEVICE PackedWeightShapes packed_shapes() const { return packed_weight_shapes(CC, C0 * KH * KW, C1, C2); }
};

// Whether a dtype runs on tensor cores (decides the minimum tile and the accumulator size).
inline bool uses_tensor_cores(ElemType dtype, bool tf32) {
  return dtype == ElemType::f16 || dtype == ElemType::bf16 || (dtype == ElemType::f32 && tf32);
}

cudaError_t launch_nin_block(const NinBlockLaunch& params, cudaStream_t stream);

struct GlobalAvgPoolLaunch {
  ElemType dtype;
  const void* x;
  int64_t N, C, H, W;
  int64_t x_stride[4];
  void* out;  // (N, C) contiguous
};

cudaError_t launch_global_avg_pool(const GlobalAvgPoolLaunch& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace nin_ext
