"""Drop-in modules for the notebook's NiN: the same constructor arguments, children and state_dict
keys as the reference, with forward passes that run the fused ops."""
from collections import OrderedDict

import torch.nn as nn

from . import ops, reference
from .patterns import BLOCK_RUN_LENGTH, block_run_at, is_global_avg_pool, max_pool_args


class InputError(ValueError, RuntimeError):
    """A bad input to a nin_ext module (a RuntimeError too, like the reference's conv errors)."""


def _run_batched(x, who, op):
    """op on a 4-d x; a 3-d (C, H, W) x runs as a batch of one, as nn.Conv2d does."""
    if x.dim() == 4:
        return op(x)
    if x.dim() == 3:
        return op(x.unsqueeze(0)).squeeze(0)
    raise InputError(f"{who}: expected a 3-d (C, H, W) or 4-d (N, C, H, W) input, got shape {tuple(x.shape)}")


class NiNBlock(nn.Sequential):
    """The notebook's nin_block(in_channels, out_channels, kernel_size, strides, padding), fused.

    Its children are the reference's (Conv2d, ReLU, 1x1 Conv2d, ReLU, 1x1 Conv2d, ReLU), so the
    state_dict keys are 0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias.
    """

    def __init__(self, in_channels, out_channels, kernel_size, strides=None, padding=0, *, stride=None):
        if strides is not None and stride is not None:
            raise TypeError("NiNBlock: give the stride as `strides` or as `stride`, not both")
        stride = 1 if strides is None and stride is None else (strides if stride is None else stride)
        super().__init__(*reference.nin_block(in_channels, out_channels, kernel_size, stride, padding))

    @classmethod
    def from_layers(cls, layers):
        """A NiNBlock holding the given modules (an OrderedDict of a block run): parameters shared."""
        block = cls.__new__(cls)
        nn.Sequential.__init__(block, OrderedDict(layers))
        return block

    def block_layers(self):
        """The layers as BlockLayers, or None when the fused kernels cannot run them (an even kernel
        with padding='same', or children replaced after construction)."""
        return block_run_at(list(self), 0)

    def forward(self, x):
        block = self.block_layers()
        if block is None:  # run the layers one by one, as the reference does
            return super().forward(x)
        return _run_batched(x, "NiNBlock", lambda x4: ops.nin_block(x4, *block.op_args()))


def _block_at(layers, i):
    """(BlockLayers, index after the block) for a NiNBlock or a block run at layers[i], or None."""
    if isinstance(layers[i], NiNBlock):
        block, length = layers[i].block_layers(), 1
    else:
        block, length = block_run_at(layers, i), BLOCK_RUN_LENGTH
    return None if block is None else (block, i + length)


def has_fusable_layers(layers):
    return any(_block_at(layers, i) is not None for i in range(len(layers)))


class FusedSequential(nn.Sequential):
    """nn.Sequential whose block runs (and NiNBlocks) run fused, and fused with a global average pool
    or a max pool that follows them; its other max pools run nin_ext's max_pool2d. Children, their
    names and the state_dict keys are those of the Sequential."""

    def forward(self, x):
        layers = list(self)
        i = 0
        while i < len(layers):
            found = _block_at(layers, i)
            if found is None:
                pool = max_pool_args(layers[i])
                if pool is None:
                    x = layers[i](x)
                else:
                    x = _run_batched(x, "MaxPool2d", lambda x4: ops.max_pool2d(x4, *pool))
                i += 1
                continue
            block, end = found
            if end < len(layers) and is_global_avg_pool(layers[end]):
                # The pool's own output shape, (N, C, 1, 1) or (C, 1, 1): a Flatten after it runs as usual.
                x = _run_batched(x, "nin_block_gap",
                                 lambda x4: ops.nin_block_gap(x4, *block.op_args())[:, :, None, None])
                i = end + 1
            elif end < len(layers) and max_pool_args(layers[end]) is not None:
                pool = max_pool_args(layers[end])
                x = _run_batched(x, "NiNBlock", lambda x4: ops.nin_block_max_pool(x4, *block.op_args(), *pool))
                i = end + 1
            else:
                x = _run_batched(x, "NiNBlock", lambda x4: ops.nin_block(x4, *block.op_args()))
                i = end
        return x


class NiN(FusedSequential):
    """The notebook's NiN `net`; its last block runs fused with the global average pool."""

    def __init__(self, in_channels=1, num_classes=10, dropout=0.5):
        # Built from the reference's layers, in its order, so a seed gives both the same weights.
        layers = reference.nin_net(in_channels, num_classes, dropout)
        super().__init__(*(NiNBlock.from_layers(layer._modules) if type(layer) is nn.Sequential else layer
                           for layer in layers))
