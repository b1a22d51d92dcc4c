"""The CPU backend's direct path with its conv by the pixel-broadcast kernel (csrc/cpu/broadcast_conv_cpu.h,
microkernel_broadcast_pixels.h): float32 blocks of 16 input channels or more into up to 128 output
channels (192 by 3x3 kernels) read each tap of each pixel in place from a channels-last band, with
output channels in the vector lanes. The cases cover both kernel widths and their channel tails (13,
16, 24, 40, 70, 128, 176 output channels), pixel-block tails, strides, padding, rectangular kernels, tiles of several images,
long reductions in chunks (400 channels by 11x11), and every input layout; each is checked against
the float64 reference, as are the fused pools and the hidden activations. float64 runs the im2col
path on the same shapes."""
import pytest
import torch

import nin_ext
from nin_ext import _C
from conftest import (assert_block_ops_match_float64, assert_same_bits_for_any_thread_count, block_case_args,
                      block_case_id)

# (n, c0, h, w, cc, c1, c2, kernel, stride, padding, layout)
CASES = [
    (7, 16, 9, 11, 13, 5, 3, (3, 3), (2, 1), (1, 1), "contiguous"),
    (3, 33, 17, 15, 16, 9, 7, (5, 3), (2, 1), (2, 0), "channels_last"),
    (19, 24, 9, 9, 24, 24, 10, (3, 3), (2, 2), (0, 0), "contiguous"),
    (2, 40, 23, 21, 40, 17, 33, (7, 7), (3, 3), (3, 2), "sliced"),
    (5, 64, 12, 13, 70, 11, 4, (3, 2), (2, 2), (1, 1), "contiguous"),
    (1, 20, 14, 14, 128, 96, 10, (3, 3), (1, 1), (1, 1), "channels_last"),
    (3, 400, 16, 16, 16, 8, 5, (11, 11), (4, 4), (0, 0), "contiguous"),
    (2, 24, 10, 9, 176, 16, 8, (3, 3), (2, 2), (1, 1), "contiguous"),
]


_ids = block_case_id
_args = block_case_args


def _shapes(args):
    x, w, _, w1, _, w2, _, stride, padding = args
    return tuple(x.shape), tuple(w.shape), w1.shape[0], w2.shape[0], stride, padding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_broadcast_conv_matches_float64(cpu_backend, case, dtype):
    torch.manual_seed(0)
    args = _args(case, dtype)
    shapes = _shapes(args)
    assert _C.winograd_tile_size(*shapes) == 0 and not _C.shifted_conv(*shapes), "not the direct path"
    assert _C.direct_conv_by_broadcast(*shapes), "the conv takes the im2col gather"
    assert_block_ops_match_float64(args)


def test_same_bits_for_any_thread_count(cpu_backend):
    torch.manual_seed(0)
    assert_same_bits_for_any_thread_count(_args(CASES[2], torch.float32))


def test_which_convs_take_the_broadcast_kernel():
    """Few input channels (the seed's block 1) and wide outputs (over 128 channels by kernels larger
    than 3x3, over 192 by any) keep the im2col gather. The seed's block
    4 (384 -> 10 channels on 5x5 maps) stays on the shifted path with the SIMD kernels, whose narrow
    broadcast kernel would fill 10 of its 16 or 8 lanes (the portable one's 4 lanes waste less)."""
    if nin_ext.info()["cpu_microkernel"] != "portable":
        for batch in (1, 16):
            assert _C.shifted_conv((batch, 384, 5, 5), (10, 384, 3, 3), 10, 10, (1, 1), (1, 1))
    assert not _C.direct_conv_by_broadcast((16, 1, 224, 224), (96, 1, 11, 11), 96, 96, (4, 4), (0, 0))
    assert not _C.direct_conv_by_broadcast((4, 12, 20, 20), (32, 12, 3, 3), 32, 32, (1, 1), (1, 1))
    assert not _C.direct_conv_by_broadcast((4, 64, 20, 20), (256, 64, 3, 3), 32, 32, (2, 2), (1, 1))
    assert _C.direct_conv_by_broadcast((64, 384, 16, 16), (16, 384, 3, 3), 16, 16, (2, 2), (0, 0))
    assert _C.direct_conv_by_broadcast((7, 192, 28, 28), (160, 192, 3, 3), 160, 160, (2, 2), (1, 1))
    assert not _C.direct_conv_by_broadcast((1, 384, 64, 64), (192, 384, 7, 7), 192, 192, (4, 4), (3, 3))


def test_off_switch(cpu_backend):
    """set_broadcast_conv(False) sends the same shapes to the im2col gather, with the same results
    within float32's rounding."""
    torch.manual_seed(0)
    args = _args(CASES[4], torch.float32)
    with_broadcast = nin_ext.ops.nin_block(*args)
    previous = _C.set_broadcast_conv(False)
    try:
        assert not _C.direct_conv_by_broadcast(*_shapes(args))
        without = nin_ext.ops.nin_block(*args)
    finally:
        _C.set_broadcast_conv(previous)
    assert previous and _C.direct_conv_by_broadcast(*_shapes(args))
    torch.testing.assert_close(with_broadcast, without, rtol=1e-5, atol=1e-5)
