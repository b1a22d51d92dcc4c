"""nin_ext.ops.nin_block_gap against ATen (the reference block, then adaptive_avg_pool2d(1)) at the seed
NiN's last block (384 -> 10 channels, 3x3, 5x5 maps), over a range of batch sizes.

    python benchmarks/bench_nin_block_gap.py [--device cpu] [--batches 1,2,4,8,16,32]
"""
import torch.nn.functional as F

import op_bench
from seed_shapes import block_op_args, seed_block

from nin_ext import ops


def make_case(batch, dtype, device):
    block, x = seed_block("4", batch, dtype, device)
    return ((lambda: F.adaptive_avg_pool2d(block(x), 1).flatten(1)),
            (lambda: ops.nin_block_gap(x, *block_op_args(block))))


if __name__ == "__main__":
    op_bench.run("nin_block_gap", "block4", make_case, op_bench.parse_args(__doc__))
