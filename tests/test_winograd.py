"""The CPU backend's Winograd path F(m x m, r x r) of the block's spatial convolution (float32, stride 1,
square kernels of 3 to 7 taps, at least 32 input and 64 output channels, or 10 output channels on the
shapes where that pays; m = 2, 3 or 4 where m + r - 1 <= 8, chosen per call by the least work), against
float64.

Its error grows with the transform's points and with the reduction's channels, so a call takes only
the sizes whose modeled error fits (winograd_accurate, csrc/cpu/winograd_cpu.h; up to about 6e-6 of
the output's scale, against about 1e-6 for direct convolution): conftest's "fwd_winograd" tolerance
bounds it elementwise by 1e-5 of the output's largest value plus 1e-5 of each value, the block's 1e-5
relative bound for float32. Every case runs with each m forced (nin_ext._C.set_winograd_mode; an m
that the kernel size has no F(m x m, r x r) for leaves the block direct) and with the choice."""
import random

import pytest
import torch

import nin_ext
from nin_ext import _C
from conftest import assert_close_ref, notebook_nin_block, ref64_fn, ref_block_fn, ref_block_gap_fn, run_python

MODES = [2, 3, 4, -1]  # forced m, then the per-call choice


@pytest.fixture(params=MODES, ids=lambda m: f"m{m}" if m > 0 else "chosen")
def winograd_mode(request):
    previous = _C.set_winograd_mode(request.param)
    yield request.param
    _C.set_winograd_mode(previous)


def _draw(rng):
    k = rng.choice([3, 5])
    # Any output size: blocks past the map's edge run on zero padding and are not written.
    h, w = rng.randint(1, 17), rng.randint(1, 17)
    return dict(n=rng.randint(1, 3), c0=rng.choice([32, 37, 96]), cc=rng.choice([64, 65, 130]),
                c1=rng.choice([5, 64]), c2=rng.choice([3, 70]), k=k, h=h, w=w,
                layout=rng.choice(["contiguous", "channels_last"]))


# Plus maps wider than one gather chunk of the AVX-512 kernel (7 to 15 blocks of a row per permute):
# a block row's run splits into chunks, the last one short.
CASES = [_draw(random.Random(31337 + i)) for i in range(10)] + [
    dict(n=2, c0=32, cc=65, c1=5, c2=3, k=k, h=5, w=61, layout="contiguous") for k in (3, 5)]

# The other kernel sizes with a Winograd path: 4x4 (F(2x2) and F(3x3)), 6x6 (the same) and 7x7 (F(2x2)
# only), at odd sizes; even kernels with padding k // 2 give maps one pixel larger than the input.
OTHER_KERNEL_CASES = [
    dict(n=2, c0=33, cc=70, c1=64, c2=5, k=4, h=13, w=10, layout="contiguous"),
    dict(n=1, c0=32, cc=64, c1=9, c2=64, k=6, h=15, w=17, layout="channels_last"),
    dict(n=3, c0=37, cc=65, c1=64, c2=7, k=7, h=9, w=11, layout="contiguous"),
    dict(n=1, c0=48, cc=96, c1=5, c2=3, k=7, h=23, w=5, layout="channels_last"),
]

# Convs into 10-63 channels (narrow_winograd_pays): stride 1, 16x16 outputs or more, at most 512 input
# channels in the form they run in.
NARROW_CASES = [
    dict(n=2, c0=40, cc=10, c1=7, c2=10, k=3, h=29, w=23, layout="contiguous"),
    dict(n=1, c0=33, cc=17, c1=20, c2=3, k=5, h=31, w=26, layout="channels_last"),
    dict(n=1, c0=64, cc=32, c1=32, c2=10, k=7, h=27, w=30, layout="contiguous"),
]


def _case_id(c):
    return "n{n}_c{c0}-{cc}-{c1}-{c2}_k{k}_{h}x{w}_{layout}".format(**c)


