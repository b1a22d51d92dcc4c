"""nin_ext.ops.nin_block_max_pool against ATen (the reference block, then max_pool2d with kernel 3 and
stride 2) at the seed NiN's first three blocks and an RGB NiN's block 1, each with the pool that follows it,
over a range of batch sizes.

    python benchmarks/bench_nin_block_max_pool.py [--blocks 1,2,3,1rgb] [--device cpu] [--batches 1,2,4,8,16,32]
"""
import torch.nn.functional as F

import op_bench
from seed_shapes import block_op_args, seed_block

from nin_ext import ops


def main():
    args = op_bench.parse_args(__doc__, lambda p: p.add_argument("--blocks", default="1,2,3,1rgb"))
    for index in args.blocks.split(","):
        def make_case(batch, dtype, device, index=index):
            block, x = seed_block(index, batch, dtype, device)
            return ((lambda: F.max_pool2d(block(x), 3, 2)),
                    (lambda: ops.nin_block_max_pool(x, *block_op_args(block), 3, 2)))

        op_bench.run("nin_block_max_pool", f"block{index}+pool", make_case, args)


if __name__ == "__main__":
    main()
