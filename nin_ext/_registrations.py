"""Fake (meta) kernels and autograd of the ops, so that they work under torch.compile: registered here
for the compiled torch.ops.nin_ext ops, and by nin_ext.triton for its torch.ops.nin_ext_triton ops.

The backward recomputes the block's hidden activations with ATen (the forward keeps none of them)
and runs ATen's convolution_backward through the three layers.
"""
import torch

from . import _extension
from ._nin_block_checks import (check_global_avg_pool_args, check_nin_block_args, conv_output_size,
                                nin_block_output_memory_format)
from .reference import nin_block_activations


def nin_block_fake(x, w, b, w1, b1, w2, b2, stride, padding):
    """Checks the arguments and returns an empty output of the right shape and memory format."""
    output_size = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block")
    return torch.empty((x.shape[0], w2.shape[0], *output_size), dtype=x.dtype, device=x.device,
                       memory_format=nin_block_output_memory_format(x, w, w1, w2, output_size))


def nin_block_gap_fake(x, w, b, w1, b1, w2, b2, stride, padding):
    check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block_gap")
    return x.new_empty((x.shape[0], w2.shape[0]))


def global_avg_pool_fake(x):
    check_global_avg_pool_args(x, "global_avg_pool")
    return x.new_empty((x.shape[0], x.shape[1]))


def _conv_backward(grad, input, weight, bias, stride, padding, needs):
    """(grad_input, grad_weight, grad_bias) of conv2d; entries not asked for in `needs` are None."""
    return torch.ops.aten.convolution_backward(
        grad, input, weight, None if bias is None else [weight.shape[0]], stride, padding, [1, 1], False, [0, 0],
        1, [needs[0], needs[1], bias is not None and needs[2]])


def _nin_block_grads(ctx, grad_block_out):
    """Gradients of every input from the gradient of the block's output (before any pooling)."""
    x, w, b, w1, b1, w2, b2 = ctx.saved_tensors
    h0, h1, out = nin_block_activations(x, w, b, w1, b1, w2, b2, ctx.stride, ctx.padding)
    needs = ctx.needs_input_grad
    need_h1 = any(needs[:5])
    need_h0 = any(needs[:3])
    g2 = grad_block_out * (out > 0)
    gh1, gw2, gb2 = _conv_backward(g2, h1, w2, b2, [1, 1], [0, 0], (need_h1, needs[5], needs[6]))
    gh0 = gw1 = gb1 = gx = gw = gb = None
    if need_h1:
        g1 = gh1 * (h1 > 0)
        gh0, gw1, gb1 = _conv_backward(g1, h0, w1, b1, [1, 1], [0, 0], (need_h0, needs[3], needs[4]))
    if need_h0:
        g0 = gh0 * (h0 > 0)
        gx, gw, gb = _conv_backward(g0, x, w, b, ctx.stride, ctx.padding, needs[:3])
    return gx, gw, gb, gw1, gb1, gw2, gb2, None, None


def _setup_nin_block_context(ctx, inputs, output):
    x, w, b, w1, b1, w2, b2, stride, padding = inputs
    ctx.stride, ctx.padding = list(stride), list(padding)
    ctx.save_for_backward(x, w, b, w1, b1, w2, b2)


def _nin_block_gap_backward(ctx, grad_out):
    oh, ow = conv_output_size(*ctx.saved_tensors[:2], ctx.stride, ctx.padding)
    grad_block_out = (grad_out / (oh * ow))[:, :, None, None].expand(-1, -1, oh, ow)
    return _nin_block_grads(ctx, grad_block_out)


def _setup_global_avg_pool_context(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape


def _global_avg_pool_backward(ctx, grad_out):
    n, c, h, w = ctx.input_shape
    return (grad_out / (h * w))[:, :, None, None].expand(n, c, h, w).contiguous()


def register_fakes_and_autograd(namespace):
    """Registers the fake kernels and autograd above for namespace::{nin_block, nin_block_gap,
    global_avg_pool}."""
    torch.library.register_fake(f"{namespace}::nin_block")(nin_block_fake)
    torch.library.register_fake(f"{namespace}::nin_block_gap")(nin_block_gap_fake)
    torch.library.register_fake(f"{namespace}::global_avg_pool")(global_avg_pool_fake)
    torch.library.register_autograd(f"{namespace}::nin_block", _nin_block_grads,
                                    setup_context=_setup_nin_block_context)
    torch.library.register_autograd(f"{namespace}::nin_block_gap", _nin_block_gap_backward,
                                    setup_context=_setup_nin_block_context)
    torch.library.register_autograd(f"{namespace}::global_avg_pool", _global_avg_pool_backward,
                                    setup_context=_setup_global_avg_pool_context)


if _extension.loaded:
    register_fakes_and_autograd("nin_ext")
