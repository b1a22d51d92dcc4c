"""Command line interface: ``python -m nin_ext {shapes,info,bench}``.

* ``shapes`` -- the notebook's shape walk through :class:`nin_ext.NiN` (ten lines, identical to the
  notebook's output).
* ``info``   -- versions, whether the compiled extension is loaded, CUDA build, backends, CPU model.
* ``bench``  -- eager vs torch.compile vs nin_ext, end to end and per stage (see :mod:`nin_ext.bench`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def torch_nn_name(layer) -> str:
    """Name of the torch.nn class that ``layer`` stands in for (NiNBlock -> "Sequential")."""
    for cls in type(layer).__mro__:
        if getattr(cls, "__module__", "").startswith("torch.nn"):
            return cls.__name__
    return type(layer).__name__


# --------------------------------------------------------------------------------------------- shapes
def cmd_shapes(args: argparse.Namespace) -> int:
    import torch

    import nin_ext

    if args.backend is not None:
        nin_ext.set_backend(args.backend)
    net = nin_ext.NiN()
    X = torch.rand(size=(1, 1, 224, 224))
    with torch.no_grad():
        for layer in net:
            X = layer(X)
            # Same call as the notebook: print(name, 'output shape:\t', X.shape)
            print(torch_nn_name(layer), "output shape:\t", X.shape)
    return 0


# ----------------------------------------------------------------------------------------------- info
def _auto_resolution() -> str:
    """' -> cpu on CPU tensors, ...' for the auto backend, or '' when the package cannot say."""
    import torch

    import nin_ext

    resolve = getattr(getattr(nin_ext, "backends", None), "resolve", None)
    if not callable(resolve):
        return ""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parts = []
    for dev in devices:
        try:
            parts.append(f"{resolve(torch.empty(0, device=dev))} on {dev.upper()} tensors")
        except Exception:
            return ""
    return " (" + ", ".join(parts) + ")"


def _format_info(info: dict) -> str:
    import torch

    import nin_ext

    rows = []
    rows.append(("nin_ext", str(info.get("nin_ext"))))
    tcuda = info.get("torch_cuda", torch.version.cuda)
    rows.append(("torch", str(info.get("torch")) + (f" (CUDA {tcuda})" if tcuda else " (CPU build)")))
    rows.append(("python", str(info.get("python"))))
    if info.get("extension"):
        ext = "built (nin_ext._C loaded)"
    else:
        err = info.get("extension_error")
        ext = "not loaded" + (f": {err}" if err else "")
    rows.append(("extension", ext))
    if info.get("cuda_built"):
        archs = info.get("cuda_archs")
        cuda = "yes" + (f" (archs: {archs})" if archs else "")
    else:
        cuda = "no"
    rows.append(("CUDA kernels", cuda))
    backends = info.get("backends") or []
    rows.append(("backends", ", ".join(backends) if backends else "(none)"))
    current = info.get("backend")
    if current is None:
        try:
            current = nin_ext.get_backend()
        except Exception as exc:  # pragma: no cover - depends on the package state
            current = f"? ({type(exc).__name__}: {exc})"
    if current == "auto":
        current = "auto" + _auto_resolution()
    rows.append(("backend", str(current)))
    rows.append(("CPU", str(info.get("cpu"))))
    if info.get("cpu_microkernel"):
        rows.append(("CPU kernels", f"{info['cpu_microkernel']} micro-kernel"))
    rows.append(("CPU threads", str(info.get("cpu_threads", torch.get_num_threads()))))
    gpu = info.get("gpu")
    if gpu is None and torch.cuda.is_available():
        gpu = "; ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    rows.append(("GPU", str(gpu) if gpu else "none visible"))
    known = {"nin_ext", "torch", "torch_cuda", "python", "extension", "extension_error",
             "cuda_built", "cuda_archs", "backends", "backend", "cpu", "cpu_microkernel", "cpu_threads", "gpu"}
    for key in sorted(k for k in info if k not in known):
        rows.append((str(key), str(info[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args: argparse.Namespace) -> int:
    import nin_ext

    info = nin_ext.info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=False, default=str))
    else:
        print(_format_info(info))
    return 0


# ---------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from nin_ext import bench

    return bench.run_from_args(args)


# ----------------------------------------------------------------------------------------------- main
BACKEND_CHOICES = ("auto", "cpu", "cuda", "triton", "reference")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nin_ext",
        description="nin_ext: fused Network-in-Network kernels for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{shapes,info,bench}")
    sub.required = True

    p = sub.add_parser("shapes", help="print the notebook's shape walk through nin_ext.NiN",
                       description="Build nin_ext.NiN(), feed a 1x1x224x224 random image through its "
                                   "children one at a time and print each output shape, exactly "
                                   "like the reference notebook.")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="nin_ext backend to use (default: the current one, auto unless "
                        "NIN_EXT_BACKEND says otherwise)")
    p.set_defaults(func=cmd_shapes)

    p = sub.add_parser("info", help="versions, extension/CUDA build, backends, CPU",
                       description="Print nin_ext.info() in readable form.")
    p.add_argument("--json", action="store_true", help="print nin_ext.info() as JSON")
    p.set_defaults(func=cmd_info)

    from nin_ext import bench

    p = sub.add_parser("bench", help="benchmark eager vs torch.compile vs nin_ext on NiN",
                       description=bench.DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m nin_ext shapes | head -1`
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # keep the interpreter's final flush quiet
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
