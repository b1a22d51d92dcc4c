"""nin_ext.ops.global_avg_pool against ATen's adaptive_avg_pool2d(1) on (N, C, H, W) maps: the seed
NiN's (N, 10, 5, 5) and, to show the memory-bound regime, the (N, 384, 12, 12) output of block 3.

    python benchmarks/bench_global_avg_pool.py [--device cpu] [--batches 1,2,4,8,16,32]
"""
import torch
import torch.nn.functional as F

import op_bench

from nin_ext import ops

SHAPES = {"10x5x5": (10, 5, 5), "384x12x12": (384, 12, 12)}


def main():
    args = op_bench.parse_args(__doc__)
    for label, shape in SHAPES.items():
        def make_case(batch, dtype, device, shape=shape):
            x = torch.randn(batch, *shape, device=device, dtype=dtype)
            return (lambda: F.adaptive_avg_pool2d(x, 1).flatten(1)), (lambda: ops.global_avg_pool(x))

        op_bench.run("global_avg_pool", label, make_case, args)


if __name__ == "__main__":
    main()
