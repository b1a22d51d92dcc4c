// Argument checks and output size of nin_ext::max_pool2d, the same rules as torch's max_pool2d
// (dilation 1): kernel and stride positive, padding at most half the kernel, and with ceil_mode the
// last window must start inside the input or its left padding.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

namespace nin_ext {

struct MaxPool2dGeometry {
  int64_t N, C, H, W;
  int64_t KH, KW, SH, SW, PH, PW;
  int64_t OH, OW;
};

inline int64_t max_pool2d_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, bool ceil_mode) {
  const int64_t span = in + 2 * pad - kernel + (ceil_mode ? stride - 1 : 0);
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) {
    --out;
  }
  return out;
}

inline MaxPool2dGeometry check_max_pool2d_args(const at::Tensor& x, c10::IntArrayRef kernel_size,
                                               c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode,
                                               const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x to be a 4-d (N, C, H, W) tensor, got ", x.dim(),
              "-d input of shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected x to have a floating-point dtype, got ",
              x.scalar_type());
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0, op,
              ": expected kernel_size to be two positive integers, got ", kernel_size);
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op,
              ": expected stride to be two positive integers, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0 && padding[0] <= kernel_size[0] / 2 &&
                  padding[1] <= kernel_size[1] / 2,
              op, ": expected padding to be non-negative and at most half of kernel_size ", kernel_size, ", got ",
              padding);
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, op,
              ": expected x to have non-zero channel and spatial sizes, got shape ", x.sizes());
  MaxPool2dGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), kernel_size[0], kernel_size[1], stride[0],
                      stride[1], padding[0], padding[1], 0, 0};
  g.OH = max_pool2d_output_size(g.H, g.KH, g.SH, g.PH, ceil_mode);
  g.OW = max_pool2d_output_size(g.W, g.KW, g.SW, g.PW, ceil_mode);
  TORCH_CHECK(g.OH > 0 && g.OW > 0, op, ": output size is too small: x of spatial size ", g.H, " x ", g.W,
              " gives ", g.OH, " x ", g.OW, " with kernel_size ", kernel_size, ", stride ", stride, ", padding ",
              padding);
  return g;
}

}  // namespace nin_ext
