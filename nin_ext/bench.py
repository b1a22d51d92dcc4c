"""``python -m nin_ext bench``: eager vs torch.compile vs nin_ext on the notebook's NiN (1x224x224;
--in-channels 3 for an RGB NiN, Cx224x224).

Models
  eager    nin_ext.reference.nin_net() in eval mode (the notebook's network).
  compile  torch.compile of that same module (CPU: Inductor with freezing; CUDA: mode max-autotune by
           default). Compile time is excluded from the timings (the first warm-up call compiles) and
           reported separately.
  nin_ext  nin_ext.NiN loaded from the reference's state_dict, backend from --backend. Other backends
           available on the device can be timed as extra rows (--extra-backends).

Stages: block1, pool1, block2, pool2, block3, pool3, block4+gap (the reference's children 7, 8, 9 vs
nin_ext's fused block + global average pool), and end-to-end. Each stage's input is precomputed; the
models' corresponding layers are timed round-robin (the order rotates every repetition, so drift hits
every model alike), synchronizing the GPU around every sample, under torch.no_grad.

Accuracy: each model's output (once per stage, outside the timings) against a float64 run of the
reference with the same weights and the same (cast) input: rel err = max|y - y64| / max|y64|.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ._info import cpu_model

# (name, indices of the reference's children that make up the stage)
STAGES: List[Tuple[str, Tuple[int, ...]]] = [
    ("block1", (0,)),
    ("pool1", (1,)),
    ("block2", (2,)),
    ("pool2", (3,)),
    ("block3", (4,)),
    ("pool3", (5,)),
    ("block4+gap", (7, 8, 9)),
]
E2E = "end-to-end"
STAGE_NAMES = [s for s, _ in STAGES] + [E2E]
# Children of the net that are the identity in eval mode and belong to no stage.
_SKIPPED_CHILDREN = (6,)  # Dropout

LOAD_WARN = 0.10  # warn when other processes used >= 10% of the CPUs while timing
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
# Backends that can run on each device type, in order of preference for "auto".
_DEVICE_BACKENDS = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

DESCRIPTION = __doc__ + """
Defaults: --device cuda if available else cpu; --batch 16 (CPU) / 256 (CUDA); --repeat 10 (CPU) /
50 (CUDA); --warmup 2 (CPU) / 10 (CUDA); dtype float32.

Per-stage torch.compile: each stage is also compiled on its own for the per-stage compile column
(--stage-compile, on by default; the stage compiles reuse most of the end-to-end compile's
kernels, and the footer reports every compile time). --no-stage-compile skips them: the compile
column is then filled for the end-to-end row only.

Progress goes to stderr; the table to stdout; --json FILE writes every sample and the metadata.
"""


# ------------------------------------------------------------------------------------------ arguments
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 16 CPU, 256 CUDA)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="default float32")
    p.add_argument("--in-channels", type=int, default=1,
                   help="the network's input channels (default 1, the notebook's; 3 for RGB images)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed repetitions per model and stage (default 10 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per model and stage before timing; the first one compiles "
                        "(default 2 CPU, 10 CUDA; at least 1)")
    p.add_argument("--number", type=int, default=1,
                   help="calls per timed sample; a sample is their mean (default 1)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="nin_ext backend for the nin_ext column (default auto)")
    p.add_argument("--extra-backends", default="auto", metavar="LIST",
                   help="more nin_ext backends to time as extra rows: comma list, 'all' (every "
                        "available backend that runs on the device), 'none', or 'auto' (default: "
                        "all but 'reference' and the main one)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip torch.compile entirely")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: 'default' on CPU, 'max-autotune' on CUDA)")
    p.add_argument("--no-freezing", dest="freezing", action="store_false",
                   help="CPU: do not set torch._inductor.config.freezing (on by default, the "
                        "fastest mode measured; always off for float64, which it cannot compile)")
    p.add_argument("--stage-compile", dest="stage_compile", action="store_true", default=True,
                   help="also torch.compile each stage on its own for the per-stage rows (default; "
                        "7 more compiles after the end-to-end one)")
    p.add_argument("--no-stage-compile", dest="stage_compile", action="store_false",
                   help="compile end to end only; per-stage compile cells stay empty")
    p.add_argument("--stages", dest="stages", action="store_true", default=True,
                   help="time every stage as well as end to end (default)")
    p.add_argument("--no-stages", dest="stages", action="store_false",
                   help="time end to end only")
    p.add_argument("--tf32", choices=("on", "off", "default"), default="default",
                   help="CUDA: set torch.backends.cudnn.allow_tf32 and "
                        "torch.backends.cuda.matmul.allow_tf32 (default: leave torch's defaults, "
                        "cudnn on / matmul off)")
    p.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on",
                   help="CUDA: torch.backends.cudnn.benchmark (default on: eager's best convs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and input (default 0)")
    p.add_argument("--peak-gflops", type=float, default=None, metavar="GFLOPS",
                   help="the device's fp32 peak (CPU: benchmarks/fma_peak.cpp) to print nin_ext's "
                        "stage rates as a share of")
    p.add_argument("--json", dest="json_file", default=None, metavar="FILE",
                   help="write every sample and the metadata to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


# ------------------------------------------------------------------------------------------- helpers
def _cpu_capability() -> Optional[str]:
    """The vector ISA torch's CPU kernels use here (AVX2, AVX512, ...)."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


