"""Whole NiN-family models, plain PyTorch against `nin_ext.fuse` of the same model: the CIFAR-10 NiN of
Lin et al. (2013; 1x1 layers of other widths than the conv, an average pool between blocks) and the
seed notebook's NiN, in eval mode, on random inputs.

    python benchmarks/bench_fused_models.py [--device cpu] [--repeat 10] [--batches 1,64]

Prints a table (median ms, speedup, error against the float64 model) and writes
fused_models_<device>_<dtype>.csv into --out (default results/ops/).
"""
import sys

import torch
import torch.nn as nn

import nin_ext
import op_bench


def cifar10_nin():
    """The CIFAR-10 NiN of Lin et al. (2013): three blocks, a max and an average pool, dropout."""
    def block(c_in, c0, c1, c2, k):
        return nn.Sequential(nn.Conv2d(c_in, c0, k, padding=k // 2), nn.ReLU(), nn.Conv2d(c0, c1, 1), nn.ReLU(),
                             nn.Conv2d(c1, c2, 1), nn.ReLU())
    return nn.Sequential(block(3, 192, 160, 96, 5), nn.MaxPool2d(3, 2, padding=1), nn.Dropout(0.5),
                         block(96, 192, 192, 192, 5), nn.AvgPool2d(3, 2, padding=1), nn.Dropout(0.5),
                         block(192, 192, 192, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


# name: (model builder, input shape of one image)
MODELS = {
    "cifar10_nin": (cifar10_nin, (3, 32, 32)),
    "seed_nin": (nin_ext.reference.nin_net, (1, 224, 224)),
}


def main():
    args = op_bench.parse_args(__doc__, lambda p: p.add_argument("--models", default=",".join(MODELS)))
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = [int(b) for b in (args.batches or "1,64").split(",")]
    repeat = args.repeat or (50 if device.type == "cuda" else 10)
    commit_tag = op_bench.commit_tag()
    machine = op_bench.machine_name(device)
    print(f"fused models | {machine} | torch {torch.__version__} | {args.dtype} | commit {commit_tag}", file=sys.stderr)
    rows = []
    torch.manual_seed(0)
    with torch.no_grad():
        for name in args.models.split(","):
            build, image = MODELS[name]
            model = build().to(device=device, dtype=dtype).eval()
            fused = nin_ext.fuse(model).eval()
            for batch in batches:
                x = torch.randn(batch, *image, device=device, dtype=dtype)
                expected = build().to(device=device, dtype=torch.float64).eval()
                expected.load_state_dict(model.state_dict())
                err = op_bench.rel_err(fused(x), expected(x.double()))
                fns = {"eager": lambda: model(x), "nin_ext": lambda: fused(x)}
                for fn in fns.values():
                    fn()
                stats = op_bench.time_round_robin(fns, device, repeat)
                eager_ms, ours_ms = stats["eager"][1], stats["nin_ext"][1]
                rows.append({"model": name, "batch": batch, "eager_ms": round(eager_ms, 3),
                             "nin_ext_ms": round(ours_ms, 3), "speedup": round(eager_ms / ours_ms, 3),
                             "rel_err_vs_float64": f"{err:.1e}", "dtype": args.dtype, "device": machine,
                             "commit": commit_tag})
                print(f"{name:>12} batch {batch:>4}: eager {eager_ms:9.2f} ms  nin_ext {ours_ms:9.2f} ms"
                      f"  x{eager_ms / ours_ms:5.2f}  err {err:.1e}")
    op_bench.write_csv(rows, args.out, f"fused_models_{device.type}_{args.dtype}.csv")


if __name__ == "__main__":
    main()
