"""nin_ext.ops.nin_block against ATen (the reference block) across the NiN family, not only the seed:
the seed's four blocks, the CIFAR-10 NiN of Lin et al. (2013), and blocks with large kernels, strides,
few output channels, small batches and small maps, which take the CPU backend's other paths (the
shifted products, a strided block's polyphase form, bands of rows for one large image, direct tiles across
small images, the direct path's conv by the pixel-broadcast kernel or its gather by lanes). One batch per
shape, chosen so that a call does about a GFLOP or less.

    python benchmarks/bench_block_shapes.py [--device cpu] [--repeat 10] [--shapes NAME,NAME]
    python benchmarks/bench_block_shapes.py --random 40 [--seed 77] [--without-broadcast]

Prints a table (median ms, speedup, the path the CPU backend takes) and writes
block_shapes_<device>_<dtype>.csv (random_shapes_<seed>_... with --random) into --out (default
results/ops/). --random draws that many family shapes instead (kernels 1-11, strides 1-4, 1-384
channels, 16-224 pixel maps); --without-broadcast also times the CPU backend with its pixel-broadcast
conv turned off (nin_ext._C.set_broadcast_conv), interleaved with the others.
"""
import random
import sys

import torch

import nin_ext
import op_bench
from seed_shapes import block_op_args

from nin_ext import _C, ops

# name: (in, out, kernel, stride, padding, input height = width, batch)
SHAPES = {
    "seed1": (1, 96, 11, 4, 0, 224, 16),
    "seed2": (96, 256, 5, 1, 2, 26, 16),
    "seed3": (256, 384, 3, 1, 1, 12, 16),
    "seed4": (384, 10, 3, 1, 1, 5, 16),
    "cifar1": (3, 192, 5, 1, 2, 32, 64),
    "cifar2": (96, 192, 5, 1, 2, 16, 64),
    "cifar3": (192, 192, 3, 1, 1, 8, 64),
    "k7_wide_b1": (32, 256, 7, 1, 3, 96, 1),
    "k7_valid_b1": (128, 96, 7, 1, 0, 96, 1),
    "k5_to10_b1": (96, 10, 5, 1, 2, 224, 1),
    "k11_to16_b1": (48, 16, 11, 1, 5, 64, 1),
    "k11_to10_b3": (256, 10, 11, 1, 0, 32, 3),
    "k7_narrow": (32, 32, 7, 1, 3, 32, 8),
    "k7_rows_of_16": (48, 192, 7, 1, 3, 16, 3),
    "k11s2_to10": (192, 10, 11, 2, 0, 64, 2),
    "k3s2": (128, 128, 3, 2, 1, 56, 16),
    "k5s4_small_maps": (128, 192, 5, 4, 0, 28, 20),
    "k7s2": (16, 16, 7, 2, 3, 224, 3),
    "k3_to32_7x7_maps": (256, 32, 3, 1, 0, 7, 64),
    "k3s2_to16_small_maps": (384, 16, 3, 2, 0, 16, 64),
    "k5s2_to32_small_maps": (128, 32, 5, 2, 0, 11, 64),
    "k11s4_to16": (384, 16, 11, 4, 0, 28, 26),
    "k11s4_to32_2x2_outputs": (96, 32, 11, 4, 0, 16, 64),
    "k5s3_8ch_2x2_outputs": (8, 64, 5, 3, 0, 10, 64),
}