def git_commit() -> Tuple[Optional[str], Optional[bool]]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None, None
        commit = out.stdout.strip() or None
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                            capture_output=True, text=True, timeout=10)
        dirty = bool(st.stdout.strip()) if st.returncode == 0 else None
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _err_str(exc: BaseException, limit: int = 300) -> str:
    """One line: the exception's type and first line, plus the underlying error that Dynamo/Inductor
    wrap ("backend='inductor' raised:\nRuntimeError: ...") when there is one."""
    import re

    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    s = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    for ln in lines[1:]:
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failed)\b.*:", ln):
            s += f" {ln}"
            break
    return s if len(s) <= limit else s[: limit - 3] + "..."


@contextlib.contextmanager
def _conv_gflop_counter(net):
    """Counts, while open, the work of net's Conv2d calls in GFLOP (into the yielded one-item
    list) as direct convolution counts it: 2 x the multiply-adds; bias, ReLU and pools left out. A
    stage's rate is this over its time, so paths that do fewer multiplications (Winograd tiles) can
    run above the device's peak."""
    import torch

    total = [0.0]

    def count(mod, _inputs, out):
        kh, kw = mod.kernel_size
        total[0] += 2e-9 * out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def _quantiles(xs: Sequence[float]) -> Tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, statistics.median(xs), q3


