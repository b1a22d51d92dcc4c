// nin_ext::global_avg_pool on CUDA: one warp per (image, channel) sums the spatial positions in a
// fixed order (lane strides, then a shuffle tree), so the result is the same on every run.
#include <cuda_runtime.h>

#include "cuda/elem_convert.cuh"
#include "cuda/nin_block_launch.h"

namespace nin_ext {
namespace cuda {
namespace {

constexpr int kPoolThreads = 256;
constexpr int kPoolWarps = kPoolThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kPoolThreads) global_avg_pool_kernel(const GlobalAvgPoolLaunch p) {
  using Acc = typename AccumulateOf<T>::type;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kPoolWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (index >= p.N * p.C) return;  // the whole warp leaves together
  const int64_t n = index / p.C;
  const int64_t c = index - n * p.C;
  const T* x = static_cast<const T*>(p.x) + n * p.x_stride[0] + c * p.x_stride[1];
  const int64_t pixels = p.H * p.W;
  Acc sum = Acc(0);
  for (int64_t q = lane; q < pixels; q += 32) {
    const int64_t h = q / p.W;
    sum += to_acc(x[h * p.x_stride[2] + (q - h * p.W) * p.x_stride[3]]);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) static_cast<T*>(p.out)[index] = from_acc<T>(sum / static_cast<Acc>(pixels));
}

template <typename T>
cudaError_t launch_with(const GlobalAvgPoolLaunch& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div(p.N * p.C, kPoolWarps);
  global_avg_pool_kernel<T><<<static_cast<unsigned>(blocks), kPoolThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_global_avg_pool(const GlobalAvgPoolLaunch& p, cudaStream_t stream) {
  switch (p.dtype) {
    case ElemType::f32:
      return launch_with<float>(p, stream);
    case ElemType::f64:
      return launch_with<double>(p, stream);
    case ElemType::f16:
      return launch_with<__half>(p, stream);
    case ElemType::bf16:
      return launch_with<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace nin_ext
