// nin_ext::max_pool2d on the CPU, the pooling between NiN blocks.
//
// ATen's CPU max_pool2d walks each output's window with index arithmetic per element; here an
// NCHW plane is pooled a row of windows at a time (max_pool2d_plane.h; for float, with the steps
// compiled for the CPU's ISA next to the micro-kernel). channels_last input takes the max over whole
// pixels of C values. NaN wins every comparison, as in torch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/max_pool2d_plane.h"
#include "cpu/tensor_cache_cpu.h"
#include "max_pool2d_checks.h"

namespace nin_ext {
namespace cpu {
namespace {

// One output row of a channels_last tensor: every pixel's C values at once.
template <typename scalar_t>
void max_pool2d_row_channels_last(const scalar_t* image, scalar_t* out, const MaxPool2dGeometry& g, int64_t oh) {
  const int64_t ih0 = oh * g.SH - g.PH;
  const int64_t ih_begin = std::max<int64_t>(ih0, 0), ih_end = std::min(ih0 + g.KH, g.H);
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    const int64_t iw0 = ow * g.SW - g.PW;
    const int64_t iw_begin = std::max<int64_t>(iw0, 0), iw_end = std::min(iw0 + g.KW, g.W);
    scalar_t* dst = out + ow * g.C;
    std::copy(image + (ih_begin * g.W + iw_begin) * g.C, image + (ih_begin * g.W + iw_begin + 1) * g.C, dst);
    for (int64_t ih = ih_begin; ih < ih_end; ++ih) {
      for (int64_t iw = (ih == ih_begin ? iw_begin + 1 : iw_begin); iw < iw_end; ++iw) {
        const scalar_t* src = image + (ih * g.W + iw) * g.C;
        for (int64_t c = 0; c < g.C; ++c) {
          dst[c] = nan_max(dst[c], src[c]);
        }
      }
    }
  }
}

}  // namespace

at::Tensor max_pool2d_cpu(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, bool ceil_mode) {
  const MaxPool2dGeometry g = check_max_pool2d_args(x, kernel_size, stride, padding, ceil_mode, "max_pool2d");
  const at::MemoryFormat format = x.suggest_memory_format();
  at::Tensor out = empty_cached({g.N, g.C, g.OH, g.OW}, x.options().memory_format(format));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor input = x.contiguous(format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (format == at::MemoryFormat::ChannelsLast) {
      at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t n = task / g.OH, oh = task % g.OH;
          max_pool2d_row_channels_last(in + n * g.H * g.W * g.C, o + (n * g.OH + oh) * g.OW * g.C, g, oh);
        }
      });
    } else {
      // Planes of a few thousand elements: a grain of 16 keeps the task overhead small.
      const auto pool_plane = max_pool2d_plane_kernel<scalar_t>();
      at::parallel_for(0, g.N * g.C, 16, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> row(g.W);
        for (int64_t plane = begin; plane < end; ++plane) {
          pool_plane(in + plane * g.H * g.W, o + plane * g.OH * g.OW, g, row.data());
        }
      });
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("max_pool2d", &nin_ext::cpu::max_pool2d_cpu);
}
