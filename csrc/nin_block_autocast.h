// The autocast kernels of the NiN block ops: under torch.autocast a block runs in the autocast dtype,
// as the reference's convolutions do. Each calls the op again below its autocast dispatch key with
// the eligible tensors cast (floating point, not float64, on the autocast device: what autocast
// casts), so the casts are recorded by autograd and the backward returns gradients in the
// parameters' dtype. Registered for the CPU (csrc/cpu/nin_block_autocast_cpu.cpp) and CUDA
// (csrc/cuda/nin_ext_cuda.cpp).
#pragma once

#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

namespace nin_ext {

// The C++ signatures of the block ops' schemas (csrc/nin_ext.cpp): nin_block's arguments, and those
// followed by the max pool's.
template <class Ret>
using NinBlockSignature = Ret(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                              const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&,
                              const c10::optional<at::Tensor>&, c10::IntArrayRef, c10::IntArrayRef);
template <class Ret>
using NinBlockMaxPoolSignature = Ret(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                     const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&,
                                     const c10::optional<at::Tensor>&, c10::IntArrayRef, c10::IntArrayRef,
                                     c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, bool);

template <c10::DeviceType kDevice, const char* kOpName, class Signature>
struct AutocastOp;

template <c10::DeviceType kDevice, const char* kOpName, class Ret, class... Args>
struct AutocastOp<kDevice, kOpName, Ret(Args...)> {
  static Ret call(Args... args) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(
        at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kOpName, "").typed<Ret(Args...)>();
    const at::ScalarType to = at::autocast::get_autocast_dtype(kDevice);
    return op.call(at::autocast::cached_cast(to, args, kDevice)...);
  }
};

inline constexpr char kNinBlockOp[] = "nin_ext::nin_block";
inline constexpr char kNinBlockGapOp[] = "nin_ext::nin_block_gap";
inline constexpr char kNinBlockWithHiddenOp[] = "nin_ext::nin_block_with_hidden";
inline constexpr char kNinBlockMaxPoolOp[] = "nin_ext::nin_block_max_pool";
inline constexpr char kNinBlockMaxPoolWithHiddenOp[] = "nin_ext::nin_block_max_pool_with_hidden";

}  // namespace nin_ext
