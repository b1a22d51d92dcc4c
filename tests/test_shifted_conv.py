"""The CPU backend's shifted-products path (csrc/cpu/nin_block_shifted_cpu.h): stride-1 blocks whose
conv reduces many input values into few channels (the seed's block 4: 384 -> 10 channels, 3x3, 5x5
maps) run their conv on a padded copy of the input, with no im2col gather. Every op that runs a block
on the CPU takes it; each case is checked against the float64 reference, in float32 and float64.
The direct path's broadcast conv (test_broadcast_conv.py) is off here: in float32 it takes some of
these shapes (few output channels), which the shifted path still runs in float64 and without it."""
import random

import pytest
import torch

import nin_ext
from nin_ext import _C
from conftest import assert_close_ref, assert_same_bits_for_any_thread_count, ref64_fn, ref_block_fn, ref_block_gap_fn


@pytest.fixture(autouse=True)
def _without_the_broadcast_conv():
    previous = _C.set_broadcast_conv(False)
    yield
    _C.set_broadcast_conv(previous)


def _draw(rng):
    kh, kw = rng.choice([(3, 3), (2, 3), (3, 5), (2, 2)])
    ph, pw = rng.randint(0, kh - 1), rng.randint(0, kw - 1)
    return dict(n=rng.randint(1, 3), c0=rng.choice([64, 97, 200]), cc=rng.choice([3, 10, 13]),
                c1=rng.choice([1, 10, 17]), c2=rng.choice([2, 10]), k=(kh, kw), p=(ph, pw),
                h=rng.randint(max(1, kh - 2 * ph), 9), w=rng.randint(max(1, kw - 2 * pw), 9),
                layout=rng.choice(["contiguous", "channels_last", "sliced"]))


def _draw_shifted(rng):
    """A draw that takes the shifted path (a tiny output in a wide padded map does not)."""
    while True:
        c = _draw(rng)
        oh, ow = c["h"] + 2 * c["p"][0] - c["k"][0] + 1, c["w"] + 2 * c["p"][1] - c["k"][1] + 1
        # shifted_conv_pays (csrc/cpu/nin_block_shifted_cpu.h) with the overhang counted as computed:
        # the path's work where it skips the overhang is less still. The tests assert the choice.
        per_pixel = c["c0"] * c["k"][0] * c["k"][1] * c["cc"] + c["cc"] * c["c1"] + c["c1"] * c["c2"]
        padded = (c["h"] + c["p"][0]) * (c["w"] + c["p"][1])
        if padded * (per_pixel + 32 * c["c0"]) < oh * ow * (per_pixel + 32 * c["c0"] * c["k"][0] * c["k"][1]):
            return c


CASES = [_draw_shifted(random.Random(4242 + i)) for i in range(12)]


def _block_args(c, dtype):
    n, c0 = c["n"], c["c0"]
    if c["layout"] == "sliced":  # every other column of a wider map: a non-contiguous input
        x = torch.randn(n, c0, c["h"], 2 * c["w"], dtype=dtype)[..., ::2]
    else:
        x = torch.randn(n, c0, c["h"], c["w"], dtype=dtype)
        if c["layout"] == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    w = torch.randn(c["cc"], c0, *c["k"], dtype=dtype) * (2.0 / (c0 * c["k"][0] * c["k"][1])) ** 0.5
    w1 = torch.randn(c["c1"], c["cc"], 1, 1, dtype=dtype) * (2.0 / c["cc"]) ** 0.5
    w2 = torch.randn(c["c2"], c["c1"], 1, 1, dtype=dtype) * (2.0 / c["c1"]) ** 0.5
    biases = [torch.randn(m, dtype=dtype) * 0.1 for m in (c["cc"], c["c1"], c["c2"])]
    return x, w, biases[0], w1, biases[1], w2, biases[2], c.get("s", (1, 1)), c["p"]


def _shapes(args):
    x, w, _, w1, _, w2, _, stride, padding = args
    return tuple(x.shape), tuple(w.shape), w1.shape[0], w2.shape[0], tuple(stride), tuple(padding)


def _shifted(args):
    return _C.shifted_conv(*_shapes(args)) and _C.winograd_tile_size(*_shapes(args)) == 0


