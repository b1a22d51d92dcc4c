"""Fake (meta) kernels and autograd of the ops, so that they work under torch.compile: registered here
for the compiled torch.ops.nin_ext ops, and by nin_ext.triton for its torch.ops.nin_ext_triton ops.

nin_block's backward recomputes the block's hidden activations with ATen (the forward keeps none of
them); nin_block_with_hidden, the training forward of the CPU backend, returns them, so its backward
needs no recomputation. Both run ATen's convolution_backward for the spatial conv (on the CPU in
float32, the weight gradient by nin_ext's conv2d_weight_grad) and, on the CPU in
float32 and float64, matrix products for the two 1x1 layers. Those backwards are not differentiable
themselves (in-place and out= ops, nin_ext's own kernels): with create_graph=True (a gradient
penalty, double backward) every backward instead differentiates the reference's ATen ops.
"""
import torch
from torch._prims_common import suggest_memory_format

from . import _extension
from ._max_pool2d_checks import check_max_pool2d_args
from ._nin_block_checks import (check_global_avg_pool_args, check_nin_block_args, conv_output_size,
                                nin_block_output_memory_format)
from .reference import (max_pool2d_reference, nin_block_activations, nin_block_gap_reference,
                        nin_block_reference)


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


def _max_pool2d_fake(x, kernel_size, stride, padding, ceil_mode):
    output_size = check_max_pool2d_args(x, kernel_size, stride, padding, ceil_mode, "max_pool2d")
    return torch.empty((x.shape[0], x.shape[1], *output_size), dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


def _conv_backward(grad, input, weight, bias, stride, padding, needs):
    """(grad_input, grad_weight, grad_bias) of conv2d; entries not asked for in `needs` are None. The
    bias gradient is a sum of its own: asked for it, ATen's CPU backward computes the weight's too,
    needed or not (block 2's input gradient 56 ms alone, 115 with the bias's; benchmarks/NOTES.md v30)."""
    gx = gw = None
    if needs[0] or needs[1]:
        gx, gw, _ = torch.ops.aten.convolution_backward(grad, input, weight, None, stride, padding, [1, 1], False,
                                                        [0, 0], 1, [needs[0], needs[1], False])
    return gx, gw, _bias_grad(grad, bias, needs)


def _bias_grad(grad, bias, needs):
    """The bias gradient of a conv (None when there is no bias or it is not asked for)."""
    return grad.sum((0, 2, 3)) if bias is not None and needs[2] else None


def _spatial_conv_backward(grad, input, weight, bias, stride, padding, needs):
    """_conv_backward of a block's spatial conv. On the CPU, a float32 conv gets its weight gradient from
    conv2d_weight_grad: by Winograd tiles where they apply (benchmarks/NOTES.md v30), as one im2col
    product for few input channels (v46)."""
    if not (needs[1] and _extension.loaded and grad.device.type == "cpu" and grad.dtype == torch.float32):
        return _conv_backward(grad, input, weight, bias, stride, padding, needs)
    # the weight gradient first: its buffers (17.8 MB for block 2) are freed before the input gradient exists
    gw = torch.ops.nin_ext.conv2d_weight_grad(grad, input, list(weight.shape[2:]), list(stride), list(padding))
    gx, _, gb = _conv_backward(grad, input, weight, bias, stride, padding, (needs[0], False, needs[2]))
    return gx, gw, gb


def _conv2d_weight_grad_fake(grad_out, x, kernel_size, stride, padding):
    return x.new_empty((grad_out.shape[1], x.shape[1], *kernel_size))


def _pointwise_conv_backward(grad, input, weight, bias, needs, grad_input_out=None):
    """_conv_backward of a 1x1 convolution (stride 1, no padding) as matrix products. On the CPU,
    ATen's convolution_backward runs block 1's 1x1 layers (96 channels, 54x54) at about half the
    matrix products' speed (benchmarks/NOTES.md v19)."""
    n, c_out, h, w = grad.shape
    c_in = input.shape[1]
    weight_matrix = weight.view(c_out, c_in)
    gx = gw = None
    if suggest_memory_format(grad) == torch.channels_last:  # pixels x channels: one product each
        grad_rows = grad.permute(0, 2, 3, 1).reshape(-1, c_out)
        if needs[0]:
            rows = None if grad_input_out is None else grad_input_out.permute(0, 2, 3, 1).view(-1, c_in)
            gx = torch.mm(grad_rows, weight_matrix, out=rows).view(n, h, w, c_in).permute(0, 3, 1, 2)
        if needs[1]:
            gw = (grad_rows.t() @ input.permute(0, 2, 3, 1).reshape(-1, c_in)).view_as(weight)
    else:  # channels x pixels per image
        grad_maps = grad.reshape(n, c_out, h * w)
        if needs[0]:
            maps = None if grad_input_out is None else grad_input_out.view(n, c_in, h * w)
            gx = torch.bmm(weight_matrix.t().expand(n, c_in, c_out), grad_maps, out=maps).view(n, c_in, h, w)
        if needs[1]:
            input_maps = input.reshape(n, c_in, h * w)
            gw = grad.new_zeros(c_out, c_in)
            for grad_map, input_map in zip(grad_maps, input_maps):  # no N x C x C temporary
                gw.addmm_(grad_map, input_map.t())
            gw = gw.view_as(weight)
    return gx, gw, _bias_grad(grad, bias, needs)


def _hidden_conv_backward(grad, input, weight, bias, needs, grad_input_out=None):
    """_conv_backward of one of the block's 1x1 layers; the input gradient goes into grad_input_out
    when it is given and the products are used. Half and bfloat16 stay with ATen: summed per image in
    those dtypes, the weight gradient would be rounded once per image."""
    if grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64):
        return _pointwise_conv_backward(grad, input, weight, bias, needs, grad_input_out)
    return _conv_backward(grad, input, weight, bias, [1, 1], [0, 0], needs)


