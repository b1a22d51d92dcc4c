// The fused block with its spatial convolution as a sum of shifted products: no im2col gather.
//
// For a stride-1 conv, the input is copied once, zero-padded and channel-major over the batch: row ci
// holds the padded planes of all the images one after another, each plane Hs = H + PH rows of
// Ws = W + PW columns, its PH top rows and PW left columns zero. The bottom and right padding are not
// stored: they are the next plane's top rows and the next row's left columns (which is why the path
// needs PH < KH and PW < KW, as any useful padding is). Output pixel (n, oh, ow) is position
// q = (n Hs + oh) Ws + ow, and its conv reads row ci at q + ky Ws + kx: for a panel of NR consecutive
// output pixels, each (ci, ky, kx) is NR consecutive floats of a row, which the shifted micro-kernel
// (microkernel.h) reads in place. Where the KW - 1 - PW columns past each row's last pixel (the
// overhang) are a large enough share of a row, only the output pixels are computed, and a panel that
// crosses the end of an output row reads its NR floats in pieces; elsewhere the overhang's positions
// are computed and dropped (shifted_skips_overhang). The path pays where the gather costs more than
// the input copy, a long reduction (C0 KH KW) into few channels (CC), as in the seed's block 4 (384 ->
// 10 channels on 5x5 maps: no gathering of 3456 floats per pixel for 10 outputs). A strided conv runs
// this way in its polyphase form (conv_phase_forms_cpu.h), its copy reading x's phases: stride 1, no padding.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu/nin_block_tiles_cpu.h"
#include "cpu/conv_phase_forms_cpu.h"
#include "cpu/thread_scratch_cpu.h"

