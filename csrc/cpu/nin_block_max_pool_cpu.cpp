// nin_ext::nin_block_max_pool on the CPU: nin_block followed by max_pool2d (a NiN block and the pool
// after it) without the block's output ever going to memory at full size.
//
// Direct path: a task is a band of the pool's output rows of one image. It computes the block's
// output rows that those windows read, a few whole rows at a time (the fused block's pixel tiles),
// into a per-thread buffer that stays in cache, and pools them from there. A row that two bands'
// windows share is computed by both, one row per band boundary.
// Winograd path: each thread runs a contiguous range of the block's Winograd tiles (which span
// images), writing each image's output into a per-thread image buffer, and pools the image as soon
// as its last tile is done; the few images whose tiles two threads share are written to a full-size
// buffer and pooled at the end.
// Every value is computed as nin_block computes it, so the result equals
// max_pool2d(nin_block(...)) to the bit. A channels_last output, and a block that runs by shifted
// products (nin_block_shifted_cpu.h), run the two ops one after the other.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/max_pool2d_plane.h"
#include "cpu/nin_block_run_cpu.h"
#include "cpu/parallel_tasks_cpu.h"
#include "cpu/tensor_cache_cpu.h"
#include "max_pool2d_checks.h"

namespace nin_ext {
namespace cpu {

at::Tensor max_pool2d_cpu(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, bool ceil_mode);

namespace {

// Pools the block's output (geometry g) into `out` (N, C2, pool.OH, pool.OW), contiguous, band by band.
template <typename scalar_t>
void pool_block_by_bands(const at::Tensor& x, const NinBlockGeometry& g, const MaxPool2dGeometry& pool,
                         const NinBlockPacked<scalar_t>& packed, at::Tensor& out) {
  const int64_t nr = packed.kernel.nr;
  const int64_t rows_per_step = std::max<int64_t>(1, nin_block_tile_pixels(g, sizeof(scalar_t), nr) / g.OW);
  const int64_t step_pixels = (rows_per_step * g.OW + nr - 1) / nr * nr;
  // Bands per image: the count that gives the busiest thread the fewest block rows to compute (each
  // band boundary costs a row computed twice; too few bands leave threads idle).
  const int64_t threads = at::get_num_threads();
  int64_t band_height = pool.OH, best_rows = -1;
  for (int64_t wanted = 1; wanted <= std::min<int64_t>(pool.OH, 16); ++wanted) {
    const int64_t height = (pool.OH + wanted - 1) / wanted, count = (pool.OH + height - 1) / height;
    const int64_t rows = (g.N * count + threads - 1) / threads * std::min(g.OH, (height - 1) * pool.SH + pool.KH);
    if (best_rows < 0 || rows < best_rows) {
      best_rows = rows;
      band_height = height;
    }
  }
  const int64_t bands = (pool.OH + band_height - 1) / band_height;
  const int64_t max_rows = std::min(g.OH, (band_height - 1) * pool.SH + pool.KH);
  const auto pool_plane = max_pool2d_plane_kernel<scalar_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  parallel_shared_tasks(g.N * bands, [&](SharedTasks& tasks) {
    NinBlockTileWorker<scalar_t> worker(x, g, packed, step_pixels);
    at::Tensor rows = empty_cached({1, g.C2, max_rows, g.OW}, x.options());  // the band's block output
    std::vector<scalar_t> row_scratch(g.OW);
    for (int64_t task; (task = tasks.take()) >= 0;) {
      const int64_t n = task / bands, q0 = task % bands * band_height, q1 = std::min(pool.OH, q0 + band_height);
      const int64_t r_begin = std::max<int64_t>(0, q0 * pool.SH - pool.PH);
      const int64_t r_end = std::min(g.OH, (q1 - 1) * pool.SH - pool.PH + pool.KH);
      for (int64_t r0 = r_begin; r0 < r_end; r0 += rows_per_step) {
        worker.compute(n, r0 * g.OW, std::min(rows_per_step, r_end - r0) * g.OW);
        worker.write_rows(2, rows, 0, (r0 - r_begin) * g.OW);
      }
      // The band's windows over its rows: local row 0 is block row r_begin.
      MaxPool2dGeometry local = pool;
      local.H = r_end - r_begin;
      local.OH = q1 - q0;
      local.PH = r_begin - (q0 * pool.SH - pool.PH);
      const scalar_t* rows_data = rows.const_data_ptr<scalar_t>();
      for (int64_t c = 0; c < g.C2; ++c) {
        pool_plane(rows_data + c * max_rows * g.OW, out_data + ((n * g.C2 + c) * pool.OH + q0) * pool.OW, local,
                   row_scratch.data());
      }
    }
  });
}

// The block's output cut to the rows and columns that the pool's windows read, [0, OH') x [0, OW'),
// and the pool over that cut: trailing rows and columns that no window reaches are never computed
// (the seed's pools read 53 of block 1's 54 rows and columns, 25 of 26 and 11 of 12: a sixth of block
// 3's pixels). Each value computed is computed as before (pixels, and Winograd blocks, are lanes that
// do not depend on one another), so the results stay equal to max_pool2d(nin_block(...)).
void cut_to_pool_reads(NinBlockGeometry& g, MaxPool2dGeometry& pool) {
  g.OH = pool.H = std::min(g.OH, (pool.OH - 1) * pool.SH - pool.PH + pool.KH);
  g.OW = pool.W = std::min(g.OW, (pool.OW - 1) * pool.SW - pool.PW + pool.KW);
}

template <typename scalar_t>
void pool_block_by_images(const at::Tensor& x, const NinBlockGeometry& g, const MaxPool2dGeometry& pool,
                          const NinBlockPacked<scalar_t>& packed, const PackedWinogradConv& winograd,
                          InputPhases phases, at::Tensor& out) {
  const int m = winograd.transform.m;
  const int64_t nr = packed.kernel.nr;
  const int64_t blocks_per_image = ((g.OH + m - 1) / m) * ((g.OW + m - 1) / m), blocks = g.N * blocks_per_image;
  const TileSplit tiles = winograd_tiles(blocks, nr);
  const bool channel_lanes = winograd_channel_lanes(packed.kernel, g.CC, tiles.largest());
  const int64_t ranges = std::min<int64_t>(tiles.count, at::get_num_threads());
  auto range_of_tile = [&](int64_t tile) { return tile * ranges / tiles.count; };  // ranges of near-equal size
  auto first_tile = [&](int64_t range) { return (range * tiles.count + ranges - 1) / ranges; };
  auto range_of_block = [&](int64_t block) { return range_of_tile(tiles.tile_of(block)); };
  // Images whose blocks two ranges share, and where they go in `shared`.
  std::vector<int64_t> shared_index(g.N, -1);
  int64_t shared_count = 0;
  for (int64_t n = 0; n < g.N; ++n) {
    if (range_of_block(n * blocks_per_image) != range_of_block((n + 1) * blocks_per_image - 1)) {
      shared_index[n] = shared_count++;
    }
  }
  at::Tensor shared = empty_cached({shared_count, g.C2, g.OH, g.OW}, x.options());
  const auto pool_plane = max_pool2d_plane_kernel<scalar_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  // Channel c of image n, whose block output is at `image`.
  auto pool_channel = [&](const scalar_t* image, int64_t n, int64_t c, scalar_t* row_scratch) {
    pool_plane(image + c * g.OH * g.OW, out_data + (n * g.C2 + c) * pool.OH * pool.OW, pool, row_scratch);
  };
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    NinBlockTileWorker<scalar_t> worker(x, g, packed, m * m * nr, &winograd, phases, channel_lanes);
    std::vector<scalar_t> row_scratch(g.OW);
    std::vector<std::pair<int64_t, at::Tensor>> open_images;  // images of the range not pooled yet
    std::vector<at::Tensor> free_buffers;
    for (int64_t range = begin; range < end; ++range) {
      for (int64_t tile = first_tile(range); tile < first_tile(range + 1); ++tile) {
        const int64_t b0 = tiles.first(tile), tb = tiles.size(tile);
        worker.compute_winograd(b0, tb);
        for (int64_t n = b0 / blocks_per_image; n <= (b0 + tb - 1) / blocks_per_image; ++n) {
          if (shared_index[n] >= 0) {
            at::Tensor image = shared.narrow(0, shared_index[n], 1);
            worker.write_winograd_rows(2, image, n);
            continue;
          }
          auto it = std::find_if(open_images.begin(), open_images.end(), [&](const auto& e) { return e.first == n; });
          if (it == open_images.end()) {
            at::Tensor buffer = free_buffers.empty() ? empty_cached({1, g.C2, g.OH, g.OW}, x.options()) : free_buffers.back();
            if (!free_buffers.empty()) {
              free_buffers.pop_back();
            }
            open_images.push_back({n, buffer});
            it = open_images.end() - 1;
          }
          worker.write_winograd_rows(2, it->second, n);
          if ((n + 1) * blocks_per_image <= b0 + tb) {  // the image's last block is in this tile
            for (int64_t c = 0; c < g.C2; ++c) {
              pool_channel(it->second.template const_data_ptr<scalar_t>(), n, c, row_scratch.data());
            }
            free_buffers.push_back(it->second);
            open_images.erase(it);
          }
        }
      }
    }
  });
  // The shared images by channel planes, in parallel: at batch 1 the only image is shared.
  std::vector<int64_t> shared_images;
  for (int64_t n = 0; n < g.N; ++n) {
    if (shared_index[n] >= 0) {
      shared_images.push_back(n);
    }
  }
  at::parallel_for(0, shared_count * g.C2, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> row_scratch(g.OW);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = shared_images[plane / g.C2];
      pool_channel(shared.template const_data_ptr<scalar_t>() + shared_index[n] * g.C2 * g.OH * g.OW, n,
                   plane % g.C2, row_scratch.data());
    }
  });
}

}  // namespace

