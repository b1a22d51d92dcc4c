// The fused block with its spatial convolution as a sum of shifted products: no im2col gather.
//
// For a stride-1 conv, the input is copied once, zero-padded and channel-major over the batch: row ci
// holds the padded planes of all the images one after another, each plane Hs = H + PH rows of
// Ws = W + PW columns, its PH top rows and PW left columns zero. The bottom and right padding are not
// stored: they are the next plane's top rows and the next row's left columns (which is why the path
// needs PH < KH and PW < KW, as any useful padding is). Output pixel (n, oh, ow) is position
// q = (n Hs + oh) Ws + ow, and its conv reads row ci at q + ky Ws + kx: for a panel of NR consecutive
// positions, each (ci, ky, kx) is NR consecutive floats of a row, which the shifted micro-kernel
// (microkernel.h) reads in place. Positions outside the output (oh >= OH or ow >= OW) are computed and
// dropped, Hs Ws / (OH OW) times the work of the pixels: that pays where the gather costs more than
// the extra products, a long reduction (C0 KH KW) into few channels (CC), as in the seed's block 4
// (384 -> 10 channels on 5x5 maps: 1.44x the products, instead of gathering 3456 floats per pixel for
// 10 outputs).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu/nin_block_tiles_cpu.h"
#include "cpu/thread_scratch_cpu.h"

namespace nin_ext {
namespace cpu {

// What one gathered patch element costs in multiply-adds: measured on the seed's block 4 (batch 16,
// AVX-512), the direct path's gather took 0.29 ms for 1.4 M elements and its micro-kernel 0.07 ms for
// 21 M multiply-adds, about 60 each; half that keeps the choice on the safe side.
constexpr int64_t kGatherCostInMultiplyAdds = 32;

// Whether the block runs its conv by shifted products (stride 1, padding below the kernel size, and
// less work counting the gather of the direct path and the input copy of this one, at the same cost
// per element: a 1x1 conv's gather is such a copy, so it stays on the direct path). Shapes only, so
// the choice does not depend on the thread count.
inline bool shifted_conv_pays(const NinBlockGeometry& g) {
  if (g.SH != 1 || g.SW != 1 || g.PH >= g.KH || g.PW >= g.KW) {
    return false;
  }
  const double per_pixel = double(g.K() * g.CC + g.CC * g.C1 + g.C1 * g.C2);
  const double padded = double(g.H + g.PH) * double(g.W + g.PW);
  const double shifted = padded * (per_pixel + double(kGatherCostInMultiplyAdds * g.C0));
  return shifted < double(g.pixels()) * (per_pixel + double(kGatherCostInMultiplyAdds * g.K()));
}

// Per-thread workspace: the padded, channel-major copy of a tile of whole images (above) and the
// block's three activations at its positions, in the panel layout of the pixel-tile path
// ([panel][channel][NR]). Each thread copies the images it computes, so the copy is read from its
// own cache. Each row ends with zeros for the last panel's lanes past the positions and for the
// largest shift (which covers the last plane's bottom padding), so that every read stays in the row.
template <typename scalar_t>
class ShiftedTileWorker {
 public:
  ShiftedTileWorker(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                    int64_t max_images)
      : x_(x), g_(g), packed_(packed), plane_((g.H + g.PH) * (g.W + g.PW)),
        lanes_(panels_for(max_images) * packed.kernel.nr),
        row_stride_(lanes_ + (g.KH - 1) * (g.W + g.PW) + g.KW - 1), rows_(g.C0 * row_stride_),
        hidden0_(g.CC * lanes_), hidden1_(g.C1 * lanes_), hidden2_(g.C2 * lanes_) {
    for (int64_t ky = 0; ky < g.KH; ++ky) {
      for (int64_t kx = 0; kx < g.KW; ++kx) {
        offsets_.push_back(ky * (g.W + g.PW) + kx);  // in the conv weight's order
      }
    }
  }

  // The panels of NR positions that `images` images take.
  int64_t panels_for(int64_t images) const { return (images * plane_ + packed_.kernel.nr - 1) / packed_.kernel.nr; }