namespace nin_ext {
namespace cpu {

// What one gathered patch element costs in multiply-adds: measured on the seed's block 4 (batch 16,
// AVX-512), the direct path's gather took 0.29 ms for 1.4 M elements and its micro-kernel 0.07 ms for
// 21 M multiply-adds, about 60 each; half that keeps the choice on the safe side.
constexpr int64_t kGatherCostInMultiplyAdds = 32;

// Whether the shifted path computes the output pixels only, skipping the KW - 1 - PW positions past
// each row's last pixel, or every position of its rows, the overhang included. Skipping has vectors
// of a panel (NR / 2 lanes in the SIMD kernels) cross the rows' ends, and the conv reads such a vector
// in pieces, at about 35% more than a vector of consecutive pixels; a panel whose vectors are whole
// rows' pieces but not one run costs a few percent more too (benchmarks/NOTES.md, v22). Skipping pays
// where the overhang's share of a row is more than 5% and more than the pieces' cost on the share of
// vectors that cross (none where rows are whole vectors).
constexpr double kCrossingVectorCost = 0.35, kMinOverhangShare = 0.05;

inline double shifted_crossing_share(const NinBlockGeometry& g, int64_t nr) {
  const int64_t vector = nr / 2;
  return g.OW % vector == 0 ? 0.0 : std::min(1.0, double(vector) / double(g.OW));
}

inline bool shifted_skips_overhang(const NinBlockGeometry& g, int64_t nr) {
  const double overhang_share = double(g.KW - 1 - g.PW) / double(g.W + g.PW);
  return overhang_share > std::max(kMinOverhangShare, kCrossingVectorCost * shifted_crossing_share(g, nr));
}

// The work of the block over the batch, in multiply-adds, by shifted products (the lanes it computes,
// the crossing vectors' pieces, and the input copy) and by the gather path (the output pixels, and
// the im2col gather), each copied element at the same cost.
inline double shifted_path_work(const NinBlockGeometry& g, int64_t nr) {
  const double conv = double(g.K() * g.CC), pointwise = double(g.CC * g.C1 + g.C1 * g.C2);
  const double copy = double(g.H + g.PH) * double(g.W + g.PW) * double(kGatherCostInMultiplyAdds * g.C0);
  if (shifted_skips_overhang(g, nr)) {
    const double pieces = 1 + kCrossingVectorCost * shifted_crossing_share(g, nr);
    return double(g.N) * (double(g.pixels()) * (conv * pieces + pointwise) + copy);
  }
  return double(g.N) * (double(g.H + g.PH) * double(g.W + g.PW) * (conv + pointwise) + copy);
}

inline double gather_path_work(const NinBlockGeometry& g, int64_t nr, int64_t element_size) {
  const double pointwise = double(g.CC * g.C1 + g.C1 * g.C2);
  if (direct_conv_by_broadcast(g, element_size)) {
    // No gather; the output channels padded to the narrow broadcast kernel's NR / 2 (microkernel_select.cpp).
    const int64_t vector = std::max<int64_t>(1, nr / 2), channels = (g.CC + vector - 1) / vector * vector;
    const double copy = double(g.H) * double(g.W) * double(g.C0) * kGatherCostInMultiplyAdds;
    return double(g.N) * (double(g.pixels()) * (kBroadcastProductCost * double(g.K() * channels) + pointwise) + copy);
  }
  const double per_pixel = double(g.K() * g.CC) + pointwise;
  return double(g.N) * double(g.pixels()) * (per_pixel + double(kGatherCostInMultiplyAdds * g.K()));
}

// Whether the block runs its conv by shifted products: stride 1, padding below the kernel size, and
// less work than the gather path (a 1x1 conv's gather is a copy as the input copy here is, so it
// stays on the gather path). A strided block may run by shifted products in its polyphase form
// (nin_block_run_cpu.h). Shapes only, so the choice does not depend on the thread count.
inline bool shifted_conv_pays(const NinBlockGeometry& g, int64_t nr, int64_t element_size) {
  return g.SH == 1 && g.SW == 1 && g.PH < g.KH && g.PW < g.KW &&
         shifted_path_work(g, nr) < gather_path_work(g, nr, element_size);
}

// The reduction steps (input channel and shift pairs) of one chunk of the conv (ShiftedTileWorker).
constexpr int64_t kShiftedChunkSteps = 256;

// A tile of the shifted path: images [n0, n1), each from output row r0 to r1 (whole images: 0 and OH;
// a band of one image's rows: n1 = n0 + 1), and the band's index in its image (0 for whole images).
struct ShiftedTile {
  int64_t n0, n1, r0, r1, band;
};

// How the shifted path tiles a call: whole images, as many as fit about 1 MiB of input copy and
// activations, or bands of output rows of one image where an image does not fit, or where the batch
// would give fewer than 8 tiles to share among threads. A band holds about 8 panels of positions at
// least, so that splitting a small map does not leave most lanes of its panels empty, and an image's
// bands differ by a row at most. Shapes and the micro-kernel only, so results do not depend on the
// thread count.
struct ShiftedTiling {
  int64_t tile_images, band_rows, bands;  // bands per image: 1 for whole images
};

inline ShiftedTiling shifted_tiling(const NinBlockGeometry& g, int64_t element_size, int64_t nr) {
  const int64_t cache_bytes = int64_t{1} << 20, min_tiles = 8, min_band_panels = 8;
  const int64_t Ws = g.W + g.PW, row_bytes = Ws * (g.C0 + g.CC + g.C1 + g.C2) * element_size;
  const int64_t image_bytes = (g.H + g.PH) * row_bytes;
  const int64_t rows_for_split = (g.OH * g.N + min_tiles - 1) / min_tiles;
  const int64_t rows_for_panels = (min_band_panels * nr + Ws - 1) / Ws;
  const int64_t rows_for_cache = std::max<int64_t>(1, cache_bytes / row_bytes);
  const int64_t band_rows = std::min(g.OH, std::max(rows_for_panels, std::min(rows_for_cache, rows_for_split)));
  if (image_bytes <= cache_bytes && band_rows == g.OH) {
    return {cache_bytes / image_bytes, g.OH, 1};
  }
  const int64_t bands = (g.OH + band_rows - 1) / band_rows;
  return {1, (g.OH + bands - 1) / bands, bands};
}

// Per-thread workspace: the padded, channel-major copy of a tile's input (above; a band of rows r0 to
// r1 takes padded rows r0 to r1 + KH - 2, row r0 first) and the block's three activations in the
// panel layout of the pixel-tile path ([panel][channel][NR]), a lane per output pixel, or per
// position of the rows where the overhang is computed (shifted_skips_overhang). Each thread copies
// the input it computes, so the copy is read from its own cache. Each row ends with zeros for the
// last panel's lanes past the positions and for the largest shift (which covers the last plane's
// bottom padding), so that every read stays in the row.
template <typename scalar_t>
class ShiftedTileWorker {
 public:
  // `largest`: the largest tile the worker computes.
  ShiftedTileWorker(const at::Tensor& x, const NinBlockGeometry& g, const InputPhases& phases,
                    const NinBlockPacked<scalar_t>& packed, const ShiftedTile& largest)
      : x_(x), g_(g), phases_(phases), packed_(packed), plane_((g.H + g.PH) * (g.W + g.PW)),
        skips_overhang_(shifted_skips_overhang(g, packed.kernel.nr)),
        lanes_(panels_for(lanes(largest)) * packed.kernel.nr), halo_((g.KH - 1) * (g.W + g.PW) + g.KW - 1),
        row_stride_(span(largest) + packed.kernel.nr + halo_), lane_positions_(lanes_), rows_(g.C0 * row_stride_),
        hidden0_(g.CC * lanes_), hidden1_(g.C1 * lanes_), hidden2_(g.C2 * lanes_), writer_(packed.kernel) {
    for (int64_t ky = 0; ky < g.KH; ++ky) {
      for (int64_t kx = 0; kx < g.KW; ++kx) {
        offsets_.push_back(ky * (g.W + g.PW) + kx);  // in the conv weight's order
      }
    }
  }

