"""Shared harness of the per-op benchmarks (bench_<op>.py): every backend of one nin_ext op against
ATen over a range of batch sizes, written as a CSV table and a PNG plot (time and speedup vs batch).

Timing: for each batch size, the candidates (ATen first, then each available nin_ext backend on the
device) run round-robin, the order rotating every repetition; each sample is one call, the GPU is
synchronized around it; the median is reported with the interquartile range. Before timing, each
backend's output is checked against ATen's (max relative error in the CSV).
"""
import argparse
import csv
import os
import statistics
import sys
import time

import torch

import nin_ext
from nin_ext._info import cpu_model
from nin_ext.bench import CpuMeter, git_commit

DEFAULT_BATCHES = {"cpu": [1, 2, 4, 8, 16, 32], "cuda": [1, 8, 32, 64, 128, 256]}
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(description, extra=None, batches=True):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    if batches:
        p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: by device)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per candidate and batch")
    p.add_argument("--out", default=os.path.join(HERE, "results", "ops"), help="output folder")
    if extra:
        extra(p)
    return p.parse_args()


def commit_tag():
    """The commit the benchmark runs, "+dirty" when the tree has changes, or "unknown"."""
    commit, dirty = git_commit()
    return f"{commit}{'+dirty' if dirty else ''}" if commit else "unknown"


def write_csv(rows, out, name):
    """Writes the rows (dicts with the same keys) to out/name and says so on stderr."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}", file=sys.stderr)


def machine_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(y, ref):
    y, ref = y.double(), ref.double()
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() if ref.numel() else 0.0


def _backends_on(device):
    """The nin_ext backends that run tensors of this device (reference is ATen: it is the baseline)."""
    on_device = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}[device.type]
    return [b for b in nin_ext.available_backends() if b in on_device]


def time_round_robin(fns, device, repeat):
    samples = {name: [] for name in fns}
    names = list(fns)
    for rep in range(repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
            for name, s in samples.items()}


def run(op_name, case_label, make_case, args):
    """Times `op_name` over the batch sizes. make_case(batch, dtype, device) returns (aten_fn, nin_fn):
    nin_fn runs the op through nin_ext's public API under the backend that is set."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else DEFAULT_BATCHES[device.type]
    repeat = args.repeat or (50 if device.type == "cuda" else 10)
    backends = _backends_on(device)
    tag = commit_tag()
    machine = machine_name(device)
    print(f"{op_name} {case_label} | {machine} | torch {torch.__version__} | {args.dtype} | commit {tag}",
          file=sys.stderr)
    rows, meter = [], CpuMeter()
    with torch.no_grad():
        for batch in batches:
            aten_fn, nin_fn = make_case(batch, dtype, device)
            expected = aten_fn()
            fns = {"aten": aten_fn}
            errors = {"aten": 0.0}
            for backend in backends:
                nin_ext.set_backend(backend)
                errors[backend] = rel_err(nin_fn(), expected)
                fns[backend] = (lambda b: lambda: (nin_ext.set_backend(b), nin_fn()))(backend)
            for fn in fns.values():  # warm-up (Triton compiles, caches fill)
                fn()
            before = meter.snapshot()
            stats = time_round_robin(fns, device, repeat)
            load = meter.foreign(before, meter.snapshot())
            nin_ext.set_backend("auto")
            for name, (q1, median, q3) in stats.items():
                rows.append({"op": op_name, "case": case_label, "batch": batch, "backend": name,
                             "median_ms": round(median, 4), "q1_ms": round(q1, 4), "q3_ms": round(q3, 4),
                             "speedup_vs_aten": round(stats["aten"][1] / median, 3),
                             "rel_err_vs_aten": f"{errors[name]:.1e}", "dtype": args.dtype,
                             "device": machine, "commit": tag,
                             "foreign_cpu_load": None if load is None else round(load, 2)})
                print(f"  batch {batch:>4} {name:>7}: {median:9.3f} ms  x{stats['aten'][1] / median:5.2f} vs aten"
                      f"  err {errors[name]:.1e}", file=sys.stderr)
    stem = f"{op_name}_{case_label}_{device.type}_{args.dtype}".replace(" ", "")
    write_csv(rows, args.out, stem + ".csv")
    _plot(rows, f"{op_name} {case_label} | {machine} | {args.dtype} | {tag}", os.path.join(args.out, stem + ".png"))


def _plot(rows, title, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib, or `make bench-ops`)", file=sys.stderr)
        return
    fig, (ax_time, ax_speed) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == name]
        batches = [r["batch"] for r in mine]
        ax_time.plot(batches, [r["median_ms"] for r in mine], marker="o", label=name)
        ax_speed.plot(batches, [r["speedup_vs_aten"] for r in mine], marker="o", label=name)
    for ax, label in ((ax_time, "median time (ms)"), (ax_speed, "speedup vs ATen")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_time.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)
