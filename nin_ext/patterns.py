"""Recognising the layer runs that nin_ext fuses, in a list of modules.

A block run is Conv2d -> ReLU -> 1x1 Conv2d -> ReLU -> 1x1 Conv2d -> ReLU, with convolutions our
kernels compute exactly as nn.Conv2d does (no groups, no dilation, zero padding). A global average
pool is AdaptiveAvgPool2d to 1x1; a Flatten() after it is a view of the pool's output. An eval-mode
Dropout returns its input as it is.
A max pool runs nin_ext's max_pool2d when it is a MaxPool2d without dilation or returned indices.
The matching is structural; whether a matched run may run fused now also depends on hooks (runs_hooks):
the fused ops do not call the layers, so they would skip the hooks (a forward hook that records
features, torch.nn.utils.prune's pre-hook that computes the weight).
"""
from typing import NamedTuple, Optional, Tuple

import torch.nn as nn
from torch.nn.modules import module as nn_module
from torch.nn.modules.utils import _pair

BLOCK_RUN_LENGTH = 6


class BlockLayers(NamedTuple):
    conv: nn.Conv2d
    conv1: nn.Conv2d
    conv2: nn.Conv2d
    padding: Tuple[int, int]

    def op_args(self):
        """The weights, stride and padding in the order of the nin_block ops."""
        return (self.conv.weight, self.conv.bias, self.conv1.weight, self.conv1.bias, self.conv2.weight,
                self.conv2.bias, self.conv.stride, self.padding)


def conv_padding(conv):
    """conv's padding as an (h, w) pair of zero-padding amounts, or None when our kernels differ from it."""
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.dilation != (1, 1):
        return None
    if conv.padding == "valid":
        padding = (0, 0)
    elif conv.padding == "same":  # symmetric only when the kernel is odd
        if any(k % 2 == 0 for k in conv.kernel_size):
            return None
        padding = tuple(k // 2 for k in conv.kernel_size)
    else:
        padding = tuple(conv.padding)
    if conv.padding_mode != "zeros" and padding != (0, 0):
        return None
    return padding


def _is_pointwise(conv, in_channels):
    return (conv_padding(conv) == (0, 0) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.in_channels == in_channels)


def has_hooks(module):
    """Whether module's own hooks run when it is called."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def global_hooks_set():
    """Whether hooks for every module are registered (nn.Module.__call__ reads the same registries)."""
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)


def runs_hooks(module):
    """Whether calling module, or one of its submodules, runs hooks: then it must be called, not fused."""
    return global_hooks_set() or any(has_hooks(m) for m in module.modules())


def block_run_at(layers, i) -> Optional[BlockLayers]:
    """The block run starting at layers[i], or None."""
    run = layers[i:i + BLOCK_RUN_LENGTH]
    if len(run) < BLOCK_RUN_LENGTH or not all(type(run[k]) is nn.ReLU for k in (1, 3, 5)):
        return None
    conv, conv1, conv2 = run[0], run[2], run[4]
    padding = conv_padding(conv)
    if padding is None or not _is_pointwise(conv1, conv.out_channels) or not _is_pointwise(conv2, conv1.out_channels):
        return None
    return BlockLayers(conv, conv1, conv2, padding)


def is_global_avg_pool(layer):
    return type(layer) is nn.AdaptiveAvgPool2d and layer.output_size in (1, (1, 1))


def max_pool_args(layer):
    """(kernel_size, stride, padding, ceil_mode) of a MaxPool2d that nin_ext's max_pool2d runs, or None."""
    if type(layer) is not nn.MaxPool2d or layer.return_indices or _pair(layer.dilation) != (1, 1):
        return None
    return _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding), layer.ceil_mode


def is_identity_dropout(layer):
    """Whether layer is an nn.Dropout that returns its input as it is (eval mode; F.dropout raises for
    a p outside [0, 1] in any mode, so such a layer is left to raise)."""
    return type(layer) is nn.Dropout and not layer.training and 0.0 <= layer.p <= 1.0


def is_flatten_from_channels(layer):
    """Whether layer is an nn.Flatten of every dimension from the channels on (its defaults)."""
    return type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1


def layer_key(layer):
    """What the matching above and runs_hooks read of a layer, with the layer itself: a plan of fused
    steps built from layers whose keys, and the global hooks, are unchanged still holds."""
    kind = type(layer)
    if kind is nn.Conv2d:
        return (layer, has_hooks(layer), layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                layer.padding, layer.dilation, layer.groups, layer.padding_mode)
    if kind is nn.MaxPool2d:
        return (layer, has_hooks(layer), layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                layer.return_indices, layer.ceil_mode)
    if kind is nn.AdaptiveAvgPool2d:
        return layer, has_hooks(layer), layer.output_size
    if kind is nn.ReLU:
        return layer, has_hooks(layer)
    if kind is nn.Dropout:
        return layer, has_hooks(layer), layer.training, layer.p
    if kind is nn.Flatten:
        return layer, has_hooks(layer), layer.start_dim, layer.end_dim
    return layer