def random_shapes(count, seed):
    """`count` family shapes drawn from `seed`, each with a batch that makes a call about a GFLOP."""
    rng, shapes = random.Random(seed), {}
    while len(shapes) < count:
        c_in = rng.choice([1, 3, 16, 32, 48, 64, 96, 128, 192, 256, 384])
        c_out = rng.choice([10, 16, 32, 64, 96, 128, 160, 192, 256, 384])
        k = rng.choice([1, 3, 3, 5, 5, 7, 11])
        s = rng.choice([1, 1, 2, 4]) if k > 1 else rng.choice([1, 2])
        p = rng.choice([0, k // 2])
        hw = rng.choice([16, 28, 32, 56, 64, 96, 112, 224])
        if hw + 2 * p < k:
            continue
        oh = (hw + 2 * p - k) // s + 1
        gflop_per_image = 2 * oh * oh * c_out * (c_in * k * k + 2 * c_out) / 1e9
        batch = max(1, min(64, int(1.0 / gflop_per_image)))
        shapes[f"r{len(shapes)}"] = (c_in, c_out, k, s, p, hw, batch)
    return shapes


def path_of(c_in, c_out, k, s, p, hw, batch):
    """The CPU backend's path for a float32 call of these shapes (csrc/cpu/nin_block_run_cpu.h)."""
    shapes = ((batch, c_in, hw, hw), (c_out, c_in, k, k), c_out, c_out, (s, s), (p, p))
    if m := _C.winograd_tile_size(*shapes):
        if s > 1:  # the polyphase form's kernel
            r, form = -(-k // s), " polyphase"
        elif k > 7:  # the split form's pieces
            r, form = -(-k // -(-k // 7)), " split"
        else:
            r, form = k, ""
        return f"winograd F({m}x{m}, {r}x{r})" + form
    if _C.shifted_conv(*shapes):
        return "shifted" + (" polyphase" if s > 1 else "") + f", {_C.shifted_bands(*shapes)} band(s)"
    conv = ", broadcast" if _C.direct_conv_by_broadcast(*shapes) else ""
    return "direct" + conv + f", tiles of {_C.direct_tile_pixels(*shapes)} pixels"


def main():
    def extra(p):
        p.add_argument("--shapes", default=None, help="names from SHAPES (default: all of them)")
        p.add_argument("--random", type=int, default=0, help="time this many random family shapes instead")
        p.add_argument("--seed", type=int, default=77)
        p.add_argument("--without-broadcast", action="store_true",
                       help="also time nin_ext with the CPU pixel-broadcast conv off")

    args = op_bench.parse_args(__doc__, extra, batches=False)
    shapes = random_shapes(args.random, args.seed) if args.random else SHAPES
    names = args.shapes.split(",") if args.shapes else list(shapes)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    repeat = args.repeat or (50 if device.type == "cuda" else 10)
    commit_tag = op_bench.commit_tag()
    machine = op_bench.machine_name(device)
    print(f"nin_block shapes | {machine} | torch {torch.__version__} | {args.dtype} | commit {commit_tag}",
          file=sys.stderr)
    rows = []
    torch.manual_seed(0)
    with torch.no_grad():
        for name in names:
            c_in, c_out, k, s, p, hw, batch = shapes[name]
            block = nin_ext.reference.nin_block(c_in, c_out, k, s, p).to(device=device, dtype=dtype).eval()
            x = torch.randn(batch, c_in, hw, hw, device=device, dtype=dtype)
            fns = {"aten": lambda: block(x), "nin_ext": lambda: ops.nin_block(x, *block_op_args(block))}
            if args.without_broadcast:
                fns["nin_ext_without_broadcast"] = lambda: without_broadcast(lambda: fns["nin_ext"]())
            err = op_bench.rel_err(fns["nin_ext"](), fns["aten"]())
            for fn in fns.values():
                fn()
            stats = op_bench.time_round_robin(fns, device, repeat)
            aten_ms, ours_ms = stats["aten"][1], stats["nin_ext"][1]
            oh = (hw + 2 * p - k) // s + 1
            gflop = 2 * batch * oh * oh * c_out * (c_in * k * k + 2 * c_out) / 1e9
            path = path_of(c_in, c_out, k, s, p, hw, batch) if device.type == "cpu" else ""
            rows.append({"shape": name, "in": c_in, "out": c_out, "kernel": k, "stride": s, "padding": p,
                         "hw": hw, "batch": batch, "gflop": round(gflop, 3), "aten_ms": round(aten_ms, 4),
                         "nin_ext_ms": round(ours_ms, 4), "speedup": round(aten_ms / ours_ms, 3),
                         **({"without_broadcast_ms": round(stats["nin_ext_without_broadcast"][1], 4)}
                            if args.without_broadcast else {}),
                         "rel_err_vs_aten": f"{err:.1e}", "cpu_path": path, "dtype": args.dtype,
                         "device": machine, "commit": commit_tag})
            print(f"{name:>16} {c_in:>4}->{c_out:<4} k{k} s{s} p{p} {hw:>3}x{hw:<3} b{batch:<3}"
                  f" aten {aten_ms:8.3f} ms  nin_ext {ours_ms:8.3f} ms  x{aten_ms / ours_ms:5.2f}"
                  f"  err {err:.1e}  {path}"
                  + (f"  (without broadcast {stats['nin_ext_without_broadcast'][1]:.3f} ms)"
                     if args.without_broadcast else ""))
    prefix = f"random_shapes_{args.seed}" if args.random else "block_shapes"
    op_bench.write_csv(rows, args.out, f"{prefix}_{device.type}_{args.dtype}.csv")


def without_broadcast(fn):
    """fn() with the CPU backend's pixel-broadcast conv turned off."""
    previous = _C.set_broadcast_conv(False)
    try:
        return fn()
    finally:
        _C.set_broadcast_conv(previous)


if __name__ == "__main__":
    main()
