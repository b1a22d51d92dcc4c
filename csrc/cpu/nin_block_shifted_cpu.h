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

namespace nin_ext {
namespace cpu {

// What one gathered patch element costs in multiply-adds: measured on the seed's block 4 (batch 16,
// AVX-512), the direct path's gather took 0.29 ms for 1.4 M elements and its micro-kernel 0.07 ms for
// 21 M multiply-adds, about 60 each; half that keeps the choice on the safe side.
constexpr int64_t kGatherCostInMultiplyAdds = 32;

// Whether the block runs its conv by shifted products (stride 1, padding below the kernel size, and
// less work counting the gather). Shapes only, so the choice does not depend on the thread count.
inline bool shifted_conv_pays(const NinBlockGeometry& g) {
  if (g.SH != 1 || g.SW != 1 || g.PH >= g.KH || g.PW >= g.KW) {
    return false;
  }
  const double per_pixel = double(g.K() * g.CC + g.CC * g.C1 + g.C1 * g.C2);
  const double padded = double(g.H + g.PH) * double(g.W + g.PW);
  return padded * per_pixel < double(g.pixels()) * (per_pixel + double(kGatherCostInMultiplyAdds * g.K()));
}

// The padded, channel-major copy of the input (above). Each row ends with zeros for the last panel's
// lanes past the positions and for the largest shift (which covers the last plane's bottom padding),
// so that every read stays in the row.
template <typename scalar_t>
struct ShiftedConvInput {
  int64_t Hs, Ws, positions, row_stride;
  std::vector<int64_t> offsets;  // per (ky, kx), in the conv weight's order: ky Ws + kx
  std::unique_ptr<scalar_t[]> rows;

  ShiftedConvInput(const at::Tensor& x, const NinBlockGeometry& g, int64_t nr)
      : Hs(g.H + g.PH), Ws(g.W + g.PW), positions(g.N * Hs * Ws) {
    const int64_t largest_shift = (g.KH - 1) * Ws + g.KW - 1;
    row_stride = (positions + nr - 1) / nr * nr + largest_shift;
    for (int64_t ky = 0; ky < g.KH; ++ky) {
      for (int64_t kx = 0; kx < g.KW; ++kx) {
        offsets.push_back(ky * Ws + kx);
      }
    }
    rows.reset(new scalar_t[g.C0 * row_stride]);
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
    at::parallel_for(0, g.C0, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ci = begin; ci < end; ++ci) {
        scalar_t* row = rows.get() + ci * row_stride;
        std::fill(row, row + row_stride, scalar_t(0));
        for (int64_t n = 0; n < g.N; ++n) {
          for (int64_t ih = 0; ih < g.H; ++ih) {
            const scalar_t* src = xd + n * sn + ci * sc + ih * sh;
            scalar_t* dst = row + (n * Hs + ih + g.PH) * Ws + g.PW;
            for (int64_t iw = 0; iw < g.W; ++iw) {
              dst[iw] = src[iw * sw];
            }
          }
        }
      }
    });
  }
};

// Per-thread workspace: the block's three activations for a tile of panels of positions, in the
// panel layout of the pixel-tile path ([panel][channel][NR]).
template <typename scalar_t>
class ShiftedTileWorker {
 public:
  ShiftedTileWorker(const ShiftedConvInput<scalar_t>& input, const NinBlockGeometry& g,
                    const NinBlockPacked<scalar_t>& packed, int64_t max_panels)
      : input_(input), g_(g), packed_(packed), hidden0_(g.CC * max_panels * packed.kernel.nr),
        hidden1_(g.C1 * max_panels * packed.kernel.nr), hidden2_(g.C2 * max_panels * packed.kernel.nr) {}