def _relu_backward_(grad, activation):
    """grad where activation > 0, else 0, in place (grad is the backward's own new tensor)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, activation, 0, grad_input=grad)


def _nin_block_grads_from_activations(ctx, grad_block_out, activations, grad_h0=None, grad_h1=None):
    """Gradients of every input (x, w, b, w1, b1, w2, b2 saved on ctx) from the gradient of the
    block's output (before any pooling) and of its hidden activations when they are outputs too
    (nin_block_with_hidden). `activations` is the list [h0, h1, out > 0]: the output's ReLU backward
    needs only where it is positive; or [h0, h1, None] when grad_block_out is the backward's own
    tensor and already 0 where the output is not positive. The ReLU backwards run in place and the
    last 1x1 layer's input gradient goes into the memory of the output's masked gradient: fewer new
    maps for the process to fault in (benchmarks/NOTES.md v20), at most two alive at once."""
    x, w, b, w1, b1, w2, b2 = ctx.saved_tensors[:7]
    needs = ctx.needs_input_grad
    need_h1 = any(needs[:5])
    need_h0 = any(needs[:3])
    # where, as threshold_backward: a masked NaN or inf gradient gives 0 (a product would give NaN),
    # and no float copy of the mask (ATen makes one for a product with a bool or uint8 operand)
    output_positive = activations.pop()
    grad = grad_block_out if output_positive is None else torch.where(output_positive, grad_block_out, 0)
    del grad_block_out
    h1 = activations.pop()
    grad_h1_in, gw2, gb2 = _hidden_conv_backward(grad, h1, w2, b2, (need_h1, needs[5], needs[6]))
    gw1 = gb1 = gx = gw = gb = None
    if need_h1:
        if grad_h1 is not None:
            grad_h1_in.add_(grad_h1)
        _relu_backward_(grad_h1_in, h1)
        del h1
        h0 = activations.pop()
        # the output's masked gradient is spent: its memory takes h0's gradient where it fits
        fits = grad.shape == h0.shape and grad.is_contiguous(memory_format=suggest_memory_format(grad_h1_in))
        reuse = grad if fits else None
        del grad
        grad_h0_in, gw1, gb1 = _hidden_conv_backward(grad_h1_in, h0, w1, b1, (need_h0, needs[3], needs[4]), reuse)
        del grad_h1_in, reuse
        if need_h0:
            if grad_h0 is not None:
                grad_h0_in.add_(grad_h0)
            _relu_backward_(grad_h0_in, h0)
            del h0
            gx, gw, gb = _spatial_conv_backward(grad_h0_in, x, w, b, ctx.stride, ctx.padding, needs[:3])
    return gx, gw, gb, gw1, gb1, gw2, gb2, None, None


def _grads_by_reference(ctx, inputs, outputs, grad_outputs):
    """The backward under create_graph=True: the gradients of the op's inputs by autograd through
    `outputs`, the op's outputs recomputed by the reference's ATen ops from `inputs` (the op's
    arguments, tensors as saved), so that they can be differentiated again. Outputs whose gradient is
    None are left out."""
    pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs) if grad is not None]
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad) if need]
    found = iter(torch.autograd.grad([out for out, _ in pairs], wanted, [grad for _, grad in pairs],
                                     create_graph=True, allow_unused=True) if pairs else [None] * len(wanted))
    return tuple(next(found) if need else None for need in ctx.needs_input_grad)


def _block_inputs(ctx):
    """nin_block's arguments as the backward has them (the seven tensors saved first)."""
    return (*ctx.saved_tensors[:7], ctx.stride, ctx.padding)


