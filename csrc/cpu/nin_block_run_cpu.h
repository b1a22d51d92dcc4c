// run_nin_block: the fused block over a whole batch, by whichever of the CPU paths the shapes call for.
#pragma once

#include <utility>
#include <vector>

#include "cpu/nin_block_shifted_cpu.h"
#include "cpu/nin_block_tiles_cpu.h"

namespace nin_ext {
namespace cpu {

// Runs the block over the whole batch and writes the activations asked for, (layer, tensor) pairs
// (layer 0: the conv's, 1: the first 1x1's, 2: the block's output), into their (N, C, OH, OW)
// tensors: by Winograd tiles when the packing and the geometry allow, else by shifted products where
// they pay (nin_block_shifted_cpu.h), else by pixel tiles.
template <typename scalar_t>
void run_nin_block(const at::Tensor& x, const NinBlockGeometry& g, const NinBlockPacked<scalar_t>& packed,
                   const std::vector<std::pair<int, at::Tensor*>>& outputs) {
  if (const int m = winograd_tile_size(g, packed.winograd_weights, packed.kernel.nr, sizeof(scalar_t))) {
    const PackedWinogradConv& winograd = packed.winograd(m);
    auto write_tile = [&](NinBlockTileWorker<scalar_t>& worker, int64_t b0, int64_t tb) {
      worker.compute_winograd(b0, tb);
      for (const auto& [layer, tensor] : outputs) {
        worker.write_winograd_rows(layer, *tensor);
      }
    };
    for_each_winograd_tile<scalar_t>(x, g, packed, winograd, write_tile);
    return;
  }
  if (shifted_conv_pays(g)) {
    run_shifted_nin_block<scalar_t>(x, g, packed, outputs);
    return;
  }
  const int64_t tile_pixels = nin_block_tile_pixels(g, sizeof(scalar_t), packed.kernel.nr);
  for_each_nin_block_tile<scalar_t>(
      x, g, packed, tile_pixels, [&](NinBlockTileWorker<scalar_t>& worker, int64_t, int64_t n, int64_t p0, int64_t pt) {
        worker.compute(n, p0, pt);
        for (const auto& [layer, tensor] : outputs) {
          worker.write_rows(layer, *tensor, n, p0);
        }
      });
}

}  // namespace cpu
}  // namespace nin_ext
