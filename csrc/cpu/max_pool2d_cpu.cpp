// nin_ext::max_pool2d on the CPU, the pooling between NiN blocks.
//
// ATen's CPU max_pool2d walks each output's window with index arithmetic per element; here an
// NCHW plane is pooled a row of windows at a time: first the element-wise max of the window's
// input rows (contiguous, vectorised), then the max along that row for each window. channels_last
// input takes the max over whole pixels of C values. NaN wins every comparison, as in torch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "max_pool2d_checks.h"

namespace nin_ext {
namespace cpu {
namespace {

template <typename scalar_t>
inline scalar_t nan_max(scalar_t m, scalar_t v) {
  return (v > m || v != v) ? v : m;
}

// The max of each window along one row of W values into OW outputs. Windows that lie inside the row
// are pooled one kernel column at a time over all of them (a strided loop the compiler vectorises);
// the few clipped by the padding are pooled one by one.
template <typename scalar_t>
void pool_row(const scalar_t* row, scalar_t* dst, const MaxPool2dGeometry& g) {
  const int64_t inner_begin = std::min(g.OW, (g.PW + g.SW - 1) / g.SW);
  const int64_t last_start = g.W + g.PW - g.KW;  // windows starting at ow * SW <= this end inside the row
  const int64_t inner_end = last_start < 0 ? inner_begin : std::max(inner_begin, std::min(g.OW, last_start / g.SW + 1));
  auto pool_clipped = [&](int64_t ow) {
    const int64_t iw0 = ow * g.SW - g.PW;
    const int64_t iw_begin = std::max<int64_t>(iw0, 0), iw_end = std::min(iw0 + g.KW, g.W);
    scalar_t m = row[iw_begin];
    for (int64_t iw = iw_begin + 1; iw < iw_end; ++iw) {
      m = nan_max(m, row[iw]);
    }
    dst[ow] = m;
  };
  for (int64_t ow = 0; ow < inner_begin; ++ow) {
    pool_clipped(ow);
  }
  const scalar_t* first = row + inner_begin * g.SW - g.PW;
  for (int64_t ow = inner_begin; ow < inner_end; ++ow) {
    dst[ow] = first[(ow - inner_begin) * g.SW];
  }
  for (int64_t kx = 1; kx < g.KW; ++kx) {
    for (int64_t ow = inner_begin; ow < inner_end; ++ow) {
      dst[ow] = nan_max(dst[ow], first[(ow - inner_begin) * g.SW + kx]);
    }
  }
  for (int64_t ow = inner_end; ow < g.OW; ++ow) {
    pool_clipped(ow);
  }
}

// One (H, W) plane into one (OH, OW) plane; `row` holds W values.
template <typename scalar_t>
void max_pool2d_plane(const scalar_t* in, scalar_t* out, const MaxPool2dGeometry& g, scalar_t* row) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t ih0 = oh * g.SH - g.PH;
    const int64_t ih_begin = std::max<int64_t>(ih0, 0), ih_end = std::min(ih0 + g.KH, g.H);
    std::copy(in + ih_begin * g.W, in + (ih_begin + 1) * g.W, row);
    for (int64_t ih = ih_begin + 1; ih < ih_end; ++ih) {
      const scalar_t* src = in + ih * g.W;
      for (int64_t iw = 0; iw < g.W; ++iw) {
        row[iw] = nan_max(row[iw], src[iw]);
      }
    }
    pool_row(row, out + oh * g.OW, g);
  }
}

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
  at::Tensor out = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(format));
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
      at::parallel_for(0, g.N * g.C, 16, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> row(g.W);
        for (int64_t plane = begin; plane < end; ++plane) {
          max_pool2d_plane(in + plane * g.H * g.W, o + plane * g.OH * g.OW, g, row.data());
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
