"""What nin_ext was built with and what it can run here (python -m nin_ext info)."""
import platform

import torch

from . import _extension, backends


def cpu_model():
    """The CPU's model name as /proc/cpuinfo gives it (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info():
    from . import __version__

    return {
        "nin_ext": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "extension": _extension.loaded,
        "extension_error": _extension.load_error,
        "cpu_microkernel": _extension.cpu_microkernel,
        "cuda_built": _extension.cuda_built,
        "cuda_archs": _extension.cuda_archs,
        "backends": backends.available_backends(),
        "backend": backends.get_backend(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
