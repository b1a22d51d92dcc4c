// nin_ext::nin_block on the CPU: the whole block in one pass over tiles of output pixels.
#include <torch/library.h>

#include "cpu/nin_block_run_cpu.h"
#include "cpu/tensor_cache_cpu.h"

namespace nin_ext {
namespace cpu {

at::Tensor nin_block_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                         const c10::optional<at::Tensor>& b2, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const NinBlockGeometry g = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block");
  if (computes_in_float(x)) {
    return run_in_float(nin_block_cpu, x, w, b, w1, b1, w2, b2, stride, padding);
  }
  at::Tensor out = empty_cached({g.N, g.C2, g.OH, g.OW},
                                x.options().memory_format(nin_block_output_memory_format(x, w, w1, w2, g)));
  if (g.N == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nin_block_cpu", [&] {
    run_nin_block<scalar_t>(prepare_nin_block_call<scalar_t>(x, g, w, b, w1, b1, w2, b2), {{2, &out}});
  });
  return out;
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("nin_block", &nin_ext::cpu::nin_block_cpu);
}
