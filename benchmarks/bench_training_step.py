"""A NiN training step (forward, backward, SGD update) with nin_ext against eager PyTorch: time and peak
memory, on the CPU by default.

    python benchmarks/bench_training_step.py [--batch 16] [--repeat 10] [--device cpu] [--json FILE]

Time: the two models (the notebook's net, and nin_ext.NiN loaded from its state_dict) train on the
same batch, steps interleaved, median and interquartile range per model. Dropout is on (train mode).
Peak memory: in a fresh process per model, the growth of the peak resident set size over four
steps, from before the first (CPU; on CUDA, torch.cuda.max_memory_allocated over the same steps).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import nin_ext
from nin_ext._info import cpu_model
from nin_ext.bench import git_commit


def _models(device):
    torch.manual_seed(0)
    eager = nin_ext.reference.nin_net().to(device)
    fused = nin_ext.NiN().to(device)
    fused.load_state_dict(eager.state_dict())
    return {"eager": eager, "nin_ext": fused}


def _step_fn(model, x, target):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(name, args):
    """Run in a fresh process: the peak memory that four training steps of one model add."""
    device = torch.device(args.device)
    model = _models(device)[name].train()
    x = torch.randn(args.batch, 1, 224, 224, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)
    step = _step_fn(model, x, target)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(4):
        step()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - base) / 2**20, peak / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--memory-of", choices=["eager", "nin_ext"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps(_peak_memory_mb(args.memory_of, args)))
        return

    device = torch.device(args.device)
    models = _models(device)
    x = torch.randn(args.batch, 1, 224, 224, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)
    steps = {name: _step_fn(model.train(), x, target) for name, model in models.items()}
    for step in steps.values():
        step()
    samples = {name: [] for name in steps}
    names = list(steps)
    for rep in range(args.repeat):
        for name in names[rep % 2:] + names[:rep % 2]:
            _sync(device)
            t0 = time.perf_counter()
            steps[name]()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)

    memory = {}
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--device", args.device,
                              "--batch", str(args.batch)], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])

    commit, dirty = git_commit()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"NiN training step (SGD, momentum 0.9), batch {args.batch}, 1x224x224, float32 | {machine} | "
          f"{torch.get_num_threads()} threads | torch {torch.__version__} | commit {commit}{'+dirty' if dirty else ''}")
    result = {"machine": machine, "commit": commit, "dirty": dirty, "batch": args.batch, "models": {}}
    eager_median = statistics.median(samples["eager"])
    for name in names:
        q1, median, q3 = statistics.quantiles(samples[name], n=4, method="inclusive")
        growth, peak = memory[name]
        print(f"  {name:>8}: {median:8.1f} ms (IQR {q1:.1f}-{q3:.1f})  x{eager_median / median:4.2f} vs eager   "
              f"peak memory +{growth:7.1f} MiB over the step (process peak {peak:.0f} MiB)")
        result["models"][name] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "peak_growth_mib": growth,
                                  "process_peak_mib": peak}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
