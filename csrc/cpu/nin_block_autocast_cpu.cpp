// The AutocastCPU registrations of the block ops (csrc/nin_block_autocast.h): under
// torch.autocast("cpu") a block, and a block with its pool, run in the autocast dtype (bfloat16 or
// float16), as the reference's convolutions do; the pools have no autocast kernel, as ATen's.
#include <torch/library.h>

#include <tuple>

#include "nin_block_autocast.h"

namespace {

constexpr auto kCpu = c10::DeviceType::CPU;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

}  // namespace

TORCH_LIBRARY_IMPL(nin_ext, AutocastCPU, m) {
  using namespace nin_ext;
  m.impl("nin_block", &AutocastOp<kCpu, kNinBlockOp, NinBlockSignature<at::Tensor>>::call);
  m.impl("nin_block_gap", &AutocastOp<kCpu, kNinBlockGapOp, NinBlockSignature<at::Tensor>>::call);
  m.impl("nin_block_with_hidden", &AutocastOp<kCpu, kNinBlockWithHiddenOp, NinBlockSignature<Tensor3>>::call);
  m.impl("nin_block_max_pool", &AutocastOp<kCpu, kNinBlockMaxPoolOp, NinBlockMaxPoolSignature<at::Tensor>>::call);
  m.impl("nin_block_max_pool_with_hidden",
         &AutocastOp<kCpu, kNinBlockMaxPoolWithHiddenOp, NinBlockMaxPoolSignature<Tensor4>>::call);
}