  // The output pixels of a tile: rows r0 to r1 of each of its images.
  int64_t pixels(const ShiftedTile& t) const { return (t.n1 - t.n0) * (t.r1 - t.r0) * g_.OW; }

  // The positions a tile's pixels span in its input rows: whole planes for all its images but the
  // last, rows r0 to r1 of it.
  int64_t span(const ShiftedTile& t) const { return (t.n1 - t.n0 - 1) * plane_ + (t.r1 - t.r0) * (g_.W + g_.PW); }

  // The lanes a tile computes: its pixels, or the positions they span.
  int64_t lanes(const ShiftedTile& t) const { return skips_overhang_ ? pixels(t) : span(t); }

  // Where tile t's pixel j (pixels in output order) is: its image and row within the tile, and its
  // column.
  struct PixelPlace {
    int64_t image, row, column;
  };
  PixelPlace place(const ShiftedTile& t, int64_t j) const {
    const int64_t image_pixels = (t.r1 - t.r0) * g_.OW, within = j % image_pixels;
    return {j / image_pixels, within / g_.OW, within % g_.OW};
  }

  // The position in the rows of tile t's pixel j.
  int64_t position(const ShiftedTile& t, int64_t j) const {
    const PixelPlace p = place(t, j);
    return p.image * plane_ + p.row * (g_.W + g_.PW) + p.column;
  }

  // The lane of tile t's pixel j.
  int64_t lane(const ShiftedTile& t, int64_t j) const { return skips_overhang_ ? j : position(t, j); }

  // The panels of NR positions that `count` positions take.
  int64_t panels_for(int64_t count) const { return (count + packed_.kernel.nr - 1) / packed_.kernel.nr; }

  // The hidden activations of the tiles computed from now on are kept for a backward: the 1x1 layers
  // run on AMX tiles from kAmxMinReductionForBackward inputs (packed_layer_amx.h).
  void keep_hidden_for_backward() { amx_min_reduction_ = kAmxMinReductionForBackward; }