def _block_args(c, dtype=torch.float32):
    x = torch.rand(c["n"], c["c0"], c["h"], c["w"], dtype=dtype)
    if c["layout"] == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    k = c["k"]
    w = torch.randn(c["cc"], c["c0"], k, k, dtype=dtype) * (2.0 / (c["c0"] * k * k)) ** 0.5
    w1 = torch.randn(c["c1"], c["cc"], 1, 1, dtype=dtype) * (2.0 / c["cc"]) ** 0.5
    w2 = torch.randn(c["c2"], c["c1"], 1, 1, dtype=dtype) * (2.0 / c["c1"]) ** 0.5
    biases = [torch.randn(m, dtype=dtype) * 0.1 for m in (c["cc"], c["c1"], c["c2"])]
    return x, w, biases[0], w1, biases[1], w2, biases[2], (1, 1), (k // 2, k // 2)


def _tile_size(args):
    x, w, _, w1, _, w2, _, stride, padding = args
    return _C.winograd_tile_size(tuple(x.shape), tuple(w.shape), w1.shape[0], w2.shape[0], stride, padding)


def _check(y, args, what):
    assert_close_ref(y, ref64_fn(ref_block_fn, *args), kind="fwd_winograd", what=what)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_nin_block(cpu_backend, winograd_mode, case):
    args = _block_args(case)
    if winograd_mode > 0:
        assert _tile_size(args) == winograd_mode, "the case does not take the forced Winograd path"
    _check(nin_ext.ops.nin_block(*args), args, f"nin_block, Winograd mode {winograd_mode}")


@pytest.mark.parametrize("case", OTHER_KERNEL_CASES + NARROW_CASES, ids=_case_id)
def test_nin_block_other_kernel_sizes_and_narrow_convs(cpu_backend, winograd_mode, case):
    args = _block_args(case)
    m = _tile_size(args)
    if winograd_mode > 0:
        exists = winograd_mode + case["k"] - 1 <= 8 and (winograd_mode, case["k"]) != (4, 4)
        assert m == (winograd_mode if exists else 0), "the forced m does not run where F(m x m, r x r) exists"
    else:
        assert m > 0, "the case does not take the Winograd path"
    what = f"nin_block, {case['k']}x{case['k']} into {case['cc']} channels, Winograd mode {winograd_mode}"
    _check(nin_ext.ops.nin_block(*args), args, what)


# Shapes where forced Winograd sizes reach 1.0-2.0e-5 of the output's scale (the least-work choice
# did, before it weighed the error; benchmarks/NOTES.md, v33): F(4x4, 3x3) and 5x5 convs over 256 to
# 512 channels, the split forms of 8x8 and 11x11 kernels and the polyphase form of a strided 11x11
# one over 256 channels or more. The block is the notebook's (PyTorch's default init), the input
# normal: cancellation makes the error larger than on test_nin_block's positive inputs.
ACCURACY_CASES = [
    (512, 64, 3, 1, 1, 20, 2), (512, 64, 5, 1, 2, 20, 2), (256, 256, 3, 1, 0, 31, 2),
    (384, 256, 8, 1, 4, 24, 1), (256, 384, 11, 2, 4, 30, 1), (384, 128, 11, 1, 5, 14, 1),
]


@pytest.mark.parametrize("shape", ACCURACY_CASES, ids=lambda s: "c{}-{}_k{}s{}p{}_{}x{}_n{}".format(*s[:6], *s[5:]))
def test_choice_stays_within_the_error_bound(cpu_backend, shape):
    _check_chosen_path(shape)


def _check_chosen_path(shape):
    """The notebook's block (default init) on a normal input, by the path the CPU backend chooses,
    within the float32 bound."""
    c0, cc, k, stride, pad, hw, n = shape
    torch.manual_seed(7)
    block = notebook_nin_block(c0, cc, k, stride, pad)
    x = torch.randn(n, c0, hw, hw)
    args = (x, *(p.detach() for p in block.parameters()), (stride, stride), (pad, pad))
    previous = _C.set_winograd_mode(-1)
    try:
        y = nin_ext.ops.nin_block(*args)
    finally:
        _C.set_winograd_mode(previous)
    _check(y, args, f"nin_block {shape}")


def _wide_family_draw(rng):
    k = rng.randint(3, 11)
    stride = rng.choice([1, 1, 2, 3])
    return (rng.choice([64, 96, 192, 256, 384]), rng.choice([10, 32, 96, 256, 384]), k, stride,
            rng.randint(0, k // 2), rng.randint(max(k, 12), 32), rng.randint(1, 2))


# Random wide family blocks, whatever path each takes (the sweep of benchmarks/NOTES.md v33, on smaller
# maps): with the error left out of the choice, 3 of these 40 leave the bound.
WIDE_FAMILY_CASES = [_wide_family_draw(random.Random(3300 + i)) for i in range(40)]


@pytest.mark.parametrize("shape", WIDE_FAMILY_CASES,
                         ids=lambda s: "c{}-{}_k{}s{}p{}_{}x{}_n{}".format(*s[:6], *s[5:]))
def test_random_wide_family_blocks_within_the_bound(cpu_backend, shape):
    _check_chosen_path(shape)


def test_accuracy_bounds_the_choice():
    """F(m x m, r x r) runs only where its modeled error fits (winograd_accurate): the seed's block 2
    keeps F(4x4, 5x5) over 96 channels, while over 192 channels a 5x5 conv and over 128 a 3x3 one
    (F(4x4, 3x3): 5.7e-6 at 96 channels, 8e-6 measured at 192) fall back to smaller m."""
    size = _C.winograd_tile_size
    previous = _C.set_winograd_mode(-1)
    try:
        assert size((16, 96, 26, 26), (256, 96, 5, 5), 256, 256, (1, 1), (2, 2)) == 4
        assert size((16, 192, 26, 26), (256, 192, 5, 5), 256, 256, (1, 1), (2, 2)) in (2, 3)
        assert size((64, 192, 8, 8), (192, 192, 3, 3), 192, 192, (1, 1), (1, 1)) in (2, 3)
    finally:
        _C.set_winograd_mode(previous)


def test_narrow_convs_off_the_path():
    """Convs into fewer than 64 channels stay off the path below 10 channels, on outputs under 16x16,
    at stride 2 (their polyphase forms: the broadcast kernel ran them faster) and with more than 512
    input channels in their split form (256 -> 10 by 11x11: 1024, its error up to 1.1e-5)."""
    size = _C.winograd_tile_size
    for mode in MODES:
        previous = _C.set_winograd_mode(mode)
        try:
            assert size((4, 64, 32, 32), (9, 64, 3, 3), 9, 9, (1, 1), (1, 1)) == 0
            assert size((64, 256, 7, 7), (32, 256, 3, 3), 32, 32, (1, 1), (0, 0)) == 0
            assert size((64, 256, 10, 10), (10, 256, 3, 3), 10, 10, (1, 1), (1, 1)) == 0
            assert size((4, 64, 64, 64), (32, 64, 5, 5), 32, 32, (2, 2), (2, 2)) == 0
            assert size((3, 256, 32, 32), (10, 256, 11, 11), 10, 10, (1, 1), (0, 0)) == 0
        finally:
            _C.set_winograd_mode(previous)
    assert size((4, 64, 32, 32), (10, 64, 3, 3), 10, 10, (1, 1), (1, 1)) > 0


def test_kernel_sizes_without_a_winograd_path():
    """2x2 kernels (and the polyphase forms that have them) stay off the path, and kernels past 7x7 take
    it in their split form only (test_phase_forms.py); F(4x4, 4x4) is never used (its error); a 7x7 NiN
    block takes F(2x2, 7x7)."""
    previous = _C.set_winograd_mode(-1)
    try:
        size = _C.winograd_tile_size
        assert size((4, 64, 28, 28), (128, 64, 2, 2), 128, 128, (1, 1), (0, 0)) == 0
        assert size((4, 64, 28, 28), (128, 64, 3, 3), 128, 128, (2, 2), (1, 1)) == 0  # 2x2 phases
        # 2 x 2 pieces of 5x5, 256 channels in the form: F(2x2, 5x5), as F(4x4, 5x5) is not accurate there
        assert size((1, 64, 64, 64), (128, 64, 9, 9), 128, 128, (1, 1), (4, 4)) == 2
        assert size((16, 96, 28, 28), (192, 96, 7, 7), 192, 192, (1, 1), (3, 3)) == 2
        for mode in (2, 3, 4):
            _C.set_winograd_mode(mode)
            expected = {2: 2, 3: 3, 4: 0}[mode]
            assert size((16, 96, 28, 28), (192, 96, 4, 4), 192, 192, (1, 1), (2, 2)) == expected
    finally:
        _C.set_winograd_mode(previous)


@pytest.mark.parametrize("case", CASES[::3], ids=_case_id)
def test_nin_block_gap(cpu_backend, winograd_mode, case):
    """A block on the Winograd path with the global average pool: the block's output, then the pool."""
    args = _block_args(case)
    if winograd_mode > 0:
        assert _tile_size(args) == winograd_mode, "the case does not take the forced Winograd path"
    pooled = nin_ext.ops.nin_block_gap(*args)
    assert torch.equal(pooled, nin_ext.ops.global_avg_pool(nin_ext.ops.nin_block(*args)))
    assert_close_ref(pooled, ref64_fn(ref_block_gap_fn, *args), kind="fwd_winograd", what="nin_block_gap")


def test_training_forward_and_gradients(cpu_backend, winograd_mode):
    case = dict(n=2, c0=32, cc=64, c1=64, c2=8, k=3, h=7, w=8, layout="contiguous")
    args = list(_block_args(case))
    for i in range(7):
        args[i] = args[i].requires_grad_(True)
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(*args[:7], [1, 1], [1, 1])
    _check(out, args, "nin_block_with_hidden output")
    expected_h0 = torch.relu(torch.nn.functional.conv2d(args[0].double(), args[1].double(), args[2].double(), 1, 1))
    assert ((h0.double() - expected_h0).abs().max() / expected_h0.abs().max()).item() < 1e-5
    out.sum().backward()
    x64 = [a.detach().double().requires_grad_(True) for a in args[:7]]
    ref_block_fn(*x64, (1, 1), (1, 1)).sum().backward()
    for a, a64 in zip(args[:7], x64):
        assert ((a.grad.double() - a64.grad).abs().max() / a64.grad.abs().max()).item() < 1e-4


def test_seed_blocks_match_the_direct_path(cpu_backend):
    """Blocks 2 and 3 of the seed net, Winograd (this process) against direct (NIN_EXT_CPU_WINOGRAD=0)."""
    code = (
        "import torch, nin_ext\n"
        "torch.manual_seed(0)\n"
        "for cin, cout, k, p, hw in ((96, 256, 5, 2, 26), (256, 384, 3, 1, 12)):\n"
        "    block = nin_ext.NiNBlock(cin, cout, k, 1, p)\n"
        "    x = torch.rand(2, cin, hw, hw)\n"
        "    with torch.no_grad():\n"
        "        y = block(x).double()\n"
        "        ref = nin_ext.reference.nin_block(cin, cout, k, 1, p).double()\n"
        "        ref.load_state_dict(block.state_dict())\n"
        "        y64 = ref(x.double())\n"
        "    print(((y - y64).abs().max() / y64.abs().max()).item(), y.sum().item())\n")
    errors = {}
    for flag in ("1", "0"):
        result = run_python(["-c", code], env_extra={"NIN_EXT_CPU_WINOGRAD": flag})
        assert result.returncode == 0, result.stderr
        errors[flag] = [[float(v) for v in line.split()] for line in result.stdout.splitlines()]
    for (winograd, winograd_sum), (direct, direct_sum) in zip(errors["1"], errors["0"]):
        assert winograd < 1e-5 and direct < 1e-5, errors
        assert winograd_sum != direct_sum, "the two runs took the same path"


# The least-work choice of m for the seed's blocks 2 and 3, per micro-kernel: the work model counts
# whole panels, so the choice follows the kernel's panel widths (benchmarks/NOTES.md, v8, has the
# timings that back the AVX-512 choice). F(4x4, 3x3) over block 3's 256 channels is never taken: its
# error (winograd_accurate).
SEED_BLOCK_CHOICES = {
    "amx": {1: (4, 2), 16: (4, 3), 32: (4, 3)},  # the AVX-512 kernel's panels
    "avx512": {1: (4, 2), 16: (4, 3), 32: (4, 3)},
    "avx2": {1: (3, 3), 16: (4, 3), 32: (4, 3)},
    "portable": {1: (3, 3), 16: (4, 3), 32: (4, 3)},
}


@pytest.mark.parametrize("batch", [1, 16, 32])
def test_choice_for_the_seed_blocks(batch):
    """Blocks 2 and 3 take the least-work m for the micro-kernel in use; blocks 1 (11x11, stride 4)
    and 4 (10 output channels) stay direct."""
    block2, block3 = SEED_BLOCK_CHOICES[_C.cpu_microkernel][batch]
    previous = _C.set_winograd_mode(-1)
    try:
        size = _C.winograd_tile_size
        assert size((batch, 96, 26, 26), (256, 96, 5, 5), 256, 256, (1, 1), (2, 2)) == block2
        assert size((batch, 256, 12, 12), (384, 256, 3, 3), 384, 384, (1, 1), (1, 1)) == block3
        assert size((batch, 1, 224, 224), (96, 1, 11, 11), 96, 96, (4, 4), (0, 0)) == 0
        assert size((batch, 384, 5, 5), (10, 384, 3, 3), 10, 10, (1, 1), (1, 1)) == 0
    finally:
        _C.set_winograd_mode(previous)


# Tiles of few blocks (one image, small maps: 9 to 20 blocks at m = 2, fewer at larger m, however the
# tiles are split) into channel counts that fill the swapped kernel's channel panels (64, 96) or leave a
# tail (130). Not 65: with AVX2's 16-lane panels it pads to 80, and a tile of 12 blocks stays plain.
CHANNEL_LANES_CASES = [
    dict(n=1, c0=37, cc=64, c1=5, c2=70, k=3, h=7, w=5, layout="contiguous"),
    dict(n=1, c0=96, cc=130, c1=64, c2=3, k=5, h=8, w=10, layout="channels_last"),
    dict(n=1, c0=256, cc=96, c1=96, c2=10, k=3, h=6, w=6, layout="contiguous"),
]


@pytest.mark.parametrize("case", CHANNEL_LANES_CASES, ids=_case_id)
def test_channel_lanes_give_the_same_bits(cpu_backend, winograd_mode, case):
    """Winograd tiles of few blocks run their products swapped (the output channels in the vector lanes,
    the blocks as the rows): each product is the plain kernel's sum in the same order, so every op
    gives the same bits as with the swapped kernel off."""
    blocks = case["n"] * ((case["h"] + 1) // 2) * ((case["w"] + 1) // 2)  # the most, at m = 2
    assert _C.winograd_channel_lanes(case["cc"], blocks), "the case's tiles do not run swapped"
    args = _block_args(case)
    if winograd_mode > 0:
        assert _tile_size(args) == winograd_mode, "the case does not take the forced Winograd path"

    def outputs():
        return (nin_ext.ops.nin_block(*args), nin_ext.ops.nin_block_gap(*args),
                nin_ext.ops.nin_block_max_pool(*args, 3, 2), *torch.ops.nin_ext.nin_block_with_hidden(*args[:7], [1, 1], list(args[8])))

    swapped = outputs()
    previous = _C.set_channel_lanes(False)
    try:
        plain = outputs()
    finally:
        _C.set_channel_lanes(previous)
    for got, want in zip(swapped, plain):
        assert torch.equal(got, want)
    _check(swapped[0], args, f"nin_block with channel lanes, Winograd mode {winograd_mode}")


def test_channel_lanes_only_where_they_save_products():
    """Tiles of a full pixel panel of blocks stay plain; so do few channels (their panel would be padded)
    and tiles of blocks that fill all but a few of the panel's lanes."""
    lanes = _C.winograd_channel_lanes
    nr = {"amx": 32, "avx512": 32, "avx2": 16}.get(_C.cpu_microkernel, 8)
    assert not lanes(384, nr)
    assert not lanes(nr // 4, nr // 2)
    if _C.cpu_microkernel != "portable":
        assert lanes(384, nr // 2)
        assert not lanes(384, nr - 1)


@pytest.mark.parametrize("mode", [1, 5, -2])
def test_set_winograd_mode_rejects_unknown_modes(mode):
    with pytest.raises(ValueError, match="mode must be -1, 0, 2, 3 or 4"):
        _C.set_winograd_mode(mode)


def test_same_bits_for_any_thread_count(cpu_backend):
    """The Winograd tiles hold fewer blocks so that they divide evenly among the threads; every block
    is computed the same way in any tile, so the output has the same bits for any thread count."""
    args = _block_args(dict(n=3, c0=32, cc=64, c1=64, c2=8, k=5, h=13, w=11, layout="contiguous"))
    threads = torch.get_num_threads()
    try:
        outputs = []
        for n_threads in (1, 2, 3, 4):
            torch.set_num_threads(n_threads)
            outputs.append(nin_ext.ops.nin_block(*args))
    finally:
        torch.set_num_threads(threads)
    assert _tile_size(args) > 0
    assert all(torch.equal(outputs[0], y) for y in outputs[1:])
