// nin_ext::nin_block on the CPU: the whole block in one pass over tiles of output pixels.
#include <torch/library.h>

#include "cpu/nin_block_tiles_cpu.h"

namespace nin_ext {
namespace cpu {

at::Tensor nin_block_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                         const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const NinBlockGeometry g = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block");
  at::Tensor out = at::empty({g.N, g.C2, g.OH, g.OW},
                             x.options().memory_format(nin_block_output_memory_format(x, w, w1, w2, g)));
  if (g.N == 0) {
    return out;
  }
  const NinBlockMatrices m(g, w, b, w1, b1, w2, b2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "nin_block_cpu", [&] {
    const int64_t tile_pixels = nin_block_tile_pixels(g, sizeof(scalar_t));
    for_each_nin_block_tile<scalar_t>(
        x, g, m, tile_pixels, [&](NinBlockTileWorker<scalar_t>& worker, int64_t, int64_t n, int64_t p0, int64_t pt) {
          // out[n] as (C2 x OH*OW) is a strided matrix view in both NCHW and channels_last.
          worker.run(n, p0, pt, out.select(0, n).flatten(1).narrow(1, p0, pt));
        });
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("nin_block", &nin_ext::cpu::nin_block_cpu);
}
