"""The fused ops, dispatched to the selected backend (see nin_ext.backends).

x is (N, C, H, W); stride and padding are an int or a pair; the biases may be None.
"""
import torch
from torch.nn.modules.utils import _pair

from . import _registrations  # noqa: F401  (fake kernels and autograd of torch.ops.nin_ext)
from . import backends, reference
from ._nin_block_checks import check_global_avg_pool_args, check_nin_block_args


def _run(op_name, check_args, reference_impl, args):
    """torch.ops.nin_ext.<op_name>(*args) on the compiled backends, torch.ops.nin_ext_triton.<op_name>
    on triton, or the reference implementation."""
    backend = backends.resolve(args[0])
    if backend == "reference":
        check_args(*args, op_name)
        return reference_impl(*args)
    if backend == "triton":
        from .triton import triton_ops  # imports triton: only when the backend is used
        if op_name != "global_avg_pool":
            args = triton_ops.autocast_block_args(args)
        return getattr(triton_ops, op_name)(*args)
    return getattr(torch.ops.nin_ext, op_name)(*args)


def nin_block(x, w, b, w1, b1, w2, b2, stride=1, padding=0):
    """relu(conv1x1(relu(conv1x1(relu(conv2d(x, w, b, stride, padding)), w1, b1)), w2, b2))."""
    return _run("nin_block", check_nin_block_args, reference.nin_block_reference,
                (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding)))


def nin_block_gap(x, w, b, w1, b1, w2, b2, stride=1, padding=0):
    """nin_block followed by the mean over the spatial dimensions: (N, C2)."""
    return _run("nin_block_gap", check_nin_block_args, reference.nin_block_gap_reference,
                (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding)))


def global_avg_pool(x):
    """The mean of x over its spatial dimensions: (N, C)."""
    return _run("global_avg_pool", check_global_avg_pool_args, reference.global_avg_pool_reference, (x,))
