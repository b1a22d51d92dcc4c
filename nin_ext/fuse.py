"""fuse(model): the same model with its NiN block runs executed by the fused ops."""
import copy
from collections import OrderedDict

import torch.nn as nn

from .modules import FusedSequential, NiNBlock, has_fusable_layers
from .patterns import BLOCK_RUN_LENGTH, block_run_at, has_hooks


def fuse(model):
    """Returns `model` with every Conv2d -> ReLU -> 1x1 Conv2d -> ReLU -> 1x1 Conv2d -> ReLU run inside an
    nn.Sequential (at any depth) running fused, and such a run followed by AdaptiveAvgPool2d(1)
    running as one fused block + pool.

    A Sequential that is exactly a run becomes a NiNBlock; one that holds runs among other layers
    becomes a FusedSequential. Both keep the same children under the same names, so parameters are
    shared with `model` and the state_dict keys are unchanged. `model` itself is not modified: the
    containers on the way to a replaced Sequential are shallow copies, and every other module is
    the original object. A Sequential with hooks of its own stays a Sequential (shallow-copied like
    the other containers, so its hooks stay with it), and a layer with hooks is not fused.
    """
    return _fuse(model)


def _fuse(module):
    if module is None:
        return None
    children = OrderedDict((name, _fuse(child)) for name, child in module._modules.items())
    if type(module) in (nn.Sequential, FusedSequential) and not has_hooks(module):
        layers = list(children.values())
        if len(layers) == BLOCK_RUN_LENGTH and block_run_at(layers, 0) is not None:
            return NiNBlock.from_layers(children)
        if has_fusable_layers(layers):
            return FusedSequential(children)
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    clone = copy.copy(module)
    clone.__dict__["_modules"] = dict(children)
    return clone