  // Copies the tile's input and computes the block's activations at its positions.
  void compute(const ShiftedTile& t) {
    const NinBlockGeometry& g = g_;
    const int64_t Ws = g.W + g.PW, count = lanes(t), panels = panels_for(count);
    // The input rows the tile reads: padded rows r0 to r1 + KH - 2, those of the input's rows among them.
    const int64_t ih0 = std::max<int64_t>(0, t.r0 - g.PH), ih1 = std::min(g.H, t.r1 + g.KH - 1 - g.PH);
    const scalar_t* xd = x_.const_data_ptr<scalar_t>();
    const int64_t sn = x_.stride(0), sc = x_.stride(1), sh = x_.stride(2), sw = x_.stride(3);
    const int64_t x_rows = x_.size(2), x_cols = x_.size(3);
    const InputPhases ph = phases_;
    const int64_t PH = g.PH, PW = g.PW, image_positions = plane_, fill = span(t) + packed_.kernel.nr + halo_;
    const int64_t column_stride = ph.SW * sw;
    for (int64_t ci = 0; ci < g.C0; ++ci) {
      scalar_t* row = rows_.data() + ci * row_stride_;
      std::fill(row, row + fill, scalar_t(0));  // what the tile reads
      // The channel's phase of x's channel (conv_phase_forms_cpu.h): its row ih and column iw are x's
      // row SH ih + row_offset and column SW iw + column_offset, columns [iw0, iw1) inside x.
      const int64_t row_offset = ph.row_offset(ci);
      const int64_t iw0 = ph.first_column_inside(ci, g.W), iw1 = ph.end_column_inside(ci, g.W, x_cols);
      const scalar_t* plane = xd + ph.x_channel(ci) * sc + (ph.SW * iw0 + ph.column_offset(ci)) * sw;
      for (int64_t n = t.n0; n < t.n1; ++n) {
        for (int64_t ih = ih0; ih < ih1; ++ih) {
          const int64_t xh = ph.SH * ih + row_offset;
          if (xh < 0 || xh >= x_rows) {
            continue;
          }
          const scalar_t* src = plane + n * sn + xh * sh;
          scalar_t* dst = row + (n - t.n0) * image_positions + (ih + PH - t.r0) * Ws + PW + iw0;
          if (column_stride == 1) {  // a loop the compiler vectorises: rows are short (5 on the seed's block 4)
            for (int64_t i = 0; i < iw1 - iw0; ++i) {
              dst[i] = src[i];
            }
            continue;
          }
          for (int64_t i = 0; i < iw1 - iw0; ++i) {
            dst[i] = src[i * column_stride];
          }
        }
      }
    }
    // The conv's reduction in chunks of input channels, each chunk's products added to the last's: a
    // chunk's weight panels stay in cache while they meet every panel of positions, and the sums
    // round as short ones (by one chunk of 23232 multiply-adds, an 11x11 conv over 192 channels had
    // 4x eager's error).
    const MicroKernel<scalar_t>& kernel = packed_.kernel;
    const PackedLayer<scalar_t>& conv = packed_.conv;
    const int64_t shifts = static_cast<int64_t>(offsets_.size()), nr = kernel.nr;
    // Each lane's position in the rows; the last panel's lanes past the tile's read on from its last.
    for (int64_t j = 0; j < panels * nr; ++j) {
      const int64_t i = std::min(j, count - 1);
      lane_positions_[j] = (skips_overhang_ ? position(t, i) : i) + (j - i);
    }
    const int64_t chunks = (g.C0 * shifts + kShiftedChunkSteps - 1) / kShiftedChunkSteps;
    const int64_t chunk_channels = (g.C0 + chunks - 1) / chunks;
    for (int64_t c0 = 0; c0 < g.C0; c0 += chunk_channels) {
      const int64_t channels = std::min(chunk_channels, g.C0 - c0);
      const bool last = c0 + channels == g.C0;
      for (int64_t m0 = 0; m0 < conv.M; m0 += kernel.mr) {
        const scalar_t* a = conv.a.data() + m0 * conv.K + c0 * shifts * kernel.mr;
        for (int64_t p = 0; p < panels; ++p) {
          kernel.shifted_fn(channels, shifts, offsets_.data(), a, rows_.data() + c0 * row_stride_, row_stride_,
                            lane_positions_.data() + p * nr, last ? conv.bias.data() + m0 : nullptr, c0 > 0,
                            hidden0_.data() + (p * conv.M + m0) * nr, nr, std::min(kernel.mr, conv.M - m0));
        }
      }
    }
    apply_packed_layer(kernel, packed_.pointwise1, hidden0_.data(), hidden1_.data(), panels, amx_min_reduction_);
    apply_packed_layer(kernel, packed_.pointwise2, hidden1_.data(), hidden2_.data(), panels, amx_min_reduction_);
  }

  // Activation `layer` (0: the conv's, 1: the first 1x1's, 2: the block's output) of the last tile.
  const scalar_t* activation(int layer) const {
    return (layer == 0 ? hidden0_ : layer == 1 ? hidden1_ : hidden2_).data();
  }

  // Writes activation `layer` of tile t (the last computed) into `out`, an (N, C, OH, OW) tensor of any
  // strides, by runs of pixels: a tile's pixels are in output order, so a run ends where a panel or
  // an output row does.
  void write_rows(int layer, at::Tensor& out, const ShiftedTile& t) {
    const int64_t channels = out.size(1), nr = packed_.kernel.nr;
    const int64_t sn = out.stride(0), sh = out.stride(2), sw = out.stride(3);
    output_runs_.clear();
    for (int64_t j = 0; j < pixels(t);) {
      const PixelPlace p = place(t, j);
      const int64_t l = lane(t, j), count = std::min(nr - l % nr, g_.OW - p.column);
      output_runs_.push_back({l / nr * channels * nr + l % nr, count,
                              (t.n0 + p.image) * sn + (t.r0 + p.row) * sh + p.column * sw});
      j += count;
    }
    writer_.write(output_runs_, activation(layer), channels, out.template data_ptr<scalar_t>(), out.stride(1), sw);
  }

