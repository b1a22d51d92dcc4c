"""nin_ext.ops.max_pool2d against ATen's max_pool2d (kernel 3, stride 2) at the seed NiN's three pools:
the outputs of blocks 1, 2 and 3 (96x54x54, 256x26x26, 384x12x12), over a range of batch sizes.

    python benchmarks/bench_max_pool2d.py [--device cpu] [--batches 1,2,4,8,16,32]
"""
import torch
import torch.nn.functional as F

import op_bench

from nin_ext import ops

SHAPES = {"pool1": (96, 54, 54), "pool2": (256, 26, 26), "pool3": (384, 12, 12)}


def main():
    args = op_bench.parse_args(__doc__)
    for label, shape in SHAPES.items():
        def make_case(batch, dtype, device, shape=shape):
            x = torch.randn(batch, *shape, device=device, dtype=dtype)
            return (lambda: F.max_pool2d(x, 3, 2)), (lambda: ops.max_pool2d(x, 3, 2))

        op_bench.run("max_pool2d", label, make_case, args)


if __name__ == "__main__":
    main()