def _assert_block_ops(args, pool):
    """The case takes the shifted path, and nin_block, nin_block_gap and nin_block_max_pool (kernel,
    stride, padding) match the float64 reference."""
    assert _shifted(args), "the case does not take the shifted path"
    block = nin_ext.ops.nin_block(*args)
    assert_close_ref(block, ref64_fn(ref_block_fn, *args), what="nin_block")
    assert_close_ref(nin_ext.ops.nin_block_gap(*args), ref64_fn(ref_block_gap_fn, *args), what="nin_block_gap")
    assert torch.equal(nin_ext.ops.nin_block_max_pool(*args, *pool), torch.nn.functional.max_pool2d(block, *pool))


def _assert_gap_gradients(args):
    """nin_block_gap's gradients for every tensor argument against the float64 reference's."""
    args = [a.detach().requires_grad_(True) if i < 7 else a for i, a in enumerate(args)]
    nin_ext.ops.nin_block_gap(*args).sum().backward()
    x64 = [a.detach().double().requires_grad_(True) for a in args[:7]]
    ref_block_gap_fn(*x64, *args[7:]).sum().backward()
    for a, a64 in zip(args[:7], x64):
        assert_close_ref(a.grad, a64.grad, kind="grad", what="gradient")


def _case_id(c):
    return "n{n}_c{c0}-{cc}-{c1}-{c2}_k{k[0]}x{k[1]}_p{p[0]}{p[1]}_{h}x{w}_{layout}".format(**c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_block_ops(cpu_backend, case, dtype):
    _assert_block_ops(_block_args(case, dtype), (2, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_training_forward_and_gradients(cpu_backend, dtype):
    args = list(_block_args(dict(n=2, c0=97, cc=10, c1=10, c2=10, k=(3, 3), p=(1, 1), h=5, w=6,
                                 layout="contiguous"), dtype))
    assert _shifted(args)
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(*args)
    x64 = [a.double() for a in args[:7]]
    expected_h0 = torch.relu(torch.nn.functional.conv2d(x64[0], x64[1], x64[2], 1, 1))
    expected_h1 = torch.relu(torch.nn.functional.conv2d(expected_h0, x64[3], x64[4]))
    assert_close_ref(h0, expected_h0, what="hidden0")
    assert_close_ref(h1, expected_h1, what="hidden1")
    assert_close_ref(out, ref64_fn(ref_block_fn, *args), what="output")
    _assert_gap_gradients(args)


@pytest.mark.parametrize("width", [1, 2, 7, 15, 16, 17, 32, 33, 48])
def test_rows_of_any_width(cpu_backend, width):
    """Rows narrower than a vector (a vector in several pieces), rows that end inside a vector (two
    pieces) and rows of whole vectors (none crossed), with the overhang skipped (widths 1, 16, 32, 48) or
    computed (the others: shifted_skips_overhang)."""
    case = dict(n=2, c0=97, cc=10, c1=10, c2=10, k=(3, 3), p=(1, 1), h=4, w=width, layout="contiguous")
    _assert_block_ops(_block_args(case, torch.float32), (2, 1, 1))


# Maps that the shifted path splits into bands of output rows: an image larger than the tiles' 1 MiB
# (the first two), or too few images to give the threads 8 tiles. Odd sizes, a short last band.
BAND_CASES = [
    dict(n=1, c0=200, cc=9, c1=10, c2=10, k=(3, 3), p=(1, 1), h=40, w=41, layout="contiguous"),
    dict(n=2, c0=160, cc=13, c1=17, c2=10, k=(5, 3), p=(2, 0), h=37, w=35, layout="channels_last"),
    dict(n=1, c0=64, cc=9, c1=10, c2=2, k=(3, 3), p=(0, 1), h=45, w=33, layout="sliced"),
    dict(n=3, c0=97, cc=3, c1=1, c2=10, k=(2, 3), p=(1, 2), h=29, w=30, layout="contiguous"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", BAND_CASES, ids=_case_id)
def test_bands_of_rows(cpu_backend, case, dtype):
    args = _block_args(case, dtype)
    assert _C.shifted_bands(*_shapes(args)) > 1, "the case runs by whole images"
    _assert_block_ops(args, (2, 2, 0))
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(*args)
    assert torch.equal(out, nin_ext.ops.nin_block(*args))
    x64 = [a.double() for a in args[:7]]
    expected_h0 = torch.relu(torch.nn.functional.conv2d(x64[0], x64[1], x64[2], args[7], case["p"]))
    assert_close_ref(h0, expected_h0, what="hidden0")
    # hidden1 from the kernel's own hidden0, so that hidden0's rounding does not count twice
    assert_close_ref(h1, torch.relu(torch.nn.functional.conv2d(h0.double(), x64[3], x64[4])), what="hidden1")


# Strided blocks that run their polyphase form (conv_phase_forms_cpu.h: stride 1, no padding, over the input's
# phases) by shifted products: long reductions into few channels, where the gather path's copies cost
# more than the form's zero taps and dropped positions. Square and non-square strides, padding, maps
# that end mid-phase, bands and whole images.
STRIDED_CASES = [
    dict(n=2, c0=192, cc=10, c1=10, c2=10, k=(11, 11), s=(2, 2), p=(0, 0), h=64, w=63, layout="contiguous"),
    dict(n=2, c0=97, cc=10, c1=17, c2=10, k=(5, 5), s=(2, 2), p=(2, 1), h=23, w=21, layout="channels_last"),
    dict(n=1, c0=64, cc=13, c1=17, c2=3, k=(7, 5), s=(2, 3), p=(3, 2), h=31, w=37, layout="sliced"),
    dict(n=3, c0=128, cc=10, c1=1, c2=10, k=(3, 3), s=(2, 2), p=(1, 1), h=19, w=17, layout="contiguous"),
    dict(n=2, c0=96, cc=10, c1=10, c2=2, k=(6, 6), s=(3, 3), p=(1, 1), h=40, w=41, layout="contiguous"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", STRIDED_CASES, ids=lambda c: _case_id(c) + "_s{s[0]}x{s[1]}".format(**c))
def test_strided_blocks_in_polyphase_form(cpu_backend, case, dtype):
    args = _block_args(case, dtype)
    _assert_block_ops(args, (3, 2, 1))
    out, h0, _ = torch.ops.nin_ext.nin_block_with_hidden(*args)
    assert torch.equal(out, nin_ext.ops.nin_block(*args))
    x64 = [a.double() for a in args[:7]]
    expected_h0 = torch.relu(torch.nn.functional.conv2d(x64[0], x64[1], x64[2], args[7], args[8]))
    assert_close_ref(h0, expected_h0, what="hidden0")


def test_strided_block_gradients(cpu_backend):
    args = list(_block_args(STRIDED_CASES[1], torch.float32))
    assert _shifted(args)
    _assert_gap_gradients(args)


def test_choice_for_the_seed_blocks():
    """Block 4 (384 -> 10 channels) takes the shifted products at any batch; blocks 2 and 3 (wide
    convs: the gather is a few percent of their work) and block 1 (stride 4) do not, nor does a 1x1
    conv (its gather is a plain copy, as the shifted path's input copy is)."""
    for batch in (1, 16, 32):
        assert _C.shifted_conv((batch, 384, 5, 5), (10, 384, 3, 3), 10, 10, (1, 1), (1, 1))
        assert not _C.shifted_conv((batch, 256, 12, 12), (384, 256, 3, 3), 384, 384, (1, 1), (1, 1))
        assert not _C.shifted_conv((batch, 96, 26, 26), (256, 96, 5, 5), 256, 256, (1, 1), (2, 2))
        assert not _C.shifted_conv((batch, 1, 224, 224), (96, 1, 11, 11), 96, 96, (4, 4), (0, 0))
        assert not _C.shifted_conv((batch, 384, 5, 5), (10, 384, 1, 1), 10, 10, (1, 1), (0, 0))


def test_padding_of_the_kernel_size_stays_on_the_gather_path(cpu_backend):
    """The shifted layout stores only the top and left padding (the bottom and right are the next
    plane's and row's), so padding as large as the kernel takes the gather path, and stays right."""
    args = _block_args(dict(n=2, c0=200, cc=4, c1=3, c2=2, k=(1, 3), p=(1, 3), h=4, w=5, layout="contiguous"),
                       torch.float32)
    assert not _C.shifted_conv(tuple(args[0].shape), tuple(args[1].shape), 3, 2, (1, 1), (1, 3))
    assert_close_ref(nin_ext.ops.nin_block(*args), ref64_fn(ref_block_fn, *args), what="nin_block")


@pytest.mark.parametrize("case", [dict(n=3, c0=97, cc=10, c1=10, c2=10, k=(3, 3), p=(1, 1), h=5, w=5,
                                       layout="contiguous"), BAND_CASES[0]], ids=["whole_images", "bands"])
def test_same_bits_for_any_thread_count(cpu_backend, case):
    assert_same_bits_for_any_thread_count(_block_args(case, torch.float32))
