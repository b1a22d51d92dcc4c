// conv2d_weight_grad's direct path: the weight gradient of a conv of any stride and padding as one
// matrix product, dW (C_out x C_in KH KW) = dY (C_out x pixels) cols (pixels x C_in KH KW), the
// reduction over the output pixels. ATen's CPU backward runs a 1-channel conv's weight gradient far
// below the FMA peak: the seed's block 1 (11x11, stride 4, 1 -> 96, batch 16) 99-127 ms on a Zen 3,
// where its 1.08 GFLOP take 5.5 ms at the peak (benchmarks/NOTES.md v46).
//
// The pixels go in chunks that fit the L2 with their operands: the chunk's im2col rows (a pixel's
// taps side by side, the swapped product's broadcast rows, read in place) and its output gradient
// transposed into nr-channel panels (the product's vector lanes). A slab of chunks (a fixed number of
// pixels) is one task with a sum of its own; the slabs' sums are added in order, so the bits do not
// depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/conv2d_weight_grad_cpu.h"
#include "cpu/copy_runs.h"
#include "cpu/tensor_cache_cpu.h"
#include "cpu/thread_scratch_cpu.h"

namespace nin_ext {
namespace cpu {
namespace {

// A chunk's pixels: for the seed's block 1 its im2col rows (126 floats) and output gradient panels
// (96) take 222 KB, within a Zen 3's 512 KB L2.
constexpr int64_t kPixelsPerChunk = 256;
constexpr int64_t kChunksPerSlab = 4;
constexpr int64_t kPixelsPerSlab = kPixelsPerChunk * kChunksPerSlab;

struct ConvGeometry {
  int64_t CI, H, W, CO, OH, OW, KH, KW, SH, SW, PH, PW;
};

// cols[i ldt + (ci KH + kh) KW + kw] = x[n, ci, oy SH - PH + kh, ox SW - PW + kw] for the chunk's
// pixels i (pixel p0 + i of the batch is (n, oy, ox)), zero outside the image and from the last tap
// to ldt: each pixel's im2col row, which the swapped product reads in place as its broadcast rows. x
// is contiguous NCHW.
void gather_im2col_rows(const float* x, const ConvGeometry& g, int64_t p0, int64_t count, float* cols, int64_t ldt) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = p0 + i, ox = p % g.OW, oy = p / g.OW % g.OH, n = p / (g.OW * g.OH);
    const int64_t col0 = ox * g.SW - g.PW;
    const int64_t kw0 = std::max<int64_t>(0, -col0), kw1 = std::min(g.KW, g.W - col0);  // taps inside the image
    float* row_out = cols + i * ldt;
    for (int64_t ci = 0; ci < g.CI; ++ci) {
      for (int64_t kh = 0; kh < g.KH; ++kh, row_out += g.KW) {
        const int64_t row = oy * g.SH - g.PH + kh;
        if (row < 0 || row >= g.H || kw1 <= kw0) {
          std::fill(row_out, row_out + g.KW, 0.f);
          continue;
        }
        std::fill(row_out, row_out + kw0, 0.f);
        copy_run(x + ((n * g.CI + ci) * g.H + row) * g.W + col0 + kw0, kw1 - kw0, row_out + kw0);
        std::fill(row_out + kw1, row_out + g.KW, 0.f);
      }
    }
    std::fill(row_out, cols + (i + 1) * ldt, 0.f);
  }
}

// panels[(group count + i) nr + lane] = dy[n, group nr + lane, oy, ox] for the chunk's pixels i, zero
// past C_out: the output gradient transposed into the product's nr-channel panels. One output row's
// run of pixels at a time, one channel at a time: dy (NCHW from the backward, 18 MB for the seed's
// block 1 at batch 16) comes from memory, and one stream at a time keeps the prefetcher ahead (16
// channels side by side, as channels_last_row_portable reads, took twice as long). Any strides.
void gather_gradient_panels(const float* dy, const int64_t* dy_strides, const ConvGeometry& g, int64_t p0,
                            int64_t count, int64_t nr, float* panels) {
  const int64_t groups = (g.CO + nr - 1) / nr;
  for (int64_t i = 0; i < count;) {
    const int64_t p = p0 + i, ox = p % g.OW, oy = p / g.OW % g.OH, n = p / (g.OW * g.OH);
    const int64_t width = std::min(g.OW - ox, count - i);
    const float* row = dy + n * dy_strides[0] + oy * dy_strides[2] + ox * dy_strides[3];
    for (int64_t c = 0; c < groups * nr; ++c) {
      float* dst = panels + ((c / nr) * count + i) * nr + c % nr;
      if (c >= g.CO) {
        for (int64_t j = 0; j < width; ++j) {
          dst[j * nr] = 0.f;
        }
        continue;
      }
      const float* src = row + c * dy_strides[1];
      for (int64_t j = 0; j < width; ++j) {
        dst[j * nr] = src[j * dy_strides[3]];
      }
    }
    i += width;
  }
}

}  // namespace