class CpuMeter:
    """How much CPU *other* processes used over an interval (Linux /proc; None elsewhere).

    busy time of all CPUs from /proc/stat minus the CPU time of this process and its descendants
    (Inductor's compile workers included), as a fraction of wall time x CPU count.
    """

    def __init__(self):
        self.tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ncpu = os.cpu_count() or 1

    def _busy(self) -> float:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        v = [int(x) for x in parts[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return (sum(v[:8]) - idle) / self.tck

    def _mine(self) -> float:
        import resource

        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            total += ru.ru_utime + ru.ru_stime
        # live descendants (not yet in RUSAGE_CHILDREN)
        me = os.getpid()
        procs = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            rest = st[st.rfind(")") + 2:].split()
            procs[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / self.tck)
        children: Dict[int, List[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(me, []))
        while stack:
            pid = stack.pop()
            total += procs[pid][1]
            stack.extend(children.get(pid, []))
        return total

    def snapshot(self) -> Optional[Tuple[float, float, float]]:
        try:
            return time.perf_counter(), self._busy(), self._mine()
        except Exception:
            return None

    def foreign(self, a, b) -> Optional[float]:
        """Fraction (0..1) of all CPUs used by other processes between snapshots a and b."""
        if a is None or b is None or b[0] - a[0] <= 0:
            return None
        other = (b[1] - a[1]) - (b[2] - a[2])
        return max(0.0, min(1.0, other / ((b[0] - a[0]) * self.ncpu)))


class Progress:
    def __init__(self, total: int, quiet: bool = False):
        self.total, self.n, self.quiet, self.t0 = total, 0, quiet, time.perf_counter()
        self._open = False

    def start(self, msg: str) -> None:
        self.n += 1
        if self.quiet:
            return
        self._finish_open()
        w = len(str(self.total))
        print(f"[{self.n:>{w}}/{self.total}] {msg} ...", end="", file=sys.stderr, flush=True)
        self._open = True

    def done(self, msg: str = "") -> None:
        if self.quiet:
            return
        if self._open:
            print(f" {msg}" if msg else " done", file=sys.stderr, flush=True)
            self._open = False

    def note(self, msg: str) -> None:
        if not self.quiet:
            self._finish_open()
            print(msg, file=sys.stderr, flush=True)

    def _finish_open(self) -> None:
        if self._open:
            print("", file=sys.stderr, flush=True)
            self._open = False


# ---------------------------------------------------------------------------------------- the models
@dataclass
class Candidate:
    """One column of the table: a way to run each stage."""

    name: str                       # "eager", "compile", "nin_ext", "nin_ext[triton]"
    kind: str                       # "eager" | "compile" | "nin_ext"
    fns: Dict[str, Callable]        # stage -> callable(x) -> y
    backend: Optional[str] = None   # nin_ext backend to select before each call
    setup_error: Optional[str] = None


@dataclass
class Cell:
    samples_ms: List[float] = field(default_factory=list)
    first_call_s: Optional[float] = None
    rel_err: Optional[float] = None
    max_abs_err: Optional[float] = None
    error: Optional[str] = None
    skipped: Optional[str] = None

    def stats(self) -> Optional[dict]:
        if not self.samples_ms:
            return None
        q1, med, q3 = _quantiles(self.samples_ms)
        return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": min(self.samples_ms),
                "max_ms": max(self.samples_ms), "mean_ms": statistics.fmean(self.samples_ms)}

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples_ms) if self.samples_ms else None


def _seq(mod_list):
    import torch.nn as nn

    return mod_list[0] if len(mod_list) == 1 else nn.Sequential(*mod_list)


def _nin_stage_fn(net, idx: Tuple[int, ...]) -> Callable:
    """The nin_ext callable for a stage: the NiN's children of the stage, run as NiN.forward runs them
    (blocks fused, max pools by nin_ext, block 4 fused with the global average pool)."""
    import nin_ext

    return nin_ext.FusedSequential(*[net[i] for i in idx])


def _resolve_backend(requested: str, device, available: Sequence[str]) -> str:
    """The concrete backend that nin_ext runs on `device` when `requested` is selected."""
    import torch

    import nin_ext

    if requested != "auto":
        return requested
    resolve = getattr(getattr(nin_ext, "backends", None), "resolve", None)
    if callable(resolve):
        with contextlib.suppress(Exception):
            nin_ext.set_backend("auto")
            r = resolve(torch.empty(0, device=device))
            if isinstance(r, str) and r in BACKENDS and r != "auto":
                return r
    for b in _DEVICE_BACKENDS.get(device.type, ("reference",)):
        if b in available:
            return b
    return "reference"


def _select_extra_backends(spec: str, main: str, device_type: str,
                           available: Sequence[str]) -> List[str]:
    spec = (spec or "auto").strip().lower()
    runnable = [b for b in available if b in _DEVICE_BACKENDS.get(device_type, ("reference",))]
    if spec == "none":
        return []
    if spec == "auto":
        return [b for b in runnable if b not in (main, "reference")]
    if spec == "all":
        return [b for b in runnable if b != main]
    out = []
    for b in (s.strip() for s in spec.split(",")):
        if not b or b == main or b in out:
            continue
        if b not in BACKENDS or b == "auto":
            raise ValueError(f"--extra-backends: unknown backend {b!r} (choose from "
                             f"{', '.join(BACKENDS[1:])})")
        out.append(b)
    return out


# -------------------------------------------------------------------------------------------- running
def run_from_args(args: argparse.Namespace) -> int:
    try:
        results = run(args)
    except (ValueError, RuntimeError) as exc:
        print(f"nin_ext bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(results, f, indent=1, default=str)
            f.write("\n")
        print(f"wrote {args.json_file}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> dict:  # noqa: C901 - one linear procedure
    import torch

    import nin_ext
    import nin_ext.reference

    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: no CUDA GPU visible to torch")
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    on_cuda = device.type == "cuda"
    batch = args.batch if args.batch is not None else (256 if on_cuda else 16)
    repeat = args.repeat if args.repeat is not None else (50 if on_cuda else 10)
    warmup = max(1, args.warmup if args.warmup is not None else (10 if on_cuda else 2))
    number = max(1, args.number)
    if batch < 1 or repeat < 1 or args.in_channels < 1:
        raise ValueError("--batch, --repeat and --in-channels must be >= 1")
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_mode = args.compile_mode or ("max-autotune" if on_cuda else "default")
    # Inductor's freezing prepacks the conv weights with oneDNN, which has no float64 kernels.
    freezing = bool(args.freezing) and not on_cuda and dtype != torch.float64

    # Global settings, restored at the end.
    saved = {}
    if on_cuda:
        torch.cuda.set_device(device)
        saved["cudnn.benchmark"] = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
        saved["cudnn.allow_tf32"] = torch.backends.cudnn.allow_tf32
        saved["matmul.allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        if args.tf32 != "default":
            torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    saved_backend = None
    with contextlib.suppress(Exception):
        saved_backend = nin_ext.get_backend()
    restore_cfg = _configure_compile(args.compile, freezing)

    def sync():
        if on_cuda:
            torch.cuda.synchronize(device)

    try:
        available = list(nin_ext.available_backends())
        main_backend = _resolve_backend(args.backend, device, available)
        extra_backends = _select_extra_backends(args.extra_backends, main_backend, device.type,
                                                available)
        stages = STAGE_NAMES if args.stages else [E2E]
        stage_compile = bool(args.compile and args.stage_compile and args.stages)

        # Step count for the progress lines: setup, float64 reference, then per stage one warm-up
        # step per model plus one timing step.
        n_models = 2 + (1 if args.compile else 0) + len(extra_backends)
        n_models_stage = n_models - (1 if args.compile and not stage_compile else 0)
        total = 2 + sum((n_models if s == E2E else n_models_stage) + 1 for s in stages)
        prog = Progress(total, quiet=args.quiet)

        # ------------------------------------------------------------------- build the models
        prog.start(f"setup: models on {device}, batch {batch}, {args.dtype}")
        torch.manual_seed(args.seed)
        master = nin_ext.reference.nin_net(args.in_channels).eval()
        gen = torch.Generator().manual_seed(args.seed)
        x_master = torch.rand((batch, args.in_channels, 224, 224), generator=gen)

        eager = copy.deepcopy(master).to(device=device, dtype=dtype).eval()
        for p in eager.parameters():
            p.requires_grad_(False)
        ref64 = copy.deepcopy(eager).to(torch.float64).eval()  # the very weights the models use

        cands: List[Candidate] = []
        eager_fns = {s: _seq([eager[i] for i in idx]) for s, idx in STAGES}
        eager_fns[E2E] = eager
        cands.append(Candidate("eager", "eager", eager_fns))

        if args.compile:
            cfns: Dict[str, Callable] = {}
            err = None
            try:
                kw = {"dynamic": False}
                if compile_mode != "default":
                    kw["mode"] = compile_mode
                cfns[E2E] = torch.compile(eager, **kw)
                if stage_compile:
                    for s, idx in STAGES:
                        cfns[s] = torch.compile(_seq([eager[i] for i in idx]), **kw)
            except Exception as exc:  # torch.compile itself is lazy; this is rare
                err = _err_str(exc)
            cands.append(Candidate("compile", "compile", cfns, setup_error=err))

        nin_err = None
        nin_fns: Dict[str, Callable] = {}
        try:
            nin = nin_ext.NiN(args.in_channels).to(device=device, dtype=dtype).eval()
            nin.load_state_dict(eager.state_dict())
            for p in nin.parameters():
                p.requires_grad_(False)
            nin_fns = {s: _nin_stage_fn(nin, idx) for s, idx in STAGES}
            nin_fns[E2E] = nin
        except Exception as exc:
            nin_err = _err_str(exc)
        for b in [main_backend] + extra_backends:
            name = "nin_ext" if b == main_backend else f"nin_ext[{b}]"
            err = nin_err
            if err is None:
                try:
                    nin_ext.set_backend(b)
                except Exception as exc:
                    err = _err_str(exc)
            cands.append(Candidate(name, "nin_ext", nin_fns, backend=b, setup_error=err))
        prog.done(f"backend {main_backend}" + (f" (+{', '.join(extra_backends)})"
                                                if extra_backends else ""))

        # -------------------------------------------- float64 reference: stage inputs and targets
        prog.start("float64 reference: stage inputs and expected outputs")
        t = time.perf_counter()
        x_dt = x_master.to(device=device, dtype=dtype)
        inputs: Dict[str, "torch.Tensor"] = {E2E: x_dt}
        expected: Dict[str, "torch.Tensor"] = {}
        gflop: Dict[str, float] = {}
        with torch.no_grad():
            h64 = x_dt.to(torch.float64)
            with _conv_gflop_counter(ref64) as work:
                expected[E2E] = ref64(h64)
            gflop[E2E] = work[0]
            for s, idx in (STAGES if args.stages else []):
                xin = h64.to(dtype)  # the stage's input, in the bench dtype
                inputs[s] = xin
                with _conv_gflop_counter(ref64) as work:
                    expected[s] = _seq([ref64[i] for i in idx])(xin.to(torch.float64))
                gflop[s] = work[0]
                h64 = expected[s]
                nxt = idx[-1] + 1
                while nxt in _SKIPPED_CHILDREN:  # identity in eval mode (Dropout)
                    h64 = ref64[nxt](h64)
                    nxt += 1
        sync()
        del h64
        prog.done(f"{time.perf_counter() - t:.1f} s")

        # --------------------------------------------------------------------------- the stages
        cells: Dict[str, Dict[str, Cell]] = {s: {} for s in stages}
        meter = CpuMeter()
        foreign_load: Dict[str, Optional[float]] = {}
        order = [E2E] + [s for s in stages if s != E2E]  # end to end first: its compile dominates
        for s in order:
            xin = inputs[s]
            active: List[Candidate] = []
            for c in cands:
                cell = Cell()
                cells[s][c.name] = cell
                fn = c.fns.get(s)
                if c.kind == "compile" and fn is None and c.setup_error is None:
                    cell.skipped = "per-stage compile off (--no-stage-compile)"
                    continue
                prog.start(f"{s}: {c.name} warm-up x{warmup}"
                           + (" (compiling)" if c.kind == "compile" else ""))
                if c.setup_error is not None or fn is None:
                    cell.error = c.setup_error or "no callable"
                    prog.done(f"FAILED: {cell.error}")
                    continue
                try:
                    with torch.no_grad():
                        _select(c)
                        sync()
                        t0 = time.perf_counter()
                        y = fn(xin)
                        sync()
                        cell.first_call_s = time.perf_counter() - t0
                        for _ in range(warmup - 1):
                            _select(c)
                            y = fn(xin)
                        sync()
                        # accuracy, once, outside the timings
                        _select(c)
                        y = fn(xin)
                        _check_output(y, expected[s])
                        diff = (y.to(torch.float64) - expected[s]).abs().max().item()
                        ref_max = expected[s].abs().max().item()
                        cell.max_abs_err = diff
                        cell.rel_err = diff / ref_max if ref_max > 0 else diff
                        del y
                except Exception as exc:
                    cell.error = _err_str(exc)
                    if os.environ.get("NIN_EXT_BENCH_TRACEBACK"):
                        traceback.print_exc()
                    prog.done(f"FAILED: {cell.error}")
                    continue
                extra = f"first call {cell.first_call_s:.2f} s"
                if c.kind == "compile":
                    extra = f"compiled in {cell.first_call_s:.1f} s"
                prog.done(f"{extra}, rel err {_fmt_err(cell.rel_err)}")
                active.append(c)

            prog.start(f"{s}: timing {repeat} reps x {len(active)} models"
                       + (f" x {number} calls" if number > 1 else ""))
            if active:
                snap0 = meter.snapshot()
                _time_round_robin(active, s, xin, cells[s], repeat, number, sync)
                foreign_load[s] = meter.foreign(snap0, meter.snapshot())
            msg = (", ".join(f"{c.name} {cells[s][c.name].median:.2f} ms" for c in active)
                   if active else "nothing to time")
            if foreign_load.get(s) is not None and foreign_load[s] >= LOAD_WARN:
                msg += f" (other processes used {foreign_load[s]:.0%} of the CPUs)"
            prog.done(msg)
    finally:
        restore_cfg()
        if on_cuda:
            torch.backends.cudnn.benchmark = saved["cudnn.benchmark"]
            torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]
            torch.backends.cuda.matmul.allow_tf32 = saved["matmul.allow_tf32"]
        if saved_backend is not None:
            with contextlib.suppress(Exception):
                nin_ext.set_backend(saved_backend)

    wall = time.perf_counter() - t_start
    return _collect(args, device, batch, dtype, repeat, warmup, number, compile_mode, freezing,
                    stage_compile, main_backend, extra_backends, stages, cands, cells, wall,
                    foreign_load, gflop)


def _select(c: Candidate) -> None:
    if c.backend is not None:
        import nin_ext

        nin_ext.set_backend(c.backend)


def _check_output(y, ref) -> None:
    if tuple(y.shape) != tuple(ref.shape):
        raise RuntimeError(f"output shape {tuple(y.shape)} != reference {tuple(ref.shape)}")
    if y.dtype != ref.dtype and not y.is_floating_point():
        raise RuntimeError(f"output dtype {y.dtype} is not floating point")


def _time_round_robin(active, stage, xin, cells, repeat, number, sync) -> None:
    import torch

    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with torch.no_grad():
            for r in range(repeat):
                k = r % len(active)
                for c in active[k:] + active[:k]:  # rotate who goes first
                    fn = c.fns[stage]
                    _select(c)
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(number):
                        y = fn(xin)
                    sync()
                    dt = (time.perf_counter() - t0) / number
                    del y
                    cells[c.name].samples_ms.append(dt * 1e3)
    finally:
        if gc_was:
            gc.enable()


def _configure_compile(enabled: bool, freezing: bool) -> Callable[[], None]:
    """Set Dynamo/Inductor options for the bench; returns a function that restores them."""
    if not enabled:
        return lambda: None
    import torch._dynamo.config as dcfg
    import torch._inductor.config as icfg

    old = []

    def setv(mod, key, value):
        if hasattr(mod, key):
            old.append((mod, key, getattr(mod, key)))
            setattr(mod, key, value)

    # Every nn.Sequential shares one forward code object: allow a recompile per stage and never
    # fall back to dynamic shapes.
    for key in ("recompile_limit", "cache_size_limit"):
        setv(dcfg, key, 64)
    for key in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        setv(dcfg, key, 512)
    setv(dcfg, "automatic_dynamic_shapes", False)
    if freezing:
        setv(icfg, "freezing", True)

    def restore():
        for mod, key, value in reversed(old):
            setattr(mod, key, value)

    return restore


# ----------------------------------------------------------------------------------------- results
def _collect(args, device, batch, dtype, repeat, warmup, number, compile_mode, freezing,
             stage_compile, main_backend, extra_backends, stages, cands, cells, wall,
             foreign_load, gflop) -> dict:
    import torch

    import nin_ext

    commit, dirty = git_commit()
    info = {}
    with contextlib.suppress(Exception):
        info = nin_ext.info()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    meta = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": ["python", "-m", "nin_ext"] + sys.argv[1:]
        if sys.argv and sys.argv[0].endswith("__main__.py") else list(sys.argv),
        "commit": commit,
        "git_dirty": dirty,
        "machine": {
            "cpu": cpu_model(),
            "cpu_capability": _cpu_capability(),
            "gpu": gpu,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "hostname": platform.node(),
        },
        "versions": {
            "nin_ext": getattr(nin_ext, "__version__", None),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        },
        "nin_ext_info": info,
    }
    config = {
        "device": str(device),
        "batch": batch,
        "in_channels": args.in_channels,
        "dtype": str(dtype).replace("torch.", ""),
        "repeat": repeat,
        "warmup": warmup,
        "number": number,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "backend_requested": args.backend,
        "backend": main_backend,
        "extra_backends": extra_backends,
        "compile": bool(args.compile),
        "compile_mode": compile_mode if args.compile else None,
        "freezing": freezing if args.compile else None,
        "stage_compile": stage_compile,
        "stages": stages,
        "peak_gflops": args.peak_gflops,
        "timer": "time.perf_counter around each sample, torch.cuda.synchronize before and after "
                 "on CUDA; models interleaved round-robin, order rotated each repetition",
    }
    if device.type == "cuda":
        config["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32,
                          "matmul": torch.backends.cuda.matmul.allow_tf32, "requested": args.tf32}
        config["cudnn_benchmark"] = args.cudnn_benchmark == "on"
    out_stages = {}
    for s in stages:
        row = {}
        for c in cands:
            cell = cells[s].get(c.name)
            if cell is None:
                continue
            row[c.name] = {
                "backend": c.backend,
                "samples_ms": cell.samples_ms,
                "stats": cell.stats(),
                "first_call_s": cell.first_call_s,
                "rel_err": cell.rel_err,
                "max_abs_err": cell.max_abs_err,
                "error": cell.error,
                "skipped": cell.skipped,
            }
        sp = {}
        for c in cands:
            if c.kind != "nin_ext":
                continue
            mine = cells[s][c.name].median
            for base in ("eager", "compile"):
                other = cells[s].get(base)
                if mine and other is not None and other.median:
                    sp[f"{c.name}_vs_{base}"] = other.median / mine
        row["speedups"] = sp
        row["gflop"] = gflop.get(s)
        row["foreign_cpu_load"] = foreign_load.get(s)
        out_stages[s] = row
    return {"meta": meta, "config": config, "stages": out_stages, "wall_s": wall,
            "columns": [c.name for c in cands]}


def _fmt_ms(st: Optional[dict]) -> str:
    if not st:
        return ""
    med, half_iqr = st["median_ms"], (st["q3_ms"] - st["q1_ms"]) / 2
    digits = 2 if med < 100 else 1
    return f"{med:.{digits}f} ±{half_iqr:.{digits}f}"


def _fmt_err(x: Optional[float]) -> str:
    if x is None:
        return ""
    if x != x:
        return "nan"
    return "0" if x == 0 else f"{x:.1e}"


def _gflops(stage_row: dict, col: str) -> Optional[float]:
    """The column's rate on the stage in GFLOP/s (_conv_gflop_counter's count), None where it has
    no convolutions or no time."""
    st = (stage_row.get(col) or {}).get("stats")
    work = stage_row.get("gflop")
    return work / st["median_ms"] * 1e3 if work and st else None


def format_table(res: dict) -> str:
    cfg, meta = res["config"], res["meta"]
    cols = res["columns"]
    peak = cfg.get("peak_gflops")
    main_cols = [c for c in ("eager", "compile", "nin_ext") if c in cols]
    extra_cols = [c for c in cols if c.startswith("nin_ext[")]
    machine = meta["machine"]["gpu"]
    if not machine:
        cap = meta["machine"].get("cpu_capability")
        machine = meta["machine"]["cpu"] + (f" ({cap})" if cap else "")
    lines = []
    be = cfg["backend"] + (f" (requested {cfg['backend_requested']})"
                           if cfg["backend_requested"] != cfg["backend"] else "")
    lines.append(f"NiN forward {cfg.get('in_channels', 1)}x224x224 | {machine} | torch {meta['versions']['torch']} | "
                 f"{cfg['threads']} threads | device {cfg['device']} | batch {cfg['batch']} | "
                 f"{cfg['dtype']} | nin_ext {meta['versions']['nin_ext']} backend {be}")
    sub = []
    if cfg["compile"]:
        sub.append(f"compile: mode {cfg['compile_mode']}"
                   + (", freezing" if cfg["freezing"] else "")
                   + (", per stage too" if cfg["stage_compile"] else
                      "; per-stage compile off (--no-stage-compile)"))
    else:
        sub.append("compile: off")
    if "tf32" in cfg:
        sub.append(f"tf32 cudnn {'on' if cfg['tf32']['cudnn'] else 'off'} / matmul "
                   f"{'on' if cfg['tf32']['matmul'] else 'off'}, cudnn.benchmark "
                   f"{'on' if cfg['cudnn_benchmark'] else 'off'}")
    commit = meta.get("commit")
    if commit:
        sub.append(f"commit {commit}{'+dirty' if meta.get('git_dirty') else ''}")
    lines.append(" | ".join(sub))
    lines.append(f"ms per batch: median ±half-IQR of {cfg['repeat']} interleaved reps "
                 f"(warm-up {cfg['warmup']}); rel err = max|y - y64| / max|y64| vs the float64 "
                 f"reference")
    lines.append("GFLOP/s: the stage's convolutions counted as direct convolution (2 x multiply-adds) "
                 "over nin_ext's median; Winograd tiles do fewer multiplications"
                 + (f"; peak {peak:g} GFLOP/s (--peak-gflops)" if peak else ""))

    header = ["stage"] + [f"{c} ms" for c in main_cols]
    has_nin = "nin_ext" in cols
    has_comp = "compile" in cols
    if has_nin:
        header += ["vs eager"] + (["vs compile"] if has_comp else []) + ["nin_ext GFLOP/s"]
        header += ["of peak"] if peak else []
    header += [f"err {c}" for c in main_cols]

    def row_for(stage: str, nin_col: str, label: str, show_base: bool) -> List[str]:
        r = res["stages"][stage]
        cells = [label]
        for c in main_cols:
            src = nin_col if c == "nin_ext" else c
            d = r.get(src)
            if c != "nin_ext" and not show_base:
                cells.append("")
            elif d is None:
                cells.append("")
            elif d.get("error"):
                cells.append("FAILED")
            elif d.get("skipped"):
                cells.append("-")
            else:
                cells.append(_fmt_ms(d["stats"]))
        if has_nin:
            sp = r.get("speedups", {})
            for base in ("eager", "compile"):
                if base == "compile" and not has_comp:
                    continue
                v = sp.get(f"{nin_col}_vs_{base}")
                cells.append(f"{v:.2f}x" if v else "")
            rate = _gflops(r, nin_col)
            cells.append(f"{rate:.0f}" if rate else "")
            if peak:
                cells.append(f"{rate / peak:.0%}" if rate else "")
        for c in main_cols:
            src = nin_col if c == "nin_ext" else c
            d = r.get(src)
            cells.append("" if (d is None or (c != "nin_ext" and not show_base))
                         else _fmt_err(d.get("rel_err")))
        return cells

    SEP = None
    rows: List[Optional[List[str]]] = []
    stages = cfg["stages"]
    for s in stages:
        if s == E2E and len(stages) > 1:
            rows.append(SEP)
        rows.append(row_for(s, "nin_ext", s, True))
    for ec in extra_cols:
        b = ec[len("nin_ext["):-1]
        rows.append(SEP)
        for s in stages:
            rows.append(row_for(s, ec, f"{s} [{b}]", False))

    widths = [max(len(header[i]), *(len(r[i]) for r in rows if r is not None))
              for i in range(len(header))]

    def fmt(cells):
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines.append("")
    lines.append(fmt(header))
    lines.append(rule)
    for r in rows:
        lines.append(rule if r is SEP else fmt(r))

    # Footer: throughput, compile times, failures.
    foot = []
    e2e = res["stages"].get(E2E, {})
    tp = []
    for c in cols:
        st = (e2e.get(c) or {}).get("stats")
        if st:
            tp.append(f"{c} {cfg['batch'] / st['median_ms'] * 1e3:.1f}")
    if tp:
        foot.append("images/s (end-to-end median): " + ", ".join(tp))
    comp = []
    for s in stages:
        d = res["stages"][s].get("compile")
        if d and d.get("first_call_s") is not None and not d.get("error"):
            comp.append((s, d["first_call_s"]))
    if comp:
        total = sum(t for _, t in comp)
        foot.append("compile time (first call, excluded from timings): "
                    + ", ".join(f"{s} {t:.1f} s" for s, t in comp)
                    + (f"; total {total:.1f} s" if len(comp) > 1 else ""))
    for s in stages:
        for c in cols:
            d = res["stages"][s].get(c)
            if d and d.get("error"):
                foot.append(f"FAILED {s} / {c}: {d['error']}")
    loads = {s: res["stages"][s].get("foreign_cpu_load") for s in stages}
    loads = {s: v for s, v in loads.items() if v is not None}
    if loads:
        worst = max(loads, key=loads.get)
        line = (f"CPU used by other processes while timing: mean {statistics.fmean(loads.values()):.0%}"
                f", max {loads[worst]:.0%} ({worst})")
        if loads[worst] >= LOAD_WARN:
            line = "WARNING: " + line + " -- timings are disturbed; rerun on a quiet machine"
        foot.append(line)
    foot.append(f"bench wall time {res['wall_s']:.1f} s")
    lines.append("")
    lines.extend(foot)
    return "\n".join(lines)
