"""The CPU backend's direct path across images (csrc/cpu/nin_block_tiling_cpu.h, direct_tiling): the
batch's pixels are cut into tiles in image-major order, so a tile crosses images where an image ends
inside it, and only the batch's last panel leaves lanes empty. A tile's pixels then cross images in
the gather, the writes and the global average pool's sums; each case is checked against the float64
reference, in float32 and float64."""
import pytest
import torch

from nin_ext import _C
from conftest import (assert_block_ops_match_float64, assert_same_bits_for_any_thread_count, block_case_args,
                      block_case_id)

# (n, c0, h, w, cc, c1, c2, kernel, stride, padding, layout): odd batches (a short last tile), maps of
# 1 to 49 pixels, strides and padding, every input layout. Output rows of 1-3 pixels (the 3x3 maps' 1x1
# outputs, the 11x11 kernel's 2x2) are gathered lane by lane, the others by runs of a row; in float32,
# convs of 16 input channels or more run the broadcast kernel instead (test_broadcast_conv.py).
CASES = [
    (20, 128, 28, 28, 19, 7, 10, (5, 5), (4, 4), (0, 0), "contiguous"),
    (13, 32, 16, 15, 64, 3, 5, (5, 5), (4, 4), (2, 2), "channels_last"),
    (17, 16, 27, 28, 33, 33, 2, (5, 3), (4, 3), (2, 1), "sliced"),
    (64, 5, 3, 3, 7, 9, 4, (3, 3), (1, 1), (0, 0), "contiguous"),
    (11, 24, 9, 7, 40, 17, 3, (3, 3), (2, 2), (1, 0), "channels_last"),
    (11, 8, 5, 6, 64, 17, 3, (3, 3), (1, 1), (1, 1), "contiguous"),
    (9, 40, 16, 16, 48, 8, 5, (11, 11), (4, 4), (0, 0), "sliced"),
]


_ids = block_case_id
_args = block_case_args


def _tile_pixels_and_map(args):
    x, w, _, w1, _, w2, _, stride, padding = args
    shapes = (tuple(x.shape), tuple(w.shape), w1.shape[0], w2.shape[0], stride, padding)
    assert _C.winograd_tile_size(*shapes) == 0 and not _C.shifted_conv(*shapes), "not the direct path"
    out = [(size + 2 * p - k) // s + 1 for size, k, s, p in zip(x.shape[2:], w.shape[2:], stride, padding)]
    return _C.direct_tile_pixels(*shapes), out[0] * out[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tiles_across_images(cpu_backend, case, dtype):
    torch.manual_seed(0)
    args = _args(case, dtype)
    tile_pixels, map_pixels = _tile_pixels_and_map(args)
    assert tile_pixels > map_pixels, "a tile holds one image's pixels at most"
    assert_block_ops_match_float64(args)


def test_same_bits_for_any_thread_count(cpu_backend):
    torch.manual_seed(0)
    assert_same_bits_for_any_thread_count(_args(CASES[0], torch.float32))


def test_tiles_are_whole_panels_of_about_equal_size():
    """Tiles of about the capacity, with no lanes left empty but the batch's last: a 7x7 map at batch 13
    (637 pixels) took two tiles of 32 lanes per image before (832 lanes), and the seed's block 1 (2916
    pixels an image) keeps tiles of about 640 pixels."""
    tile = _C.direct_tile_pixels((13, 192, 28, 28), (192, 192, 5, 5), 192, 192, (4, 4), (2, 2))
    assert -(-13 * 49 // tile) * tile < 13 * 64
    assert 512 <= _C.direct_tile_pixels((32, 1, 224, 224), (96, 1, 11, 11), 96, 96, (4, 4), (0, 0)) <= 768