def _nin_block_grads(ctx, grad_block_out):
    """nin_block's backward: the forward kept no activation, so they are recomputed with ATen."""
    if torch.is_grad_enabled():
        inputs = _block_inputs(ctx)
        return _grads_by_reference(ctx, inputs, [nin_block_reference(*inputs)], [grad_block_out])
    h0, h1, out = nin_block_activations(*ctx.saved_tensors, ctx.stride, ctx.padding)
    return _nin_block_grads_from_activations(ctx, grad_block_out, [h0, h1, out > 0])


def _nin_block_with_hidden_fake(x, w, b, w1, b1, w2, b2, stride, padding):
    """The output and both hidden activations, all in the output's memory format."""
    output_size = check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, "nin_block_with_hidden")
    memory_format = nin_block_output_memory_format(x, w, w1, w2, output_size)
    return tuple(torch.empty((x.shape[0], channels, *output_size), dtype=x.dtype, device=x.device,
                             memory_format=memory_format) for channels in (w2.shape[0], w.shape[0], w1.shape[0]))


def _setup_nin_block_with_hidden_context(ctx, inputs, output):
    x, w, b, w1, b1, w2, b2, stride, padding = inputs
    out, h0, h1 = output
    ctx.set_materialize_grads(False)  # the hidden outputs are seldom used: no zero gradients for them
    ctx.stride, ctx.padding = list(stride), list(padding)
    # Of the output, only where it is positive is saved (a quarter of its bytes): saved tensors live
    # until the block's whole backward ends, where eager's autograd frees its output right after the
    # last ReLU's backward, so saving `out` would raise the peak memory above eager's.
    ctx.save_for_backward(x, w, b, w1, b1, w2, b2, h0, h1, out > 0)


def _nin_block_with_hidden_backward(ctx, grad_out, grad_h0, grad_h1):
    if torch.is_grad_enabled():
        inputs = _block_inputs(ctx)
        h0, h1, out = nin_block_activations(*inputs)
        return _grads_by_reference(ctx, inputs, [out, h0, h1], [grad_out, grad_h0, grad_h1])
    x, w, b, w1, b1, w2, b2, h0, h1, out_positive = ctx.saved_tensors
    if grad_out is None:  # only a hidden activation was used
        grad_out = torch.zeros(out_positive.shape, dtype=h1.dtype, device=h1.device)
    activations = [h0, h1, out_positive]
    del h0, h1, out_positive
    return _nin_block_grads_from_activations(ctx, grad_out, activations, grad_h0, grad_h1)


def _setup_nin_block_context(ctx, inputs, output):
    x, w, b, w1, b1, w2, b2, stride, padding = inputs
    ctx.stride, ctx.padding = list(stride), list(padding)
    ctx.save_for_backward(x, w, b, w1, b1, w2, b2)


def _nin_block_gap_backward(ctx, grad_out):
    if torch.is_grad_enabled():
        inputs = _block_inputs(ctx)
        return _grads_by_reference(ctx, inputs, [nin_block_gap_reference(*inputs)], [grad_out])
    oh, ow = conv_output_size(*ctx.saved_tensors[:2], ctx.stride, ctx.padding)
    grad_block_out = (grad_out / (oh * ow))[:, :, None, None].expand(-1, -1, oh, ow)
    return _nin_block_grads(ctx, grad_block_out)


def _setup_global_avg_pool_context(ctx, inputs, output):
    ctx.input_shape = inputs[0].shape


def _global_avg_pool_backward(ctx, grad_out):
    n, c, h, w = ctx.input_shape
    return (grad_out / (h * w))[:, :, None, None].expand(n, c, h, w).contiguous()


def _setup_max_pool2d_context(ctx, inputs, output):
    x, ctx.kernel_size, ctx.stride, ctx.padding, ctx.ceil_mode = inputs
    ctx.save_for_backward(x)


