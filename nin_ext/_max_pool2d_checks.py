"""Argument checks and output size of max_pool2d: the Python twin of csrc/max_pool2d_checks.h.

As in _nin_block_checks, each check is a plain `if ... raise RuntimeError(...)`.
"""


def max_pool2d_output_size(size, kernel, stride, pad, ceil_mode):
    """torch's pooling output size (dilation 1): with ceil_mode the last window must start inside
    the input or its left padding."""
    span = size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_max_pool2d_args(x, kernel_size, stride, padding, ceil_mode, op):
    """Checks the arguments of max_pool2d; returns the output's (OH, OW)."""
    if x.dim() != 4:
        raise RuntimeError(f"{op}: expected x to be a 4-d (N, C, H, W) tensor, got {x.dim()}-d input of shape "
                           f"{list(x.shape)}")
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: expected x to have a floating-point dtype, got {x.dtype}")
    if not (len(kernel_size) == 2 and kernel_size[0] > 0 and kernel_size[1] > 0):
        raise RuntimeError(f"{op}: expected kernel_size to be two positive integers, got {list(kernel_size)}")
    if not (len(stride) == 2 and stride[0] > 0 and stride[1] > 0):
        raise RuntimeError(f"{op}: expected stride to be two positive integers, got {list(stride)}")
    if not (len(padding) == 2 and all(0 <= padding[d] <= kernel_size[d] // 2 for d in (0, 1))):
        raise RuntimeError(f"{op}: expected padding to be non-negative and at most half of kernel_size "
                           f"{list(kernel_size)}, got {list(padding)}")
    if not (x.shape[1] > 0 and x.shape[2] > 0 and x.shape[3] > 0):
        raise RuntimeError(f"{op}: expected x to have non-zero channel and spatial sizes, got shape {list(x.shape)}")
    output_size = tuple(max_pool2d_output_size(x.shape[d], kernel_size[d - 2], stride[d - 2], padding[d - 2],
                                               ceil_mode) for d in (2, 3))
    if not (output_size[0] > 0 and output_size[1] > 0):
        raise RuntimeError(f"{op}: output size is too small: x of spatial size {x.shape[2]} x {x.shape[3]} gives "
                           f"{output_size[0]} x {output_size[1]} with kernel_size {list(kernel_size)}, "
                           f"stride {list(stride)}, padding {list(padding)}")
    return output_size
