// Argument checks and output geometry shared by every backend's nin_block kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace nin_ext {

// Shapes of one nin_block call: x (N, C0, H, W) -> conv (CC) -> 1x1 (C1) -> 1x1 (C2), output (N, C2, OH, OW).
struct NinBlockGeometry {
  int64_t N, C0, H, W;
  int64_t CC, KH, KW;  // spatial conv: CC output channels, KH x KW kernel
  int64_t SH, SW, PH, PW;
  int64_t C1, C2;
  int64_t OH, OW;
  int64_t K() const { return C0 * KH * KW; }   // reduction length of the spatial conv
  int64_t pixels() const { return OH * OW; }    // output pixels per image
};

inline void check_bias(const c10::optional<at::Tensor>& bias, const char* name, int64_t channels,
                       const at::Tensor& x, const char* op) {
  if (!bias.has_value() || !bias->defined()) {
    return;
  }
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == channels, op, ": expected ", name, " of shape [",
              channels, "], got ", bias->sizes());
  TORCH_CHECK(bias->scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", bias->scalar_type(),
              " but x has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK(bias->device() == x.device(), op, ": ", name, " is on ", bias->device(), " but x is on ",
              x.device());
}

inline void check_pointwise_weight(const at::Tensor& weight, const char* name, int64_t in_channels,
                                   const char* in_name, const at::Tensor& x, const char* op) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1, op, ": expected ", name,
              " to be a 1x1 convolution weight of shape [C_out, ", in_channels, ", 1, 1], got ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) == in_channels, op, ": ", name, " expects ", weight.size(1),
              " input channels but ", in_name, " has ", in_channels, " channels");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", weight.scalar_type(),
              " but x has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK(weight.device() == x.device(), op, ": ", name, " is on ", weight.device(), " but x is on ",
              x.device());
}

// Checks every argument of nin_block / nin_block_gap and returns the geometry. Errors name the
// argument and say what was expected, like the reference's nn.Conv2d errors.
inline NinBlockGeometry check_nin_block_args(const at::Tensor& x, const at::Tensor& w,
                                             const c10::optional<at::Tensor>& b, const at::Tensor& w1,
                                             const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                             const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride,
                                             c10::IntArrayRef padding, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x to be a 4-d (N, C, H, W) tensor, got ", x.dim(),
              "-d input of shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected x to have a floating-point dtype, got ",
              x.scalar_type());
  TORCH_CHECK(w.dim() == 4, op, ": expected w to be a 4-d convolution weight [C_out, C_in, kH, kW], got shape ",
              w.sizes());
  TORCH_CHECK(w.size(1) == x.size(1), op, ": x has ", x.size(1), " channels but w expects ", w.size(1),
              " input channels (w.shape[1])");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), op, ": w has dtype ", w.scalar_type(), " but x has dtype ",
              x.scalar_type(), "; they must match");
  TORCH_CHECK(w.device() == x.device(), op, ": w is on ", w.device(), " but x is on ", x.device());
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op,
              ": expected stride to be two positive integers, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": expected padding to be two non-negative integers, got ", padding);
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, op,
              ": expected x to have non-zero channel and spatial sizes, got shape ", x.sizes());
  TORCH_CHECK(w.size(0) > 0 && w.size(2) > 0 && w.size(3) > 0, op, ": w has an empty dimension: ", w.sizes());

  NinBlockGeometry g;
  g.N = x.size(0);
  g.C0 = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.CC = w.size(0);
  g.KH = w.size(2);
  g.KW = w.size(3);
  g.SH = stride[0];
  g.SW = stride[1];
  g.PH = padding[0];
  g.PW = padding[1];
  TORCH_CHECK(g.H + 2 * g.PH >= g.KH && g.W + 2 * g.PW >= g.KW, op, ": input size (", g.H + 2 * g.PH, " x ",
              g.W + 2 * g.PW, ", padding included) is smaller than the kernel size (", g.KH, " x ", g.KW, ")");
  g.OH = (g.H + 2 * g.PH - g.KH) / g.SH + 1;
  g.OW = (g.W + 2 * g.PW - g.KW) / g.SW + 1;

  check_bias(b, "b", g.CC, x, op);
  check_pointwise_weight(w1, "w1", g.CC, "the output of w", x, op);
  g.C1 = w1.size(0);
  check_bias(b1, "b1", g.C1, x, op);
  check_pointwise_weight(w2, "w2", g.C1, "the output of w1", x, op);
  g.C2 = w2.size(0);
  check_bias(b2, "b2", g.C2, x, op);
  return g;
}

// Whether relu(t), for a conv output t laid out in `format`, is still laid out channels_last: ATen's
// element-wise ops give a channels_last tensor with one channel or one pixel contiguous strides.
inline bool relu_keeps_channels_last(at::MemoryFormat format, int64_t channels, int64_t pixels) {
  return format == at::MemoryFormat::ChannelsLast && channels > 1 && pixels > 1;
}

// The memory format of the reference's output: each of its convolutions returns channels_last when
// its input or its weight suggests it, and each ReLU keeps that only as relu_keeps_channels_last says.
inline at::MemoryFormat nin_block_output_memory_format(const at::Tensor& x, const at::Tensor& w,
                                                      const at::Tensor& w1, const at::Tensor& w2,
                                                      const NinBlockGeometry& g) {
  auto conv_output_format = [](bool input_channels_last, const at::Tensor& weight) {
    return input_channels_last || weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast
               ? at::MemoryFormat::ChannelsLast
               : at::MemoryFormat::Contiguous;
  };
  at::MemoryFormat format = conv_output_format(x.suggest_memory_format() == at::MemoryFormat::ChannelsLast, w);
  format = conv_output_format(relu_keeps_channels_last(format, g.CC, g.pixels()), w1);
  format = conv_output_format(relu_keeps_channels_last(format, g.C1, g.pixels()), w2);
  return relu_keeps_channels_last(format, g.C2, g.pixels()) ? at::MemoryFormat::ChannelsLast
                                                            : at::MemoryFormat::Contiguous;
}

inline void check_global_avg_pool_args(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x to be a 4-d (N, C, H, W) tensor, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected x to have a floating-point dtype, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": expected x to have non-zero spatial sizes, got shape ",
              x.sizes());
}

}  // namespace nin_ext