at::Tensor conv2d_weight_grad_im2col(const at::Tensor& grad_out, const at::Tensor& x, c10::IntArrayRef kernel_size,
                                     c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const MicroKernel<float> kernel = swapped_product_kernel();
  const int64_t nr = kernel.nr, mr = kernel.mr;
  const ConvGeometry g{x.size(1),        x.size(2),  x.size(3),  grad_out.size(1), grad_out.size(2),
                       grad_out.size(3), kernel_size[0], kernel_size[1], stride[0], stride[1],
                       padding[0],       padding[1]};
  const int64_t taps = g.CI * g.KH * g.KW;
  const int64_t ldt = (taps + mr - 1) / mr * mr;  // the product reads up to mr taps from each row start
  const int64_t groups = (g.CO + nr - 1) / nr;
  const int64_t pixels = x.size(0) * g.OH * g.OW, slabs = (pixels + kPixelsPerSlab - 1) / kPixelsPerSlab;
  const at::Tensor xc = x.contiguous();
  const float* xd = xc.const_data_ptr<float>();
  const float* dyd = grad_out.const_data_ptr<float>();
  const int64_t dy_strides[4] = {grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3)};
  const at::TensorOptions options = x.options().memory_format(at::MemoryFormat::Contiguous);
  // Each slab's sum, sums[(slab C_out + co) taps + tap]; a tensor, so that torch's allocator counts it.
  at::Tensor sums_tensor = empty_cached({slabs * g.CO * taps}, options).zero_();
  float* const sums = sums_tensor.data_ptr<float>();
  at::parallel_for(0, slabs, 1, [&](int64_t begin, int64_t end) {
    ScratchBuffer<float> cols(kPixelsPerChunk * ldt), panels(groups * kPixelsPerChunk * nr),
        product(nr * kSwappedProductStride);
    for (int64_t slab = begin; slab < end; ++slab) {
      float* sum = sums + slab * g.CO * taps;
      const int64_t slab_end = std::min(pixels, (slab + 1) * kPixelsPerSlab);
      for (int64_t p0 = slab * kPixelsPerSlab; p0 < slab_end; p0 += kPixelsPerChunk) {
        const int64_t count = std::min(kPixelsPerChunk, slab_end - p0);
        gather_im2col_rows(xd, g, p0, count, cols.data(), ldt);
        gather_gradient_panels(dyd, dy_strides, g, p0, count, nr, panels.data());
        // taps outside: a group of mr taps' rows (16 KB for 256 pixels) stays in L1 through the
        // products of every output channel group, whose panels the kernel prefetches
        for (int64_t t0 = 0; t0 < taps; t0 += mr) {
          const int64_t rows = std::min(mr, taps - t0);
          for (int64_t group = 0; group < groups; ++group) {
            const int64_t channels = std::min(nr, g.CO - group * nr);
            kernel.swapped_fn(count, cols.data() + t0, ldt, panels.data() + group * count * nr, product.data(),
                              kSwappedProductStride, rows);
            add_swapped_product(product.data(), channels, rows, sum + group * nr * taps + t0, taps);
          }
        }
      }
    }
  });
  at::Tensor grad_weight = empty_cached({g.CO, g.CI, g.KH, g.KW}, options);
  float* const out = grad_weight.data_ptr<float>();
  const int64_t values = g.CO * taps;
  at::parallel_for(0, values, 4096, [&](int64_t begin, int64_t end) {
    std::copy(sums + begin, sums + end, out + begin);
    for (int64_t slab = 1; slab < slabs; ++slab) {
      const float* s = sums + slab * values;
      for (int64_t i = begin; i < end; ++i) {
        out[i] += s[i];
      }
    }
  });
  return grad_weight;
}

}  // namespace cpu
}  // namespace nin_ext
