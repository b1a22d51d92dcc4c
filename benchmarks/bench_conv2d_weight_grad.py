"""nin_ext::conv2d_weight_grad (the training backward's weight gradient of a stride-1 conv; Winograd
tiles on the CPU) against ATen's convolution_backward asked for the weight gradient only, on the seed
NiN's block 2 (96 -> 256 channels, 5x5, 26x26) and block 3 (256 -> 384, 3x3, 12x12) shapes, with a
post-ReLU input and a masked output gradient as the backward gets them. CPU only: the op has no GPU
kernel (on a GPU the backward runs cuDNN's).

    python benchmarks/bench_conv2d_weight_grad.py [--batches 1,2,4,8,16,32]
"""
import sys

import torch

import op_bench

SHAPES = {"block2": (96, 256, 26, 5, 2), "block3": (256, 384, 12, 3, 1)}


def main():
    args = op_bench.parse_args(__doc__)
    if args.device != "cpu" or args.dtype != "float32":  # not an error: `make bench-ops` runs every op
        print(f"conv2d_weight_grad: skipped on {args.device} in {args.dtype}; its tiles run on the CPU in float32",
              file=sys.stderr)
        return
    for label, (c_in, c_out, size, k, p) in SHAPES.items():
        def make_case(batch, dtype, device, c_in=c_in, c_out=c_out, size=size, k=k, p=p):
            x = torch.relu(torch.randn(batch, c_in, size, size, device=device, dtype=dtype))
            out = size + 2 * p - k + 1
            grad = torch.randn(batch, c_out, out, out, device=device, dtype=dtype)
            grad *= torch.rand_like(grad) > 0.5
            weight = torch.empty(c_out, c_in, k, k, device=device, dtype=dtype)

            def aten():
                return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [p, p], [1, 1], False,
                                                           [0, 0], 1, [False, True, False])[1]

            return aten, (lambda: torch.ops.nin_ext.conv2d_weight_grad(grad, x, [k, k], [p, p]))

        op_bench.run("conv2d_weight_grad", label, make_case, args)


if __name__ == "__main__":
    main()