  // The activations of positions [q0, q0 + panels NR).
  void compute(int64_t q0, int64_t panels) {
    const MicroKernel<scalar_t>& kernel = packed_.kernel;
    const PackedLayer<scalar_t>& conv = packed_.conv;
    const int64_t shifts = static_cast<int64_t>(input_.offsets.size()), nr = kernel.nr;
    for (int64_t m0 = 0; m0 < conv.M; m0 += kernel.mr) {
      for (int64_t p = 0; p < panels; ++p) {
        kernel.shifted_fn(g_.C0, shifts, input_.offsets.data(), conv.a.data() + m0 * conv.K,
                          input_.rows.get() + q0 + p * nr, input_.row_stride, conv.bias.data() + m0,
                          hidden0_.data() + (p * conv.M + m0) * nr, nr, std::min(kernel.mr, conv.M - m0));
      }
    }
    apply_packed_layer(kernel, packed_.pointwise1, hidden0_.data(), hidden1_.data(), panels);
    apply_packed_layer(kernel, packed_.pointwise2, hidden1_.data(), hidden2_.data(), panels);
  }

  // Activation `layer` (0: the conv's, 1: the first 1x1's, 2: the block's output) of the last tile.
  const scalar_t* activation(int layer) const {
    return (layer == 0 ? hidden0_ : layer == 1 ? hidden1_ : hidden2_).data();
  }

 private:
  const ShiftedConvInput<scalar_t>& input_;
  const NinBlockGeometry& g_;
  const NinBlockPacked<scalar_t>& packed_;
  std::vector<scalar_t> hidden0_, hidden1_, hidden2_;
};

// Runs `tile_fn(worker, q0, panels)` for every tile of positions, in parallel: each thread takes an
// equal range of panels, in tiles of about 1 MiB of activations. A position's values do not depend on
// its tile (each lane of a micro-kernel block is computed on its own), so tiles can follow the threads.
template <typename scalar_t, typename TileFn>
void for_each_shifted_tile(const ShiftedConvInput<scalar_t>& input, const NinBlockGeometry& g,
                           const NinBlockPacked<scalar_t>& packed, const TileFn& tile_fn) {
  const int64_t nr = packed.kernel.nr, panels = (input.positions + nr - 1) / nr;
  const int64_t lane_bytes = (g.CC + g.C1 + g.C2) * int64_t(sizeof(scalar_t));
  const int64_t tile_panels = std::max<int64_t>(1, (int64_t{1} << 20) / (lane_bytes * nr));
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    ShiftedTileWorker<scalar_t> worker(input, g, packed, std::min(tile_panels, end - begin));
    for (int64_t p0 = begin; p0 < end; p0 += tile_panels) {
      const int64_t count = std::min(tile_panels, end - p0);
      worker.compute(p0 * nr, count);
      tile_fn(worker, p0 * nr, count);
    }
  });
}

// Calls pixel_fn(j, n, oh, ow) for each lane j of positions [q0, q0 + lanes) that is an output pixel.
template <typename PixelFn>
void for_each_shifted_pixel(const NinBlockGeometry& g, int64_t q0, int64_t lanes, const PixelFn& pixel_fn) {
  const int64_t Ws = g.W + g.PW, plane = (g.H + g.PH) * Ws;
  for (int64_t j = 0; j < lanes; ++j) {
    const int64_t q = q0 + j, n = q / plane, oh = q % plane / Ws, ow = q % Ws;
    if (n < g.N && oh < g.OH && ow < g.OW) {
      pixel_fn(j, n, oh, ow);
    }
  }
}

// Runs the block by shifted products and writes the activations asked for ((layer, tensor) pairs,
// as run_nin_block) into their (N, C, OH, OW) tensors of any strides.
template <typename scalar_t>
void run_shifted_nin_block(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                           const std::vector<std::pair<int, at::Tensor*>>& outputs) {
  const ShiftedConvInput<scalar_t> input(x, g, packed.kernel.nr);
  const int64_t nr = packed.kernel.nr;
  for_each_shifted_tile<scalar_t>(input, g, packed, [&](const ShiftedTileWorker<scalar_t>& worker, int64_t q0,
                                                        int64_t panels) {
    for (const auto& [layer, tensor] : outputs) {
      const scalar_t* values = worker.activation(layer);
      const int64_t channels = tensor->size(1);
      scalar_t* data = tensor->template data_ptr<scalar_t>();
      const int64_t sn = tensor->stride(0), sc = tensor->stride(1), sh = tensor->stride(2), sw = tensor->stride(3);
      for_each_shifted_pixel(g, q0, panels * nr, [&](int64_t j, int64_t n, int64_t oh, int64_t ow) {
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