at::Tensor nin_block_max_pool_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                                  const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                  const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef pool_kernel,
                                  c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode) {
  const NinBlockGeometry g = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block_max_pool");
  const MaxPool2dGeometry pool =
      check_max_pool2d_args(at::empty({g.N, g.C2, g.OH, g.OW}, x.options().device(at::kMeta)), pool_kernel,
                            pool_stride, pool_padding, ceil_mode, "nin_block_max_pool");
  if (computes_in_float(x)) {
    auto op = [&](const at::Tensor& x_, const at::Tensor& w_, const c10::optional<at::Tensor>& b_,
                  const at::Tensor& w1_, const c10::optional<at::Tensor>& b1_, const at::Tensor& w2_,
                  const c10::optional<at::Tensor>& b2_, c10::IntArrayRef stride_, c10::IntArrayRef padding_) {
      return nin_block_max_pool_cpu(x_, w_, b_, w1_, b1_, w2_, b2_, stride_, padding_, pool_kernel, pool_stride,
                                    pool_padding, ceil_mode);
    };
    return run_in_float(op, x, w, b, w1, b1, w2, b2, stride, padding);
  }
  const at::MemoryFormat format = nin_block_output_memory_format(x, w, w1, w2, g);
  at::Tensor out = empty_cached({g.N, g.C2, pool.OH, pool.OW}, x.options().memory_format(format));
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nin_block_max_pool_cpu", [&] {
    const NinBlockCall<scalar_t> call = prepare_nin_block_call<scalar_t>(x, g, w, b, w1, b1, w2, b2);
    const NinBlockPacked<scalar_t>& packed = *call.packed;
    // The path and its sizes are chosen for the whole block (prepare_nin_block_call), then run on the cut.
    NinBlockGeometry cut = call.g;
    MaxPool2dGeometry cut_pool = pool;
    cut_to_pool_reads(cut, cut_pool);
    if (format == at::MemoryFormat::Contiguous && call.path == NinBlockPath::winograd) {
      pool_block_by_images<scalar_t>(call.x, cut, cut_pool, packed, packed.winograd(call.winograd_tile), call.phases,
                                     out);
      return;
    }
    if (format == at::MemoryFormat::Contiguous && call.path == NinBlockPath::direct) {
      pool_block_by_bands<scalar_t>(call.x, cut, cut_pool, packed, out);
      return;
    }
    at::Tensor block = empty_cached({g.N, g.C2, g.OH, g.OW}, x.options().memory_format(format));
    run_nin_block<scalar_t>(call, {{2, &block}});
    out = max_pool2d_cpu(block, pool_kernel, pool_stride, pool_padding, ceil_mode);
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("nin_block_max_pool", &nin_ext::cpu::nin_block_max_pool_cpu);
}
