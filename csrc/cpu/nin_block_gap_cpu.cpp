// nin_ext::nin_block_gap on the CPU: the fused block with the global average pool folded in.
// Each tile's block output stays in the worker's buffer and is summed per channel; the per-tile
// sums are then added in tile order, so the result has the same bits on every run. Where the block
// runs by shifted products (nin_block_shifted_cpu.h), the parts are its bands of rows, or whole
// images. A block that runs by Winograd tiles writes its output (C2 channels: the 1x1 layers'
// activations stay in the tiles) and pools it with global_avg_pool: 2.4-2.8x as fast as pooling in
// place by pixel tiles on the blocks measured (NOTES v21).
#include <ATen/AccumulateType.h>
#include <torch/library.h>

#include "cpu/nin_block_run_cpu.h"
#include "cpu/tensor_cache_cpu.h"

namespace nin_ext {
namespace cpu {

at::Tensor global_avg_pool_cpu(const at::Tensor& x);

at::Tensor nin_block_gap_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                             const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                             const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride,
                             c10::IntArrayRef padding) {
  const NinBlockGeometry g = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block_gap");
  if (computes_in_float(x)) {
    return run_in_float(nin_block_gap_cpu, x, w, b, w1, b1, w2, b2, stride, padding);
  }
  at::Tensor out = empty_cached({g.N, g.C2}, x.options());
  if (g.N == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nin_block_gap_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const NinBlockCall<scalar_t> call = prepare_nin_block_call<scalar_t>(x, g, w, b, w1, b1, w2, b2);
    if (call.path == NinBlockPath::winograd) {
      at::Tensor block = empty_cached({g.N, g.C2, g.OH, g.OW}, x.options());
      run_nin_block<scalar_t>(call, {{2, &block}});
      out = global_avg_pool_cpu(block);
      return;
    }
    const NinBlockPacked<scalar_t>& packed = *call.weights;
    scalar_t* out_data = out.data_ptr<scalar_t>();
    const acc_t inv_pixels = acc_t(1) / static_cast<acc_t>(g.pixels());
    // Per image, the sum of each part of its pixels (a tile or a band), each in pixel order; the
    // parts are then added in order, so the bits depend on the shapes only.
    int64_t parts = 0;
    std::vector<acc_t> part_sums;
    if (call.path == NinBlockPath::shifted) {
      const ShiftedTiling tiling = shifted_tiling(call.g, sizeof(scalar_t), packed.kernel.nr);
      parts = tiling.bands;
      part_sums.assign(g.N * parts * g.C2, acc_t(0));
      for_each_shifted_tile<scalar_t>(call.x, call.g, call.phases, *call.packed, tiling,
                                      [&](const ShiftedTileWorker<scalar_t>& worker, const ShiftedTile& tile) {
        const scalar_t* values = worker.activation(2);
        const int64_t nr = packed.kernel.nr;
        worker.for_each_pixel(tile, [&](int64_t j, int64_t n, int64_t, int64_t) {
          const scalar_t* src = values + (j / nr * g.C2) * nr + j % nr;
          acc_t* sums = part_sums.data() + (n * parts + tile.band) * g.C2;
          for (int64_t c = 0; c < g.C2; ++c) {
            sums[c] += static_cast<acc_t>(src[c * nr]);
          }
        });
      });
    } else {
      const DirectTiling tiling = direct_tiling(g, sizeof(scalar_t), packed.kernel.nr);
      const int64_t P = g.pixels();
      // An image's part of a tile: the tile's index less that of the image's first tile.
      auto first_tile = [&](int64_t n) { return tiling.tile_of_pixel(n * P); };
      for (int64_t n = 0; n < g.N; ++n) {
        parts = std::max(parts, tiling.tile_of_pixel((n + 1) * P - 1) - first_tile(n) + 1);
      }
      part_sums.assign(g.N * parts * g.C2, acc_t(0));
      for_each_nin_block_tile<scalar_t>(
          x, g, packed, tiling,
          [&](NinBlockTileWorker<scalar_t>& worker, int64_t tile, int64_t n, int64_t p0, int64_t pt) {
            worker.compute(n, p0, pt);
            worker.for_each_row(2, [&](int64_t c, int64_t j0, const scalar_t* values, int64_t count) {
              // A panel's values by image: tile pixel j is pixel (p0 + j) % P of image n + (p0 + j) / P.
              for (int64_t j = 0; j < count;) {
                const int64_t q = p0 + j0 + j, run = std::min(count - j, P - q % P), image = n + q / P;
                acc_t& sum = part_sums[(image * parts + tile - first_tile(image)) * g.C2 + c];
                for (int64_t i = j; i < j + run; ++i) {
                  sum += static_cast<acc_t>(values[i]);
                }
                j += run;
              }
            });
          });
    }
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t c = 0; c < g.C2; ++c) {
        acc_t s = 0;
        for (int64_t t = 0; t < parts; ++t) {
          s += part_sums[(n * parts + t) * g.C2 + c];
        }
        out_data[n * g.C2 + c] = static_cast<scalar_t>(s * inv_pixels);
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("nin_block_gap", &nin_ext::cpu::nin_block_gap_cpu);
}
