// Host side of the nin_ext CUDA backend: argument checks, output allocation in the reference's
// memory format, the TF32 decision, the tile plan, launches on the current stream, and the
// CUDA and AutocastCUDA registrations of nin_block, nin_block_gap and global_avg_pool.
// The kernels live in csrc/cuda/*.cu, which include no torch header (build time).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "cuda/nin_block_launch.h"
#include "nin_block_autocast.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cuda {
namespace {

ElemType elem_type(const at::Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return ElemType::f32;
    case at::kDouble:
      return ElemType::f64;
    case at::kHalf:
      return ElemType::f16;
    case at::kBFloat16:
      return ElemType::bf16;
    default:
      TORCH_CHECK(false, op, ": the CUDA kernels take float32, float64, float16 or bfloat16 x, got ",
                  x.scalar_type());
  }
}

int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

const void* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr() : nullptr;
}

c10::optional<at::Tensor> contiguous(const c10::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  return t->contiguous();
}

void copy_strides(const at::Tensor& t, int64_t* strides) {
  for (int d = 0; d < 4; ++d) strides[d] = t.stride(d);
}

at::Tensor run_nin_block(bool gap, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                         const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const char* op = gap ? "nin_block_gap" : "nin_block";
  const NinBlockGeometry g = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, op);
  TORCH_CHECK(x.is_cuda(), op, ": x is on ", x.device(), "; the CUDA kernels need CUDA tensors");
  const ElemType dtype = elem_type(x, op);
  // the kernel's gather decodes reduction indices and input coordinates in 32 bits
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(g.C0 * g.KH * g.KW <= kInt32Max, op, ": w has ", g.C0 * g.KH * g.KW,
              " weights per output channel; the CUDA kernels take at most ", kInt32Max);
  TORCH_CHECK(g.H + g.PH + g.KH <= kInt32Max && g.W + g.PW + g.KW <= kInt32Max, op, ": x is ", g.H, " x ", g.W,
              " with padding ", g.PH, " x ", g.PW, "; the CUDA kernels take rows and columns below 2^31");
  const c10::cuda::CUDAGuard guard(x.device());
  const int device = x.get_device();
  TORCH_CHECK(device_attribute(cudaDevAttrComputeCapabilityMajor, device) >= 8, op,
              ": the CUDA kernels need compute capability 8.0 or newer (tensor-core TF32 and bf16)");

  at::Tensor out = gap ? at::empty({g.N, g.C2}, x.options())
                       : at::empty({g.N, g.C2, g.OH, g.OW},
                                   x.options().memory_format(nin_block_output_memory_format(x, w, w1, w2, g)));
  if (out.numel() == 0) {
    return out;
  }
  const bool tf32 = dtype == ElemType::f32 && at::globalContext().allowTF32CuDNN();
  const bool tensor_cores = uses_tensor_cores(dtype, tf32);
  const int64_t elem_bytes = x.element_size();
  const int64_t acc_bytes = dtype == ElemType::f64 ? 8 : 4;
  const int64_t smem_limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const int64_t min_tile = tensor_cores ? kTensorCoreMinTilePixels : kSimtMinTilePixels;
  const TilePlan plan = plan_nin_block_tile(g.CC, g.C1, elem_bytes, acc_bytes, min_tile, smem_limit, g.N,
                                            g.pixels(), gap,
                                            device_attribute(cudaDevAttrMultiProcessorCount, device));
  TORCH_CHECK(plan.tile_pixels > 0, op, ": w has ", g.CC, " and w1 has ", g.C1,
              " output channels; the fused CUDA kernel keeps both for ", min_tile, " pixels in shared memory (",
              make_smem_layout(min_tile, g.CC, g.C1, elem_bytes, acc_bytes, 1).bytes, " bytes), more than the ",
              smem_limit, " bytes this GPU allows");

  NinBlockLaunch p{};
  p.dtype = dtype;
  p.tf32 = tf32;
  p.gap = gap;
  p.tiling = make_pixel_tiling(g.N, g.pixels(), gap, plan.tile_pixels);
  p.smem = plan.smem;
  TORCH_CHECK(p.tiling.tiles() <= std::numeric_limits<int32_t>::max(), op, ": ", p.tiling.tiles(),
              " pixel tiles exceed the CUDA grid limit");
  const at::Tensor wc = w.contiguous();
  const at::Tensor w1c = w1.contiguous();
  const at::Tensor w2c = w2.contiguous();
  const c10::optional<at::Tensor> bc = contiguous(b), b1c = contiguous(b1), b2c = contiguous(b2);
  at::Tensor gap_partial;
  if (gap) {
    gap_partial = at::empty({p.tiling.tiles(), g.C2},
                            x.options().dtype(dtype == ElemType::f64 ? at::kDouble : at::kFloat));
    p.gap_partial = gap_partial.data_ptr();
  }
  p.x = x.data_ptr();
  p.N = g.N;
  p.C0 = g.C0;
  p.H = g.H;
  p.W = g.W;
  copy_strides(x, p.x_stride);
  p.w = wc.data_ptr();
  p.b = data_or_null(bc);
  p.CC = g.CC;
  p.KH = g.KH;
  p.KW = g.KW;
  p.SH = g.SH;
  p.SW = g.SW;
  p.PH = g.PH;
  p.PW = g.PW;
  p.w1 = w1c.data_ptr();
  p.b1 = data_or_null(b1c);
  p.C1 = g.C1;
  p.w2 = w2c.data_ptr();
  p.b2 = data_or_null(b2c);
  p.C2 = g.C2;
  p.OH = g.OH;
  p.OW = g.OW;
  p.out = out.data_ptr();
  if (!gap) copy_strides(out, p.out_stride);
  const at::Tensor packed_weights =
      at::empty({p.packed_shapes().elems()}, x.options().memory_format(at::MemoryFormat::Contiguous));
  p.packed_weights = packed_weights.data_ptr();
  C10_CUDA_CHECK(launch_nin_block(p, c10::cuda::getCurrentCUDAStream(device).stream()));
  return out;
}

