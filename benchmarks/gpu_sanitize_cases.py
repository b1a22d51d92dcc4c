"""Runs each nin_ext CUDA op once on tiny shapes, for benchmarks/gpu_validate.sh to run under
compute-sanitizer (memcheck, racecheck). The shapes leave partial tiles, partial channel chunks and
partial reduction chunks; every dtype path (TF32, exact fp32, fp64, fp16, bf16) and both layouts run.
Exits non-zero when an op raises; the sanitizer reports the memory errors and races."""
import sys

import torch

import nin_ext
from nin_ext import ops


def block_args(dtype, channels_last, c0=3, cc=20, c1=70, c2=5, k=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c0, 7, 6, generator=g)
    params = [torch.randn(cc, c0, k, k, generator=g), torch.randn(cc, generator=g),
              torch.randn(c1, cc, 1, 1, generator=g), torch.randn(c1, generator=g),
              torch.randn(c2, c1, 1, 1, generator=g), torch.randn(c2, generator=g)]
    x = x.to(device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return [x] + [p.to(device="cuda", dtype=dtype) for p in params] + [[1, 1], [1, 1]]


def main():
    nin_ext.set_backend("cuda")
    cases = [(torch.float32, True), (torch.float32, False), (torch.float64, False), (torch.float16, False),
             (torch.bfloat16, False)]
    for dtype, allow_tf32 in cases:
        torch.backends.cudnn.allow_tf32 = allow_tf32
        for channels_last in (False, True):
            args = block_args(dtype, channels_last)
            ops.nin_block(*args)
            ops.nin_block_gap(*args)
            ops.global_avg_pool(args[0])
            torch.cuda.synchronize()
            print(f"ok {dtype} tf32={allow_tf32} channels_last={channels_last}", flush=True)
    # wide channels: 16-pixel tiles, several channel chunks per layer
    torch.backends.cudnn.allow_tf32 = True
    ops.nin_block(*block_args(torch.float32, False, c0=2, cc=1024, c1=1024, c2=130, k=1))
    torch.cuda.synchronize()
    print("ok wide", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
