"""The CPU backend's direct path on small maps (csrc/cpu/nin_block_tiles_cpu.h, direct_tiling): a tile
holds several whole images one after another, so that a map of a few pixels does not leave most of a
panel's lanes empty. A tile's pixels then cross images in the gather, the writes and the global
average pool's sums; each case is checked against the float64 reference, in float32 and float64."""
import pytest
import torch

import nin_ext
from nin_ext import _C
from conftest import assert_close_ref, assert_same_bits_for_any_thread_count, ref64_fn, ref_block_fn, ref_block_gap_fn

# (n, c0, h, w, cc, c1, c2, kernel, stride, padding, layout): odd batches (a short last tile), maps of
# 1 to 49 pixels, strides and padding, every input layout. Output rows of 1-3 pixels (the 3x3 maps' 1x1
# outputs, the 11x11 kernel's 2x2) are gathered lane by lane, the others by runs of a row.
CASES = [
    (20, 128, 28, 28, 19, 7, 10, (5, 5), (4, 4), (0, 0), "contiguous"),
    (13, 32, 16, 15, 64, 3, 5, (5, 5), (4, 4), (2, 2), "channels_last"),
    (17, 16, 27, 28, 33, 33, 2, (5, 3), (4, 3), (2, 1), "sliced"),
    (64, 5, 3, 3, 7, 9, 4, (3, 3), (1, 1), (0, 0), "contiguous"),
    (11, 24, 9, 7, 40, 17, 3, (3, 3), (2, 2), (1, 0), "channels_last"),
    (11, 8, 5, 6, 64, 17, 3, (3, 3), (1, 1), (1, 1), "contiguous"),
    (9, 40, 16, 16, 48, 8, 5, (11, 11), (4, 4), (0, 0), "sliced"),
]


def _ids(c):
    n, c0, h, w, cc, c1, c2, k, s, p, layout = c
    return f"n{n}_c{c0}-{cc}-{c1}-{c2}_{h}x{w}_k{k[0]}x{k[1]}s{s[0]}x{s[1]}p{p[0]}x{p[1]}_{layout}"


def _args(case, dtype):
    n, c0, h, w, cc, c1, c2, k, s, p, layout = case
    if layout == "sliced":  # every other column of a wider map: a non-contiguous input
        x = torch.randn(n, c0, h, 2 * w, dtype=dtype)[..., ::2]
    else:
        x = torch.randn(n, c0, h, w, dtype=dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    weights = [torch.randn(cc, c0, *k, dtype=dtype) * (2.0 / (c0 * k[0] * k[1])) ** 0.5,
               torch.randn(c1, cc, 1, 1, dtype=dtype) * (2.0 / cc) ** 0.5,
               torch.randn(c2, c1, 1, 1, dtype=dtype) * (2.0 / c1) ** 0.5]
    biases = [torch.randn(m, dtype=dtype) * 0.1 for m in (cc, c1, c2)]
    return x, weights[0], biases[0], weights[1], biases[1], weights[2], biases[2], s, p


def _images_per_tile(args):
    x, w, _, w1, _, w2, _, stride, padding = args
    shapes = (tuple(x.shape), tuple(w.shape), w1.shape[0], w2.shape[0], stride, padding)
    assert _C.winograd_tile_size(*shapes) == 0 and not _C.shifted_conv(*shapes), "not the direct path"
    return _C.direct_images_per_tile(*shapes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tiles_of_whole_images(cpu_backend, case, dtype):
    torch.manual_seed(0)
    args = _args(case, dtype)
    assert _images_per_tile(args) > 1, "the case runs by tiles of one image"
    block = nin_ext.ops.nin_block(*args)
    assert_close_ref(block, ref64_fn(ref_block_fn, *args), what="nin_block")
    assert_close_ref(nin_ext.ops.nin_block_gap(*args), ref64_fn(ref_block_gap_fn, *args), what="nin_block_gap")
    assert torch.equal(nin_ext.ops.nin_block_max_pool(*args, 2, 1, 1), torch.nn.functional.max_pool2d(block, 2, 1, 1))
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(*args)
    assert torch.equal(out, block)
    x64 = [a.double() for a in args[:7]]
    expected_h0 = torch.relu(torch.nn.functional.conv2d(x64[0], x64[1], x64[2], args[7], args[8]))
    assert_close_ref(h0, expected_h0, what="hidden0")
    assert_close_ref(h1, torch.relu(torch.nn.functional.conv2d(h0.double(), x64[3], x64[4])), what="hidden1")


def test_same_bits_for_any_thread_count(cpu_backend):
    torch.manual_seed(0)
    assert_same_bits_for_any_thread_count(_args(CASES[0], torch.float32))


def test_single_image_and_large_maps_keep_tiles_of_one_image():
    """A batch below 9 images, and maps of a tile or more (the seed's block 1), keep one image per tile."""
    assert _C.direct_images_per_tile((8, 32, 16, 16), (64, 32, 5, 5), 64, 64, (4, 4), (2, 2)) == 1
    assert _C.direct_images_per_tile((32, 1, 224, 224), (96, 1, 11, 11), 96, 96, (4, 4), (0, 0)) == 1
