"""nin_ext: fused kernels for Network-in-Network models.

    import nin_ext
    model = nin_ext.NiN()                      # the notebook's NiN, fused
    model.load_state_dict(reference.state_dict())
    fused = nin_ext.fuse(any_model)            # fuse the NiN blocks of an existing model
"""
__version__ = "0.1.0"

from . import _extension  # noqa: F401  (loads the compiled ops, or warns once)
from ._extension import clear_tensor_cache, clear_weight_cache
from . import ops, reference
from ._info import info
from .backends import available_backends, get_backend, set_backend
from .fuse import fuse
from .modules import FusedSequential, InputError, NiN, NiNBlock

__all__ = [
    "FusedSequential", "InputError", "NiN", "NiNBlock", "available_backends", "clear_tensor_cache", "clear_weight_cache", "fuse", "get_backend", "info",
    "ops", "reference", "set_backend",
]
