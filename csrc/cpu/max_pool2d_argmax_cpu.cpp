// nin_ext::max_pool2d_with_argmax and nin_ext::max_pool2d_backward on the CPU: the max pool of
// training, which keeps where each window's maximum was, and the gradient routed back to it.
//
// The argmax is an int32 index into the input's (H, W) plane, laid out like the output: half the
// bytes of the int64 indices that eager's max_pool2d_with_indices keeps, and it is all the
// backward needs (not the input). Ties and NaN resolve as in ATen's CPU kernel: the first maximum
// in row-major window order, the last NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "cpu/max_pool2d_plane.h"
#include "cpu/tensor_cache_cpu.h"
#include "max_pool2d_checks.h"

namespace nin_ext {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_argmax_cpu(const at::Tensor& x, c10::IntArrayRef kernel_size,
                                                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                              bool ceil_mode) {
  const MaxPool2dGeometry g =
      check_max_pool2d_args(x, kernel_size, stride, padding, ceil_mode, "max_pool2d_with_argmax");
  TORCH_CHECK(g.H * g.W <= std::numeric_limits<int32_t>::max(), "max_pool2d_with_argmax: x's planes of ", g.H,
              " x ", g.W, " are too large for int32 indices");
  const at::MemoryFormat format = x.suggest_memory_format();
  at::Tensor out = empty_cached({g.N, g.C, g.OH, g.OW}, x.options().memory_format(format));
  at::Tensor argmax = empty_cached({g.N, g.C, g.OH, g.OW}, x.options().dtype(at::kInt).memory_format(format));
  if (out.numel() == 0) {
    return {out, argmax};
  }
  const at::Tensor input = x.contiguous(format);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_with_argmax_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int32_t* a = argmax.data_ptr<int32_t>();
    const auto pool_plane = max_pool2d_argmax_plane_kernel<scalar_t>();
    // Task: one (n, c) plane in NCHW; one image's output row in channels_last.
    const int64_t tasks = channels_last ? g.N * g.OH : g.N * g.C;
    at::parallel_for(0, tasks, channels_last ? 1 : 16, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        if (channels_last) {
          const int64_t n = task / g.OH, oh = task % g.OH;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t at_out = ((n * g.OH + oh) * g.OW + ow) * g.C;
            for (int64_t c = 0; c < g.C; ++c) {
              std::tie(o[at_out + c], a[at_out + c]) = window_argmax(in + n * g.H * g.W * g.C + c, g, g.C, oh, ow);
            }
          }
        } else {
          pool_plane(in + task * g.H * g.W, o + task * g.OH * g.OW, a + task * g.OH * g.OW, g);
        }
      }
    });
  });
  return {out, argmax};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& argmax, c10::IntArrayRef input_size,
                                   bool channels_last) {
  TORCH_CHECK(input_size.size() == 4, "max_pool2d_backward: expected input_size (N, C, H, W), got ", input_size);
  TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.sizes() == grad_out.sizes(),
              "max_pool2d_backward: expected argmax to be an int32 tensor of grad_out's shape ", grad_out.sizes(),
              ", got ", argmax.scalar_type(), " ", argmax.sizes());
  const int64_t N = input_size[0], C = input_size[1], HW = input_size[2] * input_size[3];
  const int64_t OHW = grad_out.size(2) * grad_out.size(3);
  const at::MemoryFormat format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // Sums in float for half and bfloat16 (an input element may be the maximum of several windows).
  const bool reduced = grad_out.scalar_type() == at::kHalf || grad_out.scalar_type() == at::kBFloat16;
  // empty_cached, as at::empty, honours the memory format of its options (at::zeros does not). Each
  // task zeroes its own part before adding to it, while that part is in cache (not one more pass over
  // all of grad_in).
  const at::ScalarType sum_type = reduced ? at::kFloat : grad_out.scalar_type();
  at::Tensor grad_in = empty_cached(input_size, grad_out.options().dtype(sum_type).memory_format(format));
  if (grad_in.numel() == 0 || grad_out.numel() == 0) {
    return grad_in.zero_().to(grad_out.scalar_type());
  }
  const at::Tensor grad = grad_out.contiguous(format), index = argmax.contiguous(format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "max_pool2d_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>,
                                     float, scalar_t>;
    const scalar_t* go = grad.const_data_ptr<scalar_t>();
    const int32_t* idx = index.const_data_ptr<int32_t>();
    acc_t* gi = grad_in.data_ptr<acc_t>();
    if (channels_last) {  // one image per task: windows overlap within it
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          std::fill_n(gi + n * HW * C, HW * C, acc_t(0));
          for (int64_t p = 0; p < OHW * C; ++p) {
            const int64_t c = p % C, at_out = n * OHW * C + p;
            gi[(n * HW + idx[at_out]) * C + c] += static_cast<acc_t>(go[at_out]);
          }
        }
      });
    } else {
      at::parallel_for(0, N * C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          std::fill_n(gi + plane * HW, HW, acc_t(0));
          for (int64_t p = 0; p < OHW; ++p) {
            gi[plane * HW + idx[plane * OHW + p]] += static_cast<acc_t>(go[plane * OHW + p]);
          }
        }
      });
    }
  });
  return reduced ? grad_in.to(grad_out.scalar_type()) : grad_in;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("max_pool2d_with_argmax", &nin_ext::cpu::max_pool2d_with_argmax_cpu);
  m.impl("max_pool2d_backward", &nin_ext::cpu::max_pool2d_backward_cpu);
}
