"""Argument checks and output geometry of the ops: the Python twin of csrc/nin_block_checks.h.

The fake kernels and the `reference` backend run these, so every backend rejects the same inputs
with the same messages as the compiled kernels. Each check is a plain `if ... raise RuntimeError(...)`
(torch._check's error type): its message is built only when it fails, since these run on every call,
and Dynamo (torch 2.11) cannot trace torch._check's message closure. Every condition is about shapes,
dtypes and devices, which tracing sees as constants or guards.
"""
import torch
from torch._prims_common import suggest_memory_format


def _check_like_x(t, name, x, op):
    if t.dtype != x.dtype:
        raise RuntimeError(f"{op}: {name} has dtype {t.dtype} but x has dtype {x.dtype}; they must match")
    if t.device != x.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def _check_bias(bias, name, channels, x, op):
    if bias is None:
        return
    if not (bias.dim() == 1 and bias.shape[0] == channels):
        raise RuntimeError(f"{op}: expected {name} of shape [{channels}], got {list(bias.shape)}")
    _check_like_x(bias, name, x, op)


def _check_pointwise_weight(weight, name, in_channels, in_name, x, op):
    if not (weight.dim() == 4 and weight.shape[2] == 1 and weight.shape[3] == 1):
        raise RuntimeError(f"{op}: expected {name} to be a 1x1 convolution weight of shape "
                           f"[C_out, {in_channels}, 1, 1], got {list(weight.shape)}")
    if weight.shape[1] != in_channels:
        raise RuntimeError(f"{op}: {name} expects {weight.shape[1]} input channels but {in_name} has "
                           f"{in_channels} channels")
    _check_like_x(weight, name, x, op)


def check_nin_block_args(x, w, b, w1, b1, w2, b2, stride, padding, op):
    """Checks the arguments of nin_block / nin_block_gap; returns the output's (OH, OW)."""
    if x.dim() != 4:
        raise RuntimeError(f"{op}: expected x to be a 4-d (N, C, H, W) tensor, got {x.dim()}-d input of shape "
                           f"{list(x.shape)}")
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: expected x to have a floating-point dtype, got {x.dtype}")
    if w.dim() != 4:
        raise RuntimeError(f"{op}: expected w to be a 4-d convolution weight [C_out, C_in, kH, kW], got shape "
                           f"{list(w.shape)}")
    if w.shape[1] != x.shape[1]:
        raise RuntimeError(f"{op}: x has {x.shape[1]} channels but w expects {w.shape[1]} input channels (w.shape[1])")
    _check_like_x(w, "w", x, op)
    if not (len(stride) == 2 and stride[0] > 0 and stride[1] > 0):
        raise RuntimeError(f"{op}: expected stride to be two positive integers, got {list(stride)}")
    if not (len(padding) == 2 and padding[0] >= 0 and padding[1] >= 0):
        raise RuntimeError(f"{op}: expected padding to be two non-negative integers, got {list(padding)}")
    if not (x.shape[1] > 0 and x.shape[2] > 0 and x.shape[3] > 0):
        raise RuntimeError(f"{op}: expected x to have non-zero channel and spatial sizes, got shape {list(x.shape)}")
    if not (w.shape[0] > 0 and w.shape[2] > 0 and w.shape[3] > 0):
        raise RuntimeError(f"{op}: w has an empty dimension: {list(w.shape)}")
    padded = (x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
    if not (padded[0] >= w.shape[2] and padded[1] >= w.shape[3]):
        raise RuntimeError(f"{op}: input size ({padded[0]} x {padded[1]}, padding included) is smaller than the "
                           f"kernel size ({w.shape[2]} x {w.shape[3]})")
    _check_bias(b, "b", w.shape[0], x, op)
    _check_pointwise_weight(w1, "w1", w.shape[0], "the output of w", x, op)
    _check_bias(b1, "b1", w1.shape[0], x, op)
    _check_pointwise_weight(w2, "w2", w1.shape[0], "the output of w1", x, op)
    _check_bias(b2, "b2", w2.shape[0], x, op)
    return conv_output_size(x, w, stride, padding)


def conv_output_size(x, w, stride, padding):
    """(OH, OW) of conv2d(x, w, stride=stride, padding=padding)."""
    return tuple((x.shape[d] + 2 * padding[d - 2] - w.shape[d]) // stride[d - 2] + 1 for d in (2, 3))


def check_global_avg_pool_args(x, op):
    if x.dim() != 4:
        raise RuntimeError(f"{op}: expected x to be a 4-d (N, C, H, W) tensor, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: expected x to have a floating-point dtype, got {x.dtype}")
    if not (x.shape[2] > 0 and x.shape[3] > 0):
        raise RuntimeError(f"{op}: expected x to have non-zero spatial sizes, got shape "
                           f"{list(x.shape)}")


def _relu_keeps_channels_last(memory_format, channels, pixels):
    # ATen's element-wise ops give a channels_last tensor with one channel or one pixel contiguous strides.
    return memory_format == torch.channels_last and channels > 1 and pixels > 1


def nin_block_output_memory_format(x, w, w1, w2, output_size):
    """The reference's output memory format: each of its convolutions returns channels_last when its
    input or its weight suggests it, and each ReLU keeps that only as _relu_keeps_channels_last says."""
    def conv_output_format(input_channels_last, weight):
        if input_channels_last or suggest_memory_format(weight) == torch.channels_last:
            return torch.channels_last
        return torch.contiguous_format

    pixels = output_size[0] * output_size[1]
    memory_format = conv_output_format(suggest_memory_format(x) == torch.channels_last, w)
    memory_format = conv_output_format(_relu_keeps_channels_last(memory_format, w.shape[0], pixels), w1)
    memory_format = conv_output_format(_relu_keeps_channels_last(memory_format, w1.shape[0], pixels), w2)
    if _relu_keeps_channels_last(memory_format, w2.shape[0], pixels):
        return torch.channels_last
    return torch.contiguous_format
