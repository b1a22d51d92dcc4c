"""nin_ext.ops.nin_block against ATen (the reference block: conv2d + relu, two 1x1 conv2d + relu) at
each of the seed NiN's four block shapes and an RGB NiN's block 1, over a range of batch sizes.

    python benchmarks/bench_nin_block.py [--blocks 1,2,3,4,1rgb] [--device cpu] [--batches 1,2,4,8,16,32]
"""
import op_bench
from seed_shapes import block_op_args, seed_block

from nin_ext import ops


def main():
    args = op_bench.parse_args(__doc__, lambda p: p.add_argument("--blocks", default="1,2,3,4,1rgb"))
    for index in args.blocks.split(","):
        def make_case(batch, dtype, device, index=index):
            block, x = seed_block(index, batch, dtype, device)
            return (lambda: block(x)), (lambda: ops.nin_block(x, *block_op_args(block)))

        op_bench.run("nin_block", f"block{index}", make_case, args)


if __name__ == "__main__":
    main()
