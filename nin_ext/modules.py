"""Drop-in modules for the notebook's NiN: the same constructor arguments, children and state_dict
keys as the reference, with forward passes that run the fused ops."""
import weakref
from collections import OrderedDict

import torch
import torch.nn as nn

from . import ops, reference
from .patterns import (BLOCK_RUN_LENGTH, block_run_at, global_hooks_set, has_hooks, is_flatten_from_channels,
                       is_global_avg_pool, is_identity_dropout, layer_key, max_pool_args, runs_hooks)


class InputError(ValueError, RuntimeError):
    """A bad input to a nin_ext module (a RuntimeError too, like the reference's conv errors)."""


def _run_batched(x, who, op, *args):
    """op(x, *args) on a 4-d x; a 3-d (C, H, W) x runs as a batch of one, as nn.Conv2d does."""
    if x.dim() == 4:
        return op(x, *args)
    if x.dim() == 3:
        return op(x.unsqueeze(0), *args).squeeze(0)
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
        if block is None or any(runs_hooks(layer) for layer in self):  # layer by layer, as the reference
            return super().forward(x)
        return _run_batched(x, "NiNBlock", ops.nin_block, *block.op_args())


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
        for step in _plan(self):
            x = step(x)
        return x


# The steps of each FusedSequential, with the layer keys they were built from (_plan). Kept beside the
# modules, not in them, so that pickling, deepcopy and state_dict see nothing of it.
_plans = weakref.WeakKeyDictionary()


def _plan(sequential):
    """The steps that run sequential's layers: its fused blocks as ops, every other layer as the module.
    Matching the layers cost a tenth of a batch-1 forward (0.2 of 4.4 ms, NOTES v39), so the steps are
    kept and rebuilt when a key of the layers changes: a child replaced, an attribute that the
    matching reads (a conv's stride, a pool's kernel, ...), hooks added or removed. Weights are read
    by each call."""
    layers = tuple(sequential._modules.values())
    if torch.compiler.is_compiling():  # traced as plain code, nothing kept
        return _plan_steps(layers)
    keys = (global_hooks_set(),) + tuple(_layer_key(layer) for layer in layers)
    kept = _plans.get(sequential)
    if kept is None or kept[0] != keys:
        kept = (keys, _plan_steps(layers))
        _plans[sequential] = kept
    return kept[1]


def _layer_key(layer):
    if isinstance(layer, NiNBlock):
        return layer, has_hooks(layer), tuple(layer_key(child) for child in layer._modules.values())
    return layer_key(layer)


def _plan_steps(layers):
    """The steps; a layer whose call runs hooks is called (runs_hooks), not fused. An eval-mode Dropout
    takes no step: its call, which returns its input, cost 69 us between two fused ops at batch 1,
    where its Python runs with cold caches (NOTES v39)."""
    steps, i = [], 0
    while i < len(layers):
        found = _block_at(layers, i)
        if found is None and is_identity_dropout(layers[i]) and not runs_hooks(layers[i]):
            i += 1
            continue
        if found is None or any(runs_hooks(layer) for layer in layers[i:found[1]]):
            pool = max_pool_args(layers[i])
            fused = pool is not None and not runs_hooks(layers[i])
            steps.append(_Step("MaxPool2d", ops.max_pool2d, None, pool) if fused else layers[i])
            i += 1
            continue
        block, end = found
        after = layers[end] if end < len(layers) else None
        if after is not None and is_global_avg_pool(after) and not runs_hooks(after):
            # The pool's own output shape, (N, C, 1, 1) or (C, 1, 1), and a Flatten() after it.
            gap = _Step("nin_block_gap", _nin_block_gap_map, block, ())
            flatten = layers[end + 1] if end + 1 < len(layers) else None
            if flatten is not None and is_flatten_from_channels(flatten) and not runs_hooks(flatten):
                steps.append(_GapFlattenStep(gap, flatten))
                i = end + 2
            else:
                steps.append(gap)
                i = end + 1
        elif after is not None and max_pool_args(after) is not None and not runs_hooks(after):
            steps.append(_Step("NiNBlock", ops.nin_block_max_pool, block, max_pool_args(after)))
            i = end + 1
        else:
            steps.append(_Step("NiNBlock", ops.nin_block, block, ()))
            i = end
    return steps


class _Step:
    """op(x, *the block's weights, stride and padding, *args) on a 3-d or 4-d x (no block: op(x, *args))."""

    def __init__(self, who, op, block, args):
        self.who, self.op, self.block, self.args = who, op, block, args

    def __call__(self, x):
        if self.block is None:
            return _run_batched(x, self.who, self.op, *self.args)
        return _run_batched(x, self.who, self.op, *self.block.op_args(), *self.args)


def _nin_block_gap_map(x, *args):
    return ops.nin_block_gap(x, *args)[:, :, None, None]


class _GapFlattenStep:
    """A block, its global average pool and the Flatten() after them: a 4-d x gives the op's (N, C),
    which is Flatten's view of the pool's (N, C, 1, 1); a 3-d x takes both steps, for Flatten's (C, 1)."""

    def __init__(self, gap, flatten):
        self.gap, self.flatten = gap, flatten

    def __call__(self, x):
        if x.dim() == 4:
            return ops.nin_block_gap(x, *self.gap.block.op_args())
        return self.flatten(self.gap(x))


class NiN(FusedSequential):
    """The notebook's NiN `net`; its last block runs fused with the global average pool."""

    def __init__(self, in_channels=1, num_classes=10, dropout=0.5):
        # Built from the reference's layers, in its order, so a seed gives both the same weights.
        layers = reference.nin_net(in_channels, num_classes, dropout)
        super().__init__(*(NiNBlock.from_layers(layer._modules) if type(layer) is nn.Sequential else layer
                           for layer in layers))
