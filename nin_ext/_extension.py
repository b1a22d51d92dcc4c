"""Loads the compiled kernels (nin_ext._C), or records why they are missing."""
import warnings

import torch  # noqa: F401  (the extension links against libtorch: load it first)

try:
    from . import _C
    load_error = None
except (ImportError, OSError) as error:  # not built (NIN_EXT_NO_EXT=1), or built for another torch
    _C = None
    load_error = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"nin_ext: the compiled extension nin_ext._C could not be loaded ({load_error}); backend 'auto' "
        "falls back to 'reference' (plain PyTorch, not fused). Reinstall nin_ext with "
        "`pip install --no-build-isolation .` to build the kernels.",
        stacklevel=3,
    )

loaded = _C is not None
cuda_built = bool(loaded and _C.cuda_built)
cuda_archs = (_C.cuda_archs or None) if loaded else None
cpu_microkernel = _C.cpu_microkernel if loaded else None  # amx, avx512, avx2 or portable


def clear_weight_cache():
    """Frees the CPU kernels' packed copies of block weights (up to 16 blocks' worth are kept; an
    entry is used only while the weights' bytes keep the 64-bit fingerprints, one per 256 KiB, of
    the values it was packed from, so correctness does not need this call)."""
    if loaded:
        _C.clear_weight_cache()


def clear_tensor_cache():
    """Frees the free blocks that the CPU ops keep for their large tensors (outputs and per-call
    buffers of 1 MiB or more, up to NIN_EXT_CPU_TENSOR_CACHE_MB = 256 MiB of them by default), so
    that a later tensor of the same size finds its pages mapped; returns the bytes freed."""
    return _C.clear_tensor_cache() if loaded else 0
