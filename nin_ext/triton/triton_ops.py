"""The Triton kernels as torch ops: torch.ops.nin_ext_triton.{nin_block, nin_block_gap, global_avg_pool}.

`torch.library.triton_op` makes the kernels visible to torch.compile; the fake kernels and autograd
are nin_ext._registrations' (the same as the compiled ops'). The namespace is not `nin_ext`, which the
compiled extension owns, so these ops work when nin_ext._C is missing.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import _registrations
from .._nin_block_checks import conv_output_size
from .config import accumulator_dtype
from .global_avg_pool_triton import launch_spatial_mean
from .nin_block_triton import gap_groups, launch_nin_block

NAMESPACE = "nin_ext_triton"


def _computed_in_float32_on_cpu(impl, tensors, *rest):
    """impl(*tensors, *rest), where Triton's interpreter (CPU tensors) cannot run bf16: there the
    tensors go in as fp32 and the output is rounded to bf16, as the compiled CPU op does."""
    x = tensors[0]
    if x.dtype != torch.bfloat16 or x.device.type != "cpu":
        return impl(*tensors, *rest)
    upcast = [None if t is None else t.float() for t in tensors]
    return impl(*upcast, *rest).to(torch.bfloat16)


def _nin_block(x, w, b, w1, b1, w2, b2, stride, padding):
    out = _registrations.nin_block_fake(x, w, b, w1, b1, w2, b2, stride, padding)
    if out.numel() > 0:
        launch_nin_block(x, w, b, w1, b1, w2, b2, stride, padding, out)
    return out


def _nin_block_gap(x, w, b, w1, b1, w2, b2, stride, padding):
    out = _registrations.nin_block_gap_fake(x, w, b, w1, b1, w2, b2, stride, padding)
    if out.numel() == 0:
        return out
    output_size = conv_output_size(x, w, stride, padding)
    acc_dtype = accumulator_dtype(x.dtype)
    partials = torch.empty((x.shape[0], gap_groups(output_size), w2.shape[0]), dtype=acc_dtype, device=x.device)
    launch_nin_block(x, w, b, w1, b1, w2, b2, stride, padding, partials)
    # (N, groups, C2) seen as (N, C2, groups, 1): the mean kernel sums the groups in order.
    launch_spatial_mean(partials.transpose(1, 2).unsqueeze(3), out, acc_dtype,
                        count=output_size[0] * output_size[1])
    return out


def _global_avg_pool(x):
    out = _registrations.global_avg_pool_fake(x)
    if out.numel() > 0:
        launch_spatial_mean(x, out, accumulator_dtype(x.dtype))
    return out


@torch.library.triton_op(f"{NAMESPACE}::nin_block", mutates_args=())
def nin_block(x: Tensor, w: Tensor, b: Optional[Tensor], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
              b2: Optional[Tensor], stride: list[int], padding: list[int]) -> Tensor:
    return _computed_in_float32_on_cpu(_nin_block, (x, w, b, w1, b1, w2, b2), stride, padding)


@torch.library.triton_op(f"{NAMESPACE}::nin_block_gap", mutates_args=())
def nin_block_gap(x: Tensor, w: Tensor, b: Optional[Tensor], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                  b2: Optional[Tensor], stride: list[int], padding: list[int]) -> Tensor:
    return _computed_in_float32_on_cpu(_nin_block_gap, (x, w, b, w1, b1, w2, b2), stride, padding)


@torch.library.triton_op(f"{NAMESPACE}::global_avg_pool", mutates_args=())
def global_avg_pool(x: Tensor) -> Tensor:
    return _computed_in_float32_on_cpu(_global_avg_pool, (x,))


_registrations.register_fakes_and_autograd(NAMESPACE)

_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_block_args(args):
    """The block ops' arguments as torch.autocast hands them to the reference's convolutions: the
    floating-point tensors (fp64 excepted) in the autocast dtype when autocast is on for x's device."""
    device_type = args[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return args
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.dtype in _AUTOCAST_ELIGIBLE else a for a in args)
