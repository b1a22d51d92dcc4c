"""nin_ext::conv2d_weight_grad (the training backward's weight gradient of a block's conv: Winograd tiles
at stride 1, one im2col product for 1-2 input channels, on the CPU) against ATen's convolution_backward
asked for the weight gradient only, on the seed NiN's block 1 (1 -> 96 channels, 11x11 at stride 4,
224x224), block 2 (96 -> 256, 5x5, 26x26) and block 3 (256 -> 384, 3x3, 12x12) shapes, with a
post-ReLU input (block 1: the image) and a masked output gradient as the backward gets them. CPU only: the op has no GPU
kernel (on a GPU the backward runs cuDNN's).

    python benchmarks/bench_conv2d_weight_grad.py [--batches 1,2,4,8,16,32]
"""
import sys

import torch

import op_bench

# (C_in, C_out, input size, kernel, stride, padding)
SHAPES = {"block1": (1, 96, 224, 11, 4, 0), "block2": (96, 256, 26, 5, 1, 2), "block3": (256, 384, 12, 3, 1, 1)}


def main():
    args = op_bench.parse_args(__doc__)
    if args.device != "cpu" or args.dtype != "float32":  # not an error: `make bench-ops` runs every op
        print(f"conv2d_weight_grad: skipped on {args.device} in {args.dtype}; its kernels run on the CPU in float32",
              file=sys.stderr)
        return
    for label, (c_in, c_out, size, k, s, p) in SHAPES.items():
        def make_case(batch, dtype, device, c_in=c_in, c_out=c_out, size=size, k=k, s=s, p=p):
            x = torch.randn(batch, c_in, size, size, device=device, dtype=dtype)
            if c_in > 1:
                x = torch.relu(x)
            out = (size + 2 * p - k) // s + 1
            grad = torch.randn(batch, c_out, out, out, device=device, dtype=dtype)
            grad *= torch.rand_like(grad) > 0.5
            weight = torch.empty(c_out, c_in, k, k, device=device, dtype=dtype)

            def aten():
                return torch.ops.aten.convolution_backward(grad, x, weight, None, [s, s], [p, p], [1, 1], False,
                                                           [0, 0], 1, [False, True, False])[1]

            return aten, (lambda: torch.ops.nin_ext.conv2d_weight_grad(grad, x, [k, k], [s, s], [p, p]))

        op_bench.run("conv2d_weight_grad", label, make_case, args)


if __name__ == "__main__":
    main()
