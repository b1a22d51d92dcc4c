// nin_ext::max_pool2d_backward on the CPU: each output's gradient goes to the argmax of its window,
// found again from the input. ATen's backward needs the int64 argmax indices of the forward, which
// eager keeps alive from the forward to the backward (twice the pooled map's bytes); finding the
// argmax again costs one more pass over the input and no memory. Ties and NaN resolve as in
// ATen's CPU kernel: the first maximum in row-major window order, the last NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "max_pool2d_checks.h"

namespace nin_ext {
namespace cpu {
namespace {

// Adds grad to the input element at the argmax of window (oh, ow); element (ih, iw) of the image
// sits at (ih * W + iw) * pixel_stride of `in` and `grad_in`.
template <typename scalar_t, typename acc_t>
inline void route_window(const scalar_t* in, acc_t* grad_in, const MaxPool2dGeometry& g, int64_t pixel_stride,
                         int64_t oh, int64_t ow, acc_t grad) {
  const int64_t ih0 = oh * g.SH - g.PH, iw0 = ow * g.SW - g.PW;
  const int64_t ih_begin = std::max<int64_t>(ih0, 0), ih_end = std::min(ih0 + g.KH, g.H);
  const int64_t iw_begin = std::max<int64_t>(iw0, 0), iw_end = std::min(iw0 + g.KW, g.W);
  int64_t best = ih_begin * g.W + iw_begin;
  acc_t best_value = static_cast<acc_t>(in[best * pixel_stride]);
  for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
    for (int64_t iw = iw_begin; iw < iw_end; ++iw) {
      const acc_t value = static_cast<acc_t>(in[(ih * g.W + iw) * pixel_stride]);
      if (value > best_value || value != value) {
        best_value = value;
        best = ih * g.W + iw;
      }
    }
  }
  grad_in[best * pixel_stride] += grad;
}

}  // namespace

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, c10::IntArrayRef kernel_size,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode) {
  const MaxPool2dGeometry g =
      check_max_pool2d_args(x, kernel_size, stride, padding, ceil_mode, "max_pool2d_backward");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.N, g.C, g.OH, g.OW}), "max_pool2d_backward: expected grad_out "
              "of shape [", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "max_pool2d_backward: grad_out has dtype ",
              grad_out.scalar_type(), " but x has dtype ", x.scalar_type());
  const at::MemoryFormat format = x.suggest_memory_format();
  const at::Tensor input = x.contiguous(format), grad = grad_out.contiguous(format);
  // Sums in the float type for half and bfloat16 (a window's element may take several gradients).
  const bool reduced = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const at::ScalarType acc_type = reduced ? at::kFloat : x.scalar_type();
  at::Tensor grad_in = at::zeros(x.sizes(), x.options().dtype(acc_type).memory_format(format));
  if (grad_in.numel() == 0) {
    return grad_in.to(x.scalar_type());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>,
                                     float, scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad.const_data_ptr<scalar_t>();
    acc_t* gi = grad_in.data_ptr<acc_t>();
    if (format == at::MemoryFormat::ChannelsLast) {  // one image per task: windows overlap within it
      at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          for (int64_t o = 0; o < g.OH * g.OW; ++o) {
            for (int64_t c = 0; c < g.C; ++c) {
              const int64_t image = n * g.H * g.W * g.C + c;
              route_window(in + image, gi + image, g, g.C, o / g.OW, o % g.OW,
                           static_cast<acc_t>(go[(n * g.OH * g.OW + o) * g.C + c]));
            }
          }
        }
      });
    } else {
      at::parallel_for(0, g.N * g.C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          for (int64_t o = 0; o < g.OH * g.OW; ++o) {
            route_window(in + plane * g.H * g.W, gi + plane * g.H * g.W, g, 1, o / g.OW, o % g.OW,
                         static_cast<acc_t>(go[plane * g.OH * g.OW + o]));
          }
        }
      });
    }
  });
  return grad_in.scalar_type() == x.scalar_type() ? grad_in : grad_in.to(x.scalar_type());
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("max_pool2d_backward", &nin_ext::cpu::max_pool2d_backward_cpu);
}
