// How the fused NiN block on the CPU cuts a batch into tiles, and which path (direct or Winograd of
// which output-block size) a call takes: from the shapes and the micro-kernel only, so that the
// result's bits do not depend on the thread count (the Winograd tiles' count aside, which changes no
// block's computation).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/broadcast_conv_cpu.h"
#include "cpu/microkernel.h"
#include "cpu/winograd_cpu.h"
#include "nin_block_checks.h"

namespace nin_ext {
namespace cpu {

// The most pixels a tile takes: its patch and activations take about 1 MiB (the L2 size of the
// machines we tune on); the batch gives at least 8 tiles to share among threads.
inline int64_t nin_block_tile_capacity(const NinBlockGeometry& g, int64_t element_size, int64_t nr) {
  // A pixel's share of the patch, or of the broadcast conv's input band and products.
  const int64_t conv_floats = direct_conv_by_broadcast(g, element_size) ? g.C0 * g.SH * g.SW + g.CC : g.K();
  const int64_t per_pixel_bytes = (conv_floats + g.CC + g.C1 + g.C2) * element_size;
  const int64_t cache_fit = (int64_t{1} << 20) / per_pixel_bytes;
  const int64_t eighth_of_batch = (g.N * g.pixels() + 7) / 8;
  return std::max<int64_t>(nr, std::min({cache_fit, eighth_of_batch, int64_t{1024}}));
}

// Pixels per tile of one image: whole panels of nr pixels, up to the capacity; an image splits into
// tiles of about equal size (the pooled blocks' bands of rows, nin_block_max_pool_cpu.cpp).
inline int64_t nin_block_tile_pixels(const NinBlockGeometry& g, int64_t element_size, int64_t nr) {
  const int64_t cap = nin_block_tile_capacity(g, element_size, nr);
  const int64_t tiles_per_image = (g.pixels() + cap - 1) / cap;
  const int64_t pixels = (g.pixels() + tiles_per_image - 1) / tiles_per_image;
  return (pixels + nr - 1) / nr * nr;
}

// A split of `units` consecutive work units (pixel panels, Winograd blocks) into `count` tiles of
// consecutive units: tile t holds units [t units / count, (t + 1) units / count), so that tile sizes
// differ by one unit at most.
struct TileSplit {
  int64_t units, count;

  int64_t first(int64_t tile) const { return tile * units / count; }
  int64_t size(int64_t tile) const { return first(tile + 1) - first(tile); }
  int64_t tile_of(int64_t unit) const { return ((unit + 1) * count - 1) / units; }
  int64_t largest() const { return count > 0 ? (units + count - 1) / count : 0; }
};

// How the direct path tiles a batch: its pixels in image-major order (image, output row, column), cut
// into panels of nr, and the panels split into tiles (TileSplit) of about the capacity, an even count
// of them. A tile crosses images where an image ends inside it, so only the batch's last panel has
// empty lanes. Tiles of one image's pixels, each rounded up to whole panels, left lanes empty in every
// tile of small maps: a 7x7 map took two tiles of 32 lanes (49 of 64 used), and tiles of 47 pixels on
// 28x28 maps took 64 lanes. Depends on the shapes and the micro-kernel only, so the result (the global
// average pool's sums per tile) does not depend on the thread count.
struct DirectTiling {
  int64_t nr, pixels;  // the panel width; the batch's pixels
  TileSplit panels;