  // Calls pixel_fn(lane, n, oh, ow) for each pixel of tile t (the last computed), in output order.
  template <typename PixelFn>
  void for_each_pixel(const ShiftedTile& t, const PixelFn& pixel_fn) const {
    for (int64_t j = 0; j < pixels(t); ++j) {
      const PixelPlace p = place(t, j);
      pixel_fn(lane(t, j), t.n0 + p.image, t.r0 + p.row, p.column);
    }
  }

 private:
  const at::Tensor& x_;
  const NinBlockGeometry& g_;
  const InputPhases phases_;  // where the input comes from: x, or x's phases for a polyphase form
  const NinBlockPacked<scalar_t>& packed_;
  // Positions per image; whether lanes are pixels or positions; lanes a tile's panels hold at most;
  // the largest shift; floats per channel row.
  const int64_t plane_;
  const bool skips_overhang_;
  const int64_t lanes_, halo_, row_stride_;
  std::vector<int64_t> offsets_;         // per (ky, kx): ky Ws + kx
  std::vector<int64_t> lane_positions_;  // per lane of the last tile's panels: its position in the rows
  ScratchBuffer<scalar_t> rows_, hidden0_, hidden1_, hidden2_;
  std::vector<CopyRun> output_runs_;  // the writes: the tile's pixel runs of channel 0
  TileWriter<scalar_t> writer_;
  int64_t amx_min_reduction_ = kAmxMinReduction;
};

// Runs `tile_fn(worker, tile)` for the tiles of `tiling` (shifted_tiling), in parallel: whole images
// in equal ranges per thread, or the (image, band) tiles in equal ranges. A position's values do not
// depend on its tile (each lane of a micro-kernel block is computed on its own), so tiles of whole
// images can follow the threads. `for_backward`: the workers keep their hidden activations for a backward.
template <typename scalar_t, typename TileFn>
void for_each_shifted_tile(const at::Tensor& x, const NinBlockGeometry& g, const InputPhases& phases,
                           const NinBlockPacked<scalar_t>& packed, const ShiftedTiling& tiling, const TileFn& tile_fn,
                           bool for_backward = false) {
  if (tiling.bands == 1) {
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      ShiftedTileWorker<scalar_t> worker(x, g, phases, packed,
                                         ShiftedTile{0, std::min(tiling.tile_images, end - begin), 0, g.OH, 0});
      if (for_backward) {
        worker.keep_hidden_for_backward();
      }
      for (int64_t n0 = begin; n0 < end; n0 += tiling.tile_images) {
        const ShiftedTile tile{n0, std::min(end, n0 + tiling.tile_images), 0, g.OH, 0};
        worker.compute(tile);
        tile_fn(worker, tile);
      }
    });
    return;
  }
  at::parallel_for(0, g.N * tiling.bands, 1, [&](int64_t begin, int64_t end) {
    ShiftedTileWorker<scalar_t> worker(x, g, phases, packed, ShiftedTile{0, 1, 0, tiling.band_rows, 0});
    if (for_backward) {
      worker.keep_hidden_for_backward();
    }
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / tiling.bands, band = i % tiling.bands, r0 = band * tiling.band_rows;
      const ShiftedTile tile{n, n + 1, r0, std::min(g.OH, r0 + tiling.band_rows), band};
      worker.compute(tile);
      tile_fn(worker, tile);
    }
  });
}

// Runs the block by shifted products and writes the activations asked for ((layer, tensor) pairs,
// as run_nin_block) into their (N, C, OH, OW) tensors of any strides.
template <typename scalar_t>
void run_shifted_nin_block(const at::Tensor& x, const NinBlockGeometry& g, const InputPhases& phases,
                           const NinBlockPacked<scalar_t>& packed,
                           const std::vector<std::pair<int, at::Tensor*>>& outputs) {
  const ShiftedTiling tiling = shifted_tiling(g, sizeof(scalar_t), packed.kernel.nr);
  for_each_shifted_tile<scalar_t>(x, g, phases, packed, tiling,
                                  [&](ShiftedTileWorker<scalar_t>& worker, const ShiftedTile& tile) {
    for (const auto& [layer, tensor] : outputs) {
      worker.write_rows(layer, *tensor, tile);
    }
  }, keeps_hidden_for_backward(outputs));
}

}  // namespace cpu
}  // namespace nin_ext