def _max_pool2d_backward(ctx, grad_out):
    """max_pool2d's backward: the argmax is found again from the saved input."""
    (x,) = ctx.saved_tensors
    if torch.is_grad_enabled():
        inputs = (x, ctx.kernel_size, ctx.stride, ctx.padding, ctx.ceil_mode)
        return _grads_by_reference(ctx, inputs, [max_pool2d_reference(*inputs)], [grad_out])
    _, argmax = torch.ops.nin_ext.max_pool2d_with_argmax(x, ctx.kernel_size, ctx.stride, ctx.padding,
                                                          ctx.ceil_mode)
    grad_x = torch.ops.nin_ext.max_pool2d_backward(grad_out, argmax, list(x.shape),
                                                   suggest_memory_format(x) == torch.channels_last)
    return grad_x, None, None, None, None


def _max_pool2d_with_argmax_fake(x, kernel_size, stride, padding, ceil_mode):
    out = _max_pool2d_fake(x, kernel_size, stride, padding, ceil_mode)
    return out, torch.empty_like(out, dtype=torch.int32)


def _setup_max_pool2d_with_argmax_context(ctx, inputs, output):
    x = inputs[0]
    ctx.set_materialize_grads(False)
    ctx.input_size = list(x.shape)
    ctx.channels_last = suggest_memory_format(x) == torch.channels_last
    ctx.save_for_backward(output[1])  # the argmax, not the input


def _max_pool2d_with_argmax_backward(ctx, grad_out, grad_argmax):
    (argmax,) = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():  # the scatter by ATen, differentiable in grad_out
        grad_x = _scatter_to_argmax(grad_out, argmax, ctx.input_size, ctx.channels_last)
    else:
        grad_x = torch.ops.nin_ext.max_pool2d_backward(grad_out, argmax, ctx.input_size, ctx.channels_last)
    return grad_x, None, None, None, None


def _scatter_to_argmax(grad_out, argmax, input_size, channels_last):
    """max_pool2d_backward by ATen ops: each window's gradient added at its argmax."""
    n, c, h, w = input_size
    grad_x = grad_out.new_zeros(n, c, h * w).scatter_add(2, argmax.reshape(n, c, -1).long(), grad_out.reshape(n, c, -1))
    return grad_x.view(n, c, h, w).contiguous(memory_format=torch.channels_last if channels_last else
                                              torch.contiguous_format)


def _max_pool2d_backward_fake(grad_out, argmax, input_size, channels_last):
    return grad_out.new_empty(input_size).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _nin_block_max_pool_fake(x, w, b, w1, b1, w2, b2, stride, padding, pool_kernel, pool_stride, pool_padding,
                              ceil_mode):
    """max_pool2d of nin_block's output: its shape and memory format."""
    block = nin_block_fake(x, w, b, w1, b1, w2, b2, stride, padding)
    output_size = check_max_pool2d_args(block, pool_kernel, pool_stride, pool_padding, ceil_mode,
                                        "nin_block_max_pool")
    return torch.empty((x.shape[0], w2.shape[0], *output_size), dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(block))


def _pool_args(inputs):
    """The pool's arguments of a block-and-pool op's inputs, as lists."""
    return [list(inputs[9]), list(inputs[10]), list(inputs[11]), inputs[12]]


def _setup_nin_block_max_pool_context(ctx, inputs, output):
    _setup_nin_block_context(ctx, inputs[:9], output)
    ctx.pool = _pool_args(inputs)


def _masked_pool_backward(grad_pooled, pooled, argmax, block_output_size, channels_last):
    """The gradient of a block's output before its ReLU, from that of its max pool. The block's output
    is positive exactly where the pooled output is, at the argmax (a ReLU output is at least 0; NaN is
    neither): the ReLU backward masks the pooled gradient before the scatter, which then writes zeros
    where eager's mask of the full-size gradient would (the same values, bit for bit)."""
    return torch.ops.nin_ext.max_pool2d_backward(torch.where(pooled > 0, grad_pooled, 0), argmax,
                                                 block_output_size, channels_last)


def _nin_block_max_pool_backward(ctx, grad_out):
    """Recomputes the block's activations with ATen (the forward kept none), then the pool's argmax."""
    if torch.is_grad_enabled():
        inputs = (*_block_inputs(ctx), *ctx.pool)
        pooled = max_pool2d_reference(nin_block_reference(*inputs[:9]), *ctx.pool)
        return _grads_by_reference(ctx, inputs, [pooled], [grad_out])
    h0, h1, out = nin_block_activations(*ctx.saved_tensors, ctx.stride, ctx.padding)
    pooled, argmax = torch.ops.nin_ext.max_pool2d_with_argmax(out, *ctx.pool)
    grad_block_out = _masked_pool_backward(grad_out, pooled, argmax, list(out.shape),
                                           suggest_memory_format(out) == torch.channels_last)
    del out, pooled, argmax
    grads = _nin_block_grads_from_activations(ctx, grad_block_out, [h0, h1, None])
    return (*grads, None, None, None, None)