  // Copies images [n0, n1) and computes the block's activations at their positions.
  void compute(int64_t n0, int64_t n1) {
    const NinBlockGeometry& g = g_;
    const int64_t Ws = g.W + g.PW, panels = panels_for(n1 - n0);
    const scalar_t* xd = x_.const_data_ptr<scalar_t>();
    const int64_t sn = x_.stride(0), sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    for (int64_t ci = 0; ci < g.C0; ++ci) {
      scalar_t* row = rows_.data() + ci * row_stride_;
      std::fill(row, row + row_stride_, scalar_t(0));
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t ih = 0; ih < g.H; ++ih) {
          const scalar_t* src = xd + n * sn + ci * sc + ih * sh;
          scalar_t* dst = row + (n - n0) * plane_ + (ih + g.PH) * Ws + g.PW;
          for (int64_t iw = 0; iw < g.W; ++iw) {
            dst[iw] = src[iw * sw];
          }
        }
      }
    }
    const MicroKernel<scalar_t>& kernel = packed_.kernel;
    const PackedLayer<scalar_t>& conv = packed_.conv;
    const int64_t shifts = static_cast<int64_t>(offsets_.size()), nr = kernel.nr;
    for (int64_t m0 = 0; m0 < conv.M; m0 += kernel.mr) {
      for (int64_t p = 0; p < panels; ++p) {
        kernel.shifted_fn(g.C0, shifts, offsets_.data(), conv.a.data() + m0 * conv.K, rows_.data() + p * nr,
                          row_stride_, conv.bias.data() + m0, hidden0_.data() + (p * conv.M + m0) * nr, nr,
                          std::min(kernel.mr, conv.M - m0));
      }
    }
    apply_packed_layer(kernel, packed_.pointwise1, hidden0_.data(), hidden1_.data(), panels);
    apply_packed_layer(kernel, packed_.pointwise2, hidden1_.data(), hidden2_.data(), panels);
  }

  // Activation `layer` (0: the conv's, 1: the first 1x1's, 2: the block's output) of the last tile.
  const scalar_t* activation(int layer) const {
    return (layer == 0 ? hidden0_ : layer == 1 ? hidden1_ : hidden2_).data();
  }

  // Calls pixel_fn(j, n, oh, ow) for each position j of the last tile (images from n0) that is an
  // output pixel.
  template <typename PixelFn>
  void for_each_pixel(int64_t n0, int64_t n1, const PixelFn& pixel_fn) const {
    const int64_t Ws = g_.W + g_.PW;
    for (int64_t j = 0; j < (n1 - n0) * plane_; ++j) {
      const int64_t oh = j % plane_ / Ws, ow = j % Ws;
      if (oh < g_.OH && ow < g_.OW) {
        pixel_fn(j, n0 + j / plane_, oh, ow);
      }
    }
  }

 private:
  const at::Tensor& x_;
  const NinBlockGeometry& g_;
  const NinBlockPacked<scalar_t>& packed_;
  // Positions per image; positions a tile's panels hold at most; floats per channel row.
  const int64_t plane_, lanes_, row_stride_;
  std::vector<int64_t> offsets_;       // per (ky, kx): ky Ws + kx
  ScratchBuffer<scalar_t> rows_, hidden0_, hidden1_, hidden2_;
};

// Runs `tile_fn(worker, n0, n1)` for tiles of whole images [n0, n1), in parallel: each thread takes
// an equal range of images, in tiles of about 1 MiB of input copy and activations. A position's
// values do not depend on its tile (each lane of a micro-kernel block is computed on its own), so
// tiles can follow the threads.
template <typename scalar_t, typename TileFn>
void for_each_shifted_tile(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                           const TileFn& tile_fn) {
  const int64_t image_bytes = (g.H + g.PH) * (g.W + g.PW) * (g.C0 + g.CC + g.C1 + g.C2) * int64_t(sizeof(scalar_t));
  const int64_t tile_images = std::max<int64_t>(1, (int64_t{1} << 20) / image_bytes);
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    ShiftedTileWorker<scalar_t> worker(x, g, packed, std::min(tile_images, end - begin));
    for (int64_t n0 = begin; n0 < end; n0 += tile_images) {
      const int64_t n1 = std::min(end, n0 + tile_images);
      worker.compute(n0, n1);
      tile_fn(worker, n0, n1);
    }
  });
}

// Runs the block by shifted products and writes the activations asked for ((layer, tensor) pairs,
// as run_nin_block) into their (N, C, OH, OW) tensors of any strides.
template <typename scalar_t>
void run_shifted_nin_block(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                           const std::vector<std::pair<int, at::Tensor*>>& outputs) {
  const int64_t nr = packed.kernel.nr;
  for_each_shifted_tile<scalar_t>(x, g, packed, [&](const ShiftedTileWorker<scalar_t>& worker, int64_t n0,
                                                    int64_t n1) {
    for (const auto& [layer, tensor] : outputs) {
      const scalar_t* values = worker.activation(layer);
      const int64_t channels = tensor->size(1);
      scalar_t* data = tensor->template data_ptr<scalar_t>();
      const int64_t sn = tensor->stride(0), sc = tensor->stride(1), sh = tensor->stride(2), sw = tensor->stride(3);
      worker.for_each_pixel(n0, n1, [&](int64_t j, int64_t n, int64_t oh, int64_t ow) {
        const scalar_t* src = values + (j / nr * channels) * nr + j % nr;
        scalar_t* dst = data + n * sn + oh * sh + ow * sw;
        for (int64_t c = 0; c < channels; ++c) {
          dst[c * sc] = src[c * nr];
        }
      });
    }
  });
}

}  // namespace cpu
}  // namespace nin_ext