  int64_t tiles() const { return panels.count; }
  int64_t tile_pixels() const { return panels.largest() * nr; }  // the most lanes a tile holds
  int64_t first_pixel(int64_t tile) const { return panels.first(tile) * nr; }
  int64_t pixels_in(int64_t tile) const {
    return std::min(panels.first(tile + 1) * nr, pixels) - first_pixel(tile);
  }
  int64_t tile_of_pixel(int64_t q) const { return panels.tile_of(q / nr); }  // q: a pixel of the batch
};

inline DirectTiling direct_tiling(const NinBlockGeometry& g, int64_t element_size, int64_t nr) {
  const int64_t pixels = g.N * g.pixels(), panels = (pixels + nr - 1) / nr;
  // The capacity in panels, rounded up.
  const int64_t capacity = (nin_block_tile_capacity(g, element_size, nr) + nr - 1) / nr;
  const int64_t tiles = (panels + capacity - 1) / capacity;
  return {nr, pixels, {panels, std::min(panels, tiles > 1 ? (tiles + 1) / 2 * 2 : tiles)}};
}

// The multiply-adds of running the block over the batch by pixel tiles or by Winograd tiles of
// m x m blocks, counting what the tiles pad (a tile's lanes past the last pixel or block, block pixels
// past the map's edge) and an even number of tiles: tiles are the unit of parallel work, and with two
// cores (the machines we tune on) an odd count idles one for a tile's time. Shapes only, so the
// choice, and with it the result's bits, does not depend on the thread count.
inline double direct_work(const NinBlockGeometry& g, const DirectTiling& tiling) {
  const int64_t tiles = tiling.tiles();
  return double((tiles + 1) / 2 * 2) * tiling.tile_pixels() * (g.K() * g.CC + g.CC * g.C1 + g.C1 * g.C2);
}

// The rows the micro-kernel computes for `rows` rows of products: whole MR-row panels, the last one
// rounded up to its row class (a third of MR, microkernel_register_blocked.h) where MR has thirds.
inline int64_t computed_rows(int64_t rows, int64_t mr) {
  const int64_t step = mr % 3 == 0 ? mr / 3 : mr;
  return rows / mr * mr + (rows % mr + step - 1) / step * step;
}

// The cost of a swapped product (microkernel.h) relative to a plain one: with 96 input channels (the
// seed's block 2) the swapped kernel took about 1.18x the time per multiply-add, with 256 about the
// same.
constexpr double kSwappedProductCost = 1.15;

// Whether a Winograd tile of `blocks` blocks into `channels` channels runs its products swapped, with
// the output channels in the vector lanes and the blocks as the rows (unless
// NIN_EXT_CPU_CHANNEL_LANES=0): where that computes fewer products, at kSwappedProductCost each. Plain,
// each pixel panel is NR lanes however few blocks the tile holds; swapped, the channels are whole
// NR-channel panels. At batch 1 the seed's block 3 has tiles of 18 blocks: 20 rows swapped against
// 32 lanes plain. A call decides for all its tiles by its largest, so that the threads' tiles take
// the same time (mixed, a tile of 24 blocks swapped and one of 25 plain left a thread idle for a
// seventh of the block). The path's choice (winograd_work) leaves this out, so the m and path a call
// takes do not depend on it.
template <typename scalar_t>
bool winograd_channel_lanes(const MicroKernel<scalar_t>& kernel, int64_t channels, int64_t blocks) {
  const int64_t nr = kernel.nr;
  const double plain = double((blocks + nr - 1) / nr * nr) * computed_rows(channels, kernel.mr);
  const double swapped =
      kSwappedProductCost * double(computed_rows(blocks, kernel.mr)) * double((channels + nr - 1) / nr * nr);
  return kernel.swapped_fn != nullptr && channel_lanes_mode().load() && swapped < plain;
}

inline double winograd_work(const NinBlockGeometry& g, int m, int64_t nr) {
  const int64_t alpha = m + g.KH - 1;
  const int64_t blocks = g.N * ((g.OH + m - 1) / m) * ((g.OW + m - 1) / m), tiles = (blocks + nr - 1) / nr;
  const double per_block = double(alpha * alpha * g.C0 * g.CC)             // the per-point products
                           + 2 * alpha * alpha * alpha * g.C0                 // the input transform
                           + (m * alpha * alpha + m * m * alpha) * g.CC       // the output transform
                           + double(m * m) * (g.CC * g.C1 + g.C1 * g.C2);  // the 1x1 layers
  return double((tiles + 1) / 2 * 2 * nr) * per_block;
}

// The output-block size m of the Winograd path for this call, 0 for the direct path: of the sizes
// accurate enough for the conv's channels (winograd_accurate), the one with the least work, unless
// NIN_EXT_CPU_WINOGRAD (or winograd_mode()) forces one (which F(m x m, r x r) must have: a forced
// m = 4 leaves a 7x7 conv direct).
// `winograd_weights`: whether the conv's weights allow the path (winograd_weight); nr: the
// micro-kernel's panel width.
inline int winograd_tile_size(const NinBlockGeometry& g, bool winograd_weights, int64_t nr, int64_t element_size) {
  const int mode = winograd_mode().load();
  if (!winograd_weights || !winograd_geometry(g) || mode == 0) {
    return 0;
  }
  if (mode > 0) {
    return winograd_size(mode, static_cast<int>(g.KH)) ? mode : 0;
  }
  int best = 0;
  double best_work = direct_work(g, direct_tiling(g, element_size, nr));
  for (int m = kWinogradMinTile; m <= kWinogradMaxTile; ++m) {
    if (!winograd_size(m, static_cast<int>(g.KH)) || !winograd_accurate(m, static_cast<int>(g.KH), g.C0)) {
      continue;
    }
    const double work = winograd_work(g, m, nr);
    if (work < best_work) {
      best = m;
      best_work = work;
    }
  }
  return best;
}

// The batch's m x m blocks in Winograd tiles (TileSplit) of at most NR consecutive blocks: as many
// tiles as the least multiple of the thread count that can hold them. A tile's products cost the
// same whatever its count of blocks, but its transforms and 1x1 layers shrink with it: the seed's block 2 at batch 16 is 26
// tiles of 30 or 31 blocks (the threads' halves 392 blocks each; 25 full tiles would leave one thread
// idle for a tile's time, and 25 of 31 and one of 9 gave them 403 and 381), at batch 32 50 tiles of
// 31 or 32 (49 of 32 before: 25 and 24). Each block is computed the same way in any tile, so the
// result does not change.
inline TileSplit winograd_tiles(int64_t blocks, int64_t nr) {
  const int64_t threads = at::get_num_threads(), full_tiles = (blocks + nr - 1) / nr;
  const int64_t tiles =
      full_tiles < threads ? std::min(threads, blocks) : (full_tiles + threads - 1) / threads * threads;
  return {blocks, tiles};
}

}  // namespace cpu
}  // namespace nin_ext