def _nin_block_max_pool_with_hidden_fake(x, w, b, w1, b1, w2, b2, stride, padding, pool_kernel, pool_stride,
                                         pool_padding, ceil_mode):
    """The pooled output, the block's hidden activations and the pool's int32 argmax."""
    out, h0, h1 = _nin_block_with_hidden_fake(x, w, b, w1, b1, w2, b2, stride, padding)
    pooled, argmax = _max_pool2d_with_argmax_fake(out, pool_kernel, pool_stride, pool_padding, ceil_mode)
    return pooled, h0, h1, argmax


def _setup_nin_block_max_pool_with_hidden_context(ctx, inputs, output):
    x, w, b, w1, b1, w2, b2, stride, padding = inputs[:9]
    pooled, h0, h1, argmax = output
    ctx.set_materialize_grads(False)  # as nin_block_with_hidden's
    ctx.stride, ctx.padding = list(stride), list(padding)
    ctx.pool = _pool_args(inputs)
    # The pooled output is the next layer's input, saved there too: no memory of its own here.
    ctx.save_for_backward(x, w, b, w1, b1, w2, b2, h0, h1, argmax, pooled)


def _nin_block_max_pool_with_hidden_backward(ctx, grad_pooled, grad_h0, grad_h1, grad_argmax):
    if torch.is_grad_enabled():
        inputs = (*_block_inputs(ctx), *ctx.pool)
        h0, h1, out = nin_block_activations(*inputs[:9])
        return _grads_by_reference(ctx, inputs, [max_pool2d_reference(out, *ctx.pool), h0, h1],
                                   [grad_pooled, grad_h0, grad_h1])
    x, w, b, w1, b1, w2, b2, h0, h1, argmax, pooled = ctx.saved_tensors
    block_output_size = [x.shape[0], w2.shape[0], *h0.shape[2:]]  # in h0's memory format
    if grad_pooled is None:  # only a hidden activation was used
        grad_block_out = h1.new_zeros(block_output_size)
    else:
        grad_block_out = _masked_pool_backward(grad_pooled, pooled, argmax, block_output_size,
                                               suggest_memory_format(h0) == torch.channels_last)
    activations = [h0, h1, None]
    del h0, h1, argmax, pooled
    grads = _nin_block_grads_from_activations(ctx, grad_block_out, activations, grad_h0, grad_h1)
    return (*grads, None, None, None, None)


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
    # The compiled extension's CPU-only ops: the training forwards, the max pool, the block fused with it.
    torch.library.register_fake("nin_ext::nin_block_with_hidden")(_nin_block_with_hidden_fake)
    torch.library.register_autograd("nin_ext::nin_block_with_hidden", _nin_block_with_hidden_backward,
                                    setup_context=_setup_nin_block_with_hidden_context)
    torch.library.register_fake("nin_ext::max_pool2d")(_max_pool2d_fake)
    torch.library.register_fake("nin_ext::max_pool2d_with_argmax")(_max_pool2d_with_argmax_fake)
    torch.library.register_autograd("nin_ext::max_pool2d_with_argmax", _max_pool2d_with_argmax_backward,
                                    setup_context=_setup_max_pool2d_with_argmax_context)
    torch.library.register_fake("nin_ext::max_pool2d_backward")(_max_pool2d_backward_fake)
    torch.library.register_fake("nin_ext::conv2d_weight_grad")(_conv2d_weight_grad_fake)
    torch.library.register_autograd("nin_ext::max_pool2d", _max_pool2d_backward,
                                    setup_context=_setup_max_pool2d_context)
    torch.library.register_fake("nin_ext::nin_block_max_pool")(_nin_block_max_pool_fake)
    torch.library.register_autograd("nin_ext::nin_block_max_pool", _nin_block_max_pool_backward,
                                    setup_context=_setup_nin_block_max_pool_context)
    torch.library.register_fake("nin_ext::nin_block_max_pool_with_hidden")(_nin_block_max_pool_with_hidden_fake)
    torch.library.register_autograd("nin_ext::nin_block_max_pool_with_hidden",
                                    _nin_block_max_pool_with_hidden_backward,
                                    setup_context=_setup_nin_block_max_pool_with_hidden_context)