at::Tensor nin_block_cuda(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                          const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                          const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  return run_nin_block(false, x, w, b, w1, b1, w2, b2, stride, padding);
}

at::Tensor nin_block_gap_cuda(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                              const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                              const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride,
                              c10::IntArrayRef padding) {
  return run_nin_block(true, x, w, b, w1, b1, w2, b2, stride, padding);
}

at::Tensor global_avg_pool_cuda(const at::Tensor& x) {
  check_global_avg_pool_args(x, "global_avg_pool");
  TORCH_CHECK(x.is_cuda(), "global_avg_pool: x is on ", x.device(), "; the CUDA kernel needs a CUDA tensor");
  const ElemType dtype = elem_type(x, "global_avg_pool");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  TORCH_CHECK(out.numel() / 8 < std::numeric_limits<int32_t>::max(), "global_avg_pool: ", out.numel(),
              " outputs exceed the CUDA grid limit");
  GlobalAvgPoolLaunch p{};
  p.dtype = dtype;
  p.x = x.data_ptr();
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  copy_strides(x, p.x_stride);
  p.out = out.data_ptr();
  C10_CUDA_CHECK(launch_global_avg_pool(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()));
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CUDA, m) {
  m.impl("nin_block", &nin_ext::cuda::nin_block_cuda);
  m.impl("nin_block_gap", &nin_ext::cuda::nin_block_gap_cuda);
  m.impl("global_avg_pool", &nin_ext::cuda::global_avg_pool_cuda);
}

TORCH_LIBRARY_IMPL(nin_ext, AutocastCUDA, m) {
  using namespace nin_ext;
  constexpr auto cuda = c10::DeviceType::CUDA;
  m.impl("nin_block", &AutocastOp<cuda, kNinBlockOp, NinBlockSignature<at::Tensor>>::call);
  m.impl("nin_block_gap", &AutocastOp<cuda, kNinBlockGapOp, NinBlockSignature<at::Tensor>>::call);
}
