"""Which implementation runs the ops: selection by name, by the NIN_EXT_BACKEND variable, or `auto`."""
import functools
import os

import torch

from . import _extension

BACKEND_NAMES = ("auto", "cpu", "cuda", "triton", "reference")
_CONCRETE = BACKEND_NAMES[1:]
# Triton's interpreter (TRITON_INTERPRET=1, read when the kernels are defined) runs CPU tensors.
_TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
_DEVICE_OF = {"cpu": "cpu", "cuda": "cuda", "triton": _TRITON_DEVICE}
# What `auto` tries per device, before the reference: never the interpreter, which is only for tests.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}

_selected = {"name": "auto"}


def unavailable_reason(name):
    """Why a concrete backend cannot run here, or None when it can."""
    if name == "reference":
        return None
    if name == "triton":
        return _triton_unavailable_reason()
    if not _extension.loaded:
        return f"the compiled extension nin_ext._C is not available ({_extension.load_error})"
    if name == "cuda":
        if not _extension.cuda_built:
            return "nin_ext was built without CUDA kernels (no CUDA toolkit or CPU-only torch at install time)"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    return None


@functools.cache
def _triton_unavailable_reason():
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"the triton package cannot be imported ({error}; pip install triton)"
    if _TRITON_DEVICE == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible (set TRITON_INTERPRET=1 before importing nin_ext to run CPU tensors " \
               "in Triton's interpreter)"
    return None


def device_of(name):
    """The device type whose tensors a concrete backend (other than reference) runs."""
    return _DEVICE_OF[name]


def available_backends():
    """The concrete backends that can run here, in the order cpu, cuda, triton, reference."""
    return [name for name in _CONCRETE if unavailable_reason(name) is None]


def set_backend(name):
    """Selects the backend for every nin_ext op: 'auto' or one of available_backends()."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"nin_ext: unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name != "auto":
        reason = unavailable_reason(name)
        if reason is not None:
            raise RuntimeError(f"nin_ext: backend {name!r} is not available: {reason}")
    _selected["name"] = name


def get_backend():
    return _selected["name"]


def resolve(x):
    """The concrete backend that runs an op on tensor x under the current selection."""
    name = _selected["name"]
    device = "cpu" if x.is_cpu else x.device.type  # is_cpu costs a fifth of building x.device
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device, ()):
            if unavailable_reason(candidate) is None:
                return candidate
        return "reference"
    if name != "reference" and _DEVICE_OF[name] != device:
        raise RuntimeError(f"nin_ext: backend {name!r} runs {_DEVICE_OF[name]} tensors, but x is on {x.device}")
    return name


def _select_from_environment():
    name = os.environ.get("NIN_EXT_BACKEND", "").strip()
    if name:
        try:
            set_backend(name)
        except (ValueError, RuntimeError) as error:
            raise type(error)(f"{error} (set by the environment variable NIN_EXT_BACKEND)") from None


_select_from_environment()
