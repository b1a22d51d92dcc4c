"""A NiN training step (forward, backward, SGD update) with nin_ext against eager PyTorch: time and peak
memory, on the CPU by default.

    python benchmarks/bench_training_step.py [--batch 16] [--repeat 10] [--device cpu] [--json FILE]

Time: the two models (the notebook's net, and nin_ext.NiN loaded from its state_dict) train on the
same batch, steps interleaved, median and interquartile range per model. Dropout is on (train mode).
Peak memory: the peak of what one step allocates through torch's allocators, above what was
allocated before it (CPU: the profiler's allocation events; CUDA: torch.cuda.max_memory_allocated).
"""
import argparse
import json
import statistics
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


def _peak_memory_mib(step, device):
    """The peak of the memory that one training step allocates through torch's allocators, above
    what was allocated before it (on the CPU from the profiler's allocation events; on CUDA from
    torch.cuda.max_memory_allocated)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()

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

    memory = {name: _peak_memory_mib(step, device) for name, step in steps.items()}

    commit, dirty = git_commit()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"NiN training step (SGD, momentum 0.9), batch {args.batch}, 1x224x224, float32 | {machine} | "
          f"{torch.get_num_threads()} threads | torch {torch.__version__} | commit {commit}{'+dirty' if dirty else ''}")
    result = {"machine": machine, "commit": commit, "dirty": dirty, "batch": args.batch, "models": {}}
    eager_median = statistics.median(samples["eager"])
    for name in names:
        q1, median, q3 = statistics.quantiles(samples[name], n=4, method="inclusive")
        print(f"  {name:>8}: {median:8.1f} ms (IQR {q1:.1f}-{q3:.1f})  x{eager_median / median:4.2f} vs eager   "
              f"peak memory of a step {memory[name]:7.1f} MiB ({memory[name] / memory['eager']:.2f}x eager's)")
        result["models"][name] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "peak_memory_mib": memory[name]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
