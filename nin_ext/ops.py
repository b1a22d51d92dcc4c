"""The fused ops, dispatched to the selected backend (see nin_ext.backends).

x is (N, C, H, W); stride and padding are an int or a pair; the biases may be None.
"""
import torch
from torch.autograd import forward_ad
from torch.nn.modules.utils import _pair as _torch_pair

from . import _registrations  # noqa: F401  (fake kernels and autograd of torch.ops.nin_ext)
from . import backends, reference
from ._max_pool2d_checks import check_max_pool2d_args
from ._nin_block_checks import check_global_avg_pool_args, check_nin_block_args


def _pair(value):
    """torch's _pair, past its iterable check for the (h, w) tuples that the modules pass."""
    return value if type(value) is tuple and len(value) == 2 else _torch_pair(value)


def _run(op_name, check_args, reference_impl, args):
    """torch.ops.nin_ext.<op_name>(*args) on the compiled backends, torch.ops.nin_ext_triton.<op_name>
    on triton, or the reference implementation (also under the transforms of _runs_reference)."""
    backend = backends.resolve(args[0])
    if backend == "reference" or _runs_reference(args):
        check_args(*args, op_name)
        return reference_impl(*args)
    if backend == "triton":
        from .triton import triton_ops  # imports triton: only when the backend is used
        if op_name != "global_avg_pool":
            args = triton_ops.autocast_block_args(args)
        return getattr(triton_ops, op_name)(*args)
    return _call(getattr(torch.ops.nin_ext, op_name), args)


def _runs_reference(args):
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is active or a forward-mode AD tangent
    is on args: the fused ops have no batching rule and no forward derivative, and their autograd
    (torch.library.register_autograd) does not run under the transforms, so there the reference's
    ATen ops, which have all of these, run instead (per-sample gradients, jvp)."""
    if torch._C._are_functorch_transforms_active():
        return True
    return forward_ad._current_level >= 0 and any(
        isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None for t in args)


def _needs_grad(args):
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in args)


def _call(op, args):
    """op(*args). Where no gradient is needed, past the op's autograd kernel: that kernel is Python
    (torch.library.register_autograd) and cost as much as a small call's own work (global_avg_pool of
    a 2x10x5x5 map: 7.4 us through it, 3.7 past it, ATen's mean 3.7). torch.compile traces the op as
    it is."""
    if _needs_grad(args) or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def nin_block(x, w, b, w1, b1, w2, b2, stride=1, padding=0):
    """relu(conv1x1(relu(conv1x1(relu(conv2d(x, w, b, stride, padding)), w1, b1)), w2, b2)).

    When a gradient will be needed, the cpu backend runs nin_block_with_hidden, which also returns
    the hidden activations for the backward (eager's memory, no recomputation)."""
    args = (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding))
    if _needs_grad(args) and backends.resolve(x) == "cpu" and not _runs_reference(args):
        return _call(torch.ops.nin_ext.nin_block_with_hidden, args)[0]
    return _run("nin_block", check_nin_block_args, reference.nin_block_reference, args)


def nin_block_gap(x, w, b, w1, b1, w2, b2, stride=1, padding=0):
    """nin_block followed by the mean over the spatial dimensions: (N, C2)."""
    return _run("nin_block_gap", check_nin_block_args, reference.nin_block_gap_reference,
                (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding)))


def global_avg_pool(x):
    """The mean of x over its spatial dimensions: (N, C)."""
    return _run("global_avg_pool", check_global_avg_pool_args, reference.global_avg_pool_reference, (x,))


def nin_block_max_pool(x, w, b, w1, b1, w2, b2, stride, padding, pool_kernel, pool_stride=None, pool_padding=0,
                       ceil_mode=False):
    """max_pool2d(nin_block(x, ...), pool_kernel, pool_stride, pool_padding, ceil_mode): a NiN block and
    the max pool after it. The cpu backend runs them as one op: when no gradient is needed,
    nin_block_max_pool (the block's output never goes to memory at full size); otherwise
    nin_block_max_pool_with_hidden, one autograd node whose backward masks the pooled gradient, not
    the block's. On the other backends the two ops run one after the other."""
    block_args = (x, w, b, w1, b1, w2, b2, _pair(stride), _pair(padding))
    pool_kernel = _pair(pool_kernel)
    pool_args = (pool_kernel, pool_kernel if pool_stride is None else _pair(pool_stride), _pair(pool_padding),
                 bool(ceil_mode))
    if backends.resolve(x) == "cpu" and not _runs_reference(block_args):
        if _needs_grad(block_args):
            return _call(torch.ops.nin_ext.nin_block_max_pool_with_hidden, block_args + pool_args)[0]
        return _call(torch.ops.nin_ext.nin_block_max_pool, block_args + pool_args)
    return max_pool2d(nin_block(*block_args), *pool_args)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """torch's max_pool2d with dilation 1 (stride defaults to kernel_size). Only the cpu backend has
    a kernel of its own; the others run ATen's max_pool2d, after the same argument checks."""
    kernel_size = _pair(kernel_size)
    args = (x, kernel_size, kernel_size if stride is None else _pair(stride), _pair(padding), bool(ceil_mode))
    if backends.resolve(x) == "cpu" and not _runs_reference(args):
        if _needs_grad(args):  # keep the int32 argmax for the backward, not the input
            return _call(torch.ops.nin_ext.max_pool2d_with_argmax, args)[0]
        return _call(torch.ops.nin_ext.max_pool2d, args)
    check_max_pool2d_args(*args, "max_pool2d")
    return reference.max_pool2d_reference(*args)
