"""The fused ops, dispatched to the selected backend (see nin_ext.backends).

x is (N, C, H, W); stride and padding are an int or a pair; the biases may be None.
"""
import torch
from torch.nn.modules.utils import _pair

from . import _registrations  # noqa: F401  (fake kernels and autograd of torch.ops.nin_ext)
from . import backends, reference
from ._nin_block_checks import check_global_avg_pool_args, check_nin_block_args


def nin_block(x, w, b, w1, b1, w2, b2, stride=1, padding=0):
    """relu(conv1x1(relu(conv1x1(relu(conv2d(x, w, b, stride, padding)), w1, b1)), w2, b2))."""
    args = (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding))
    if backends.resolve(x) == "reference":
        check_nin_block_args(*args, "nin_block")
        return reference.nin_block_reference(*args)
    return torch.ops.nin_ext.nin_block(*args)


def nin_block_gap(x, w, b, w1, b1, w2, b2, stride=1, padding=0):
    """nin_block followed by the mean over the spatial dimensions: (N, C2)."""
    args = (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding))
    if backends.resolve(x) == "reference":
        check_nin_block_args(*args, "nin_block_gap")
        return reference.nin_block_gap_reference(*args)
    return torch.ops.nin_ext.nin_block_gap(*args)


def global_avg_pool(x):
    """The mean of x over its spatial dimensions: (N, C)."""
    if backends.resolve(x) == "reference":
        check_global_avg_pool_args(x, "global_avg_pool")
        return reference.global_avg_pool_reference(x)
    return torch.ops.nin_ext.global_avg_pool(x)
