// nin_ext::nin_block on the CPU: the whole block in one pass over tiles of output pixels.
#include <torch/library.h>

#include "cpu/nin_block_packed_cache_cpu.h"

namespace nin_ext {
namespace cpu {

at::Tensor nin_block_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                         const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const NinBlockGeometry g = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block");
  if (computes_in_float(x)) {
    return run_in_float(nin_block_cpu, x, w, b, w1, b1, w2, b2, stride, padding);
  }
  at::Tensor out = at::empty({g.N, g.C2, g.OH, g.OW},
                             x.options().memory_format(nin_block_output_memory_format(x, w, w1, w2, g)));
  if (g.N == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nin_block_cpu", [&] {
    const auto packed_ptr = packed_nin_block<scalar_t>(w, b, w1, b1, w2, b2);
    const NinBlockPacked<scalar_t>& packed = *packed_ptr;
    const int64_t tile_pixels = nin_block_tile_pixels(g, sizeof(scalar_t), packed.kernel.nr);
    if (packed.uses_winograd(g)) {
      for_each_winograd_tile<scalar_t>(x, g, packed, [&](NinBlockTileWorker<scalar_t>& worker, int64_t b0, int64_t tb) {
        worker.compute_winograd(b0, tb);
        worker.write_winograd_rows(2, out, b0, tb);
      });
      return;
    }
    for_each_nin_block_tile<scalar_t>(
        x, g, packed, tile_pixels, [&](NinBlockTileWorker<scalar_t>& worker, int64_t, int64_t n, int64_t p0, int64_t pt) {
          worker.compute(n, p0, pt);
          worker.write_rows(2, out, n, p0);
        });
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("nin_block", &nin_ext::cpu::nin_block_cpu);
}
