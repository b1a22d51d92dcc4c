// nin_ext::nin_block_max_pool_with_hidden on the CPU: the forward of training for a NiN block and the
// max pool after it, as one autograd node (nin_ext/_registrations.py). It runs the two training ops,
// nin_block_with_hidden and max_pool2d_with_argmax, and returns what the backward needs: the pooled
// output, the block's hidden activations and the argmax. The block's full-size output is freed here:
// where it is positive is where the pooled output is, at the argmax (a ReLU output is at least 0),
// so the backward masks the pooled gradient, a quarter of the size, and no mask is kept.
#include <torch/library.h>

#include <tuple>

namespace nin_ext {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> nin_block_with_hidden_cpu(
    const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    c10::IntArrayRef stride, c10::IntArrayRef padding);

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_argmax_cpu(const at::Tensor& x, c10::IntArrayRef kernel_size,
                                                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                              bool ceil_mode);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nin_block_max_pool_with_hidden_cpu(
    const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef pool_kernel, c10::IntArrayRef pool_stride,
    c10::IntArrayRef pool_padding, bool ceil_mode) {
  auto [out, hidden0, hidden1] = nin_block_with_hidden_cpu(x, w, b, w1, b1, w2, b2, stride, padding);
  auto [pooled, argmax] = max_pool2d_with_argmax_cpu(out, pool_kernel, pool_stride, pool_padding, ceil_mode);
  return {pooled, hidden0, hidden1, argmax};
}

}  // namespace cpu
}  // namespace nin_ext

TORCH_LIBRARY_IMPL(nin_ext, CPU, m) {
  m.impl("nin_block_max_pool_with_hidden", &nin_ext::cpu::nin_block_max_pool_with_hidden_cpu);
}
