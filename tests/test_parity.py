"""Forward parity of nin_ext ops/modules against the float64 notebook reference."""
import random

import pytest
import torch

import nin_ext
from nin_ext import ops
from conftest import (as_reference, assert_close_ref, device_for, notebook_nin_block, ref64,
                      ref64_fn, ref_block_fn, ref_block_gap_fn, runs_winograd, same_memory_format)

CHANNELS = [1, 3, 5, 7, 17, 33]
LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed"]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _draw_config(rng, i):
    h, w = rng.randint(1, 23), rng.randint(1, 23)
    if i % 3 == 0:                      # square pad / kernel / stride
        p = rng.randint(0, 3)
        pad = (p, p)
        k = rng.randint(1, min(11, min(h, w) + 2 * p))
        kernel = (k, k)
        s = rng.randint(1, 4)
        stride = (s, s)
    else:
        pad = (rng.randint(0, 3), rng.randint(0, 3))
        kernel = (rng.randint(1, min(11, h + 2 * pad[0])), rng.randint(1, min(11, w + 2 * pad[1])))
        stride = (rng.randint(1, 4), rng.randint(1, 4))
    return dict(
        n=rng.choice([0, 1, 1, 2, 2, 3]) if i % 10 else 0,  # every 10th: empty batch
        c0=rng.choice(CHANNELS), c1=rng.choice(CHANNELS), c2=rng.choice(CHANNELS),
        h=h, w=w, kernel=kernel, stride=stride, pad=pad,
        bias=[rng.random() > 0.25 for _ in range(3)],
        layout=LAYOUTS[i % len(LAYOUTS)],
        int_args=(i % 3 == 0) and rng.random() > 0.5,   # pass plain ints when square
    )


CONFIGS = [_draw_config(random.Random(20251125 + i), i) for i in range(40)]


def _cfg_id(c):
    return (f"n{c['n']}_c{c['c0']}-{c['c1']}-{c['c2']}_{c['h']}x{c['w']}_k{c['kernel'][0]}x{c['kernel'][1]}"
            f"_s{c['stride'][0]}x{c['stride'][1]}_p{c['pad'][0]}x{c['pad'][1]}_{c['layout']}"
            f"_b{''.join('1' if b else '0' for b in c['bias'])}")


def make_input(n, c, h, w, layout, dtype=torch.float32, device="cpu", gen=None):
    """An input of logical shape (n, c, h, w) in the requested memory layout. The layout is made on the
    device (moving a view to another device would make it contiguous)."""
    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    if layout == "contiguous":
        x = draw(n, c, h, w)
    elif layout == "channels_last":
        x = draw(n, c, h, w).to(memory_format=torch.channels_last)
    elif layout == "sliced":          # every other column of a wider tensor, plus a channel offset
        x = draw(n, c + 1, h, 2 * w)[:, 1:, :, ::2]
    elif layout == "transposed":      # (n, c, w, h) transposed to (n, c, h, w)
        x = draw(n, c, w, h).transpose(2, 3)
    else:
        raise AssertionError(layout)
    assert x.shape == (n, c, h, w)
    if layout in ("sliced", "transposed") and x.numel() > 1 and h > 1 and w > 1:
        assert not x.is_contiguous()
    return x


def make_params(c0, c1, c2, kernel, bias=(True, True, True), dtype=torch.float32, device="cpu"):
    kh, kw = kernel
    w = torch.randn(c1, c0, kh, kw, dtype=dtype) / (c0 * kh * kw) ** 0.5
    b = torch.randn(c1, dtype=dtype) * 0.1 if bias[0] else None
    w1 = torch.randn(c1, c1, 1, 1, dtype=dtype) / c1 ** 0.5
    b1 = torch.randn(c1, dtype=dtype) * 0.1 if bias[1] else None
    w2 = torch.randn(c2, c1, 1, 1, dtype=dtype) / c1 ** 0.5
    b2 = torch.randn(c2, dtype=dtype) * 0.1 if bias[2] else None
    out = [w, b, w1, b1, w2, b2]
    return [t.to(device) if t is not None else None for t in out]


def _check_ref_format(y, x, params, stride, pad):
    """Output memory format must match what the fp32 reference produces for the same input."""
    y_ref = ref_block_fn(x.cpu(), *[p.cpu() if p is not None else None for p in params], stride, pad)
    assert same_memory_format(y, y_ref), (
        f"memory format differs from reference: ours (contig={y.is_contiguous()}, "
        f"cl={y.is_contiguous(memory_format=torch.channels_last)}, strides={y.stride()}), reference "
        f"(contig={y_ref.is_contiguous()}, cl={y_ref.is_contiguous(memory_format=torch.channels_last)}, "
        f"strides={y_ref.stride()})")


# --------------------------------------------------------------------------------------
# Raw op: nin_block with C0 != C1 != C2, optional biases, odd layouts
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=_cfg_id)
def test_nin_block_op_random(cfg, backend):
    dev = device_for(backend)
    c = cfg
    x = make_input(c["n"], c["c0"], c["h"], c["w"], c["layout"], device=dev)
    params = make_params(c["c0"], c["c1"], c["c2"], c["kernel"], c["bias"], device=dev)
    stride, pad = c["stride"], c["pad"]
    if c["int_args"]:
        stride, pad = stride[0], pad[0]
    x_before = x.clone()
    y = ops.nin_block(x, *params, stride, pad)
    y64 = ref64_fn(ref_block_fn, x, *params, _pair(stride), _pair(pad))
    assert y.dtype == x.dtype and y.device == x.device
    assert_close_ref(y, y64)
    assert torch.equal(x, x_before), "input was modified"
    if dev.type == "cpu":
        _check_ref_format(y, x, params, _pair(stride), _pair(pad))


@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=_cfg_id)
def test_nin_block_gap_op_random(cfg, backend):
    dev = device_for(backend)
    c = cfg
    x = make_input(c["n"], c["c0"], c["h"], c["w"], c["layout"], device=dev)
    params = make_params(c["c0"], c["c1"], c["c2"], c["kernel"], c["bias"], device=dev)
    y = ops.nin_block_gap(x, *params, c["stride"], c["pad"])
    y64 = ref64_fn(ref_block_gap_fn, x, *params, c["stride"], c["pad"])
    assert y.shape == (c["n"], c["c2"])
    assert y.dtype == x.dtype and y.device == x.device
    assert_close_ref(y, y64)


# --------------------------------------------------------------------------------------
# Module: NiNBlock vs notebook block (C1 == C2)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=_cfg_id)
def test_ninblock_module_random(cfg, backend):
    dev = device_for(backend)
    c = cfg
    kernel = c["kernel"][0] if c["kernel"][0] == c["kernel"][1] else c["kernel"]
    ref = notebook_nin_block(c["c0"], c["c1"], kernel, c["stride"], c["pad"])
    ours = nin_ext.NiNBlock(c["c0"], c["c1"], kernel, c["stride"], c["pad"])
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.to(dev)
    x = make_input(c["n"], c["c0"], c["h"], c["w"], c["layout"], device=dev)
    with torch.no_grad():
        y = ours(x)
        y_ref = ref(x.cpu())
    assert_close_ref(y, ref64(ref, x))
    if dev.type == "cpu":
        assert same_memory_format(y, y_ref), (
            f"memory format differs: ours strides {y.stride()}, reference {y_ref.stride()}")


def test_ninblock_unbatched(backend):
    dev = device_for(backend)
    ours = nin_ext.NiNBlock(3, 8, 3, 2, 1).to(dev)
    ref = as_reference(ours.cpu()); ours.to(dev)
    x = torch.randn(3, 9, 11, device=dev)
    with torch.no_grad():
        y = ours(x)
    assert y.shape == ref(x.cpu()).shape == (8, 5, 6)
    assert_close_ref(y, ref64(ref, x))


def test_ninblock_empty_batch(backend):
    dev = device_for(backend)
    ours = nin_ext.NiNBlock(3, 8, 3, 1, 1).to(dev)
    x = torch.randn(0, 3, 9, 11, device=dev)
    y = ours(x)
    assert y.shape == (0, 8, 9, 11)
    assert y.dtype == torch.float32


def test_ninblock_channels_last_output_format(backend):
    dev = device_for(backend)
    ours = nin_ext.NiNBlock(5, 16, 3, 1, 1).to(dev)
    ref = as_reference(ours.cpu()); ours.to(dev)
    x = torch.randn(2, 5, 10, 12).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = ours(x.to(dev))
        y_ref = ref(x)
    assert y_ref.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last), f"strides {y.stride()}"
    assert_close_ref(y, ref64(ref, x))


# --------------------------------------------------------------------------------------
# nin_block_gap vs block + AdaptiveAvgPool2d + Flatten; global_avg_pool vs mean
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nin_block_gap_matches_block_pool_flatten(backend, layout):
    dev = device_for(backend)
    blk = notebook_nin_block(7, 17, (3, 5), (2, 1), (1, 2))
    head = torch.nn.Sequential(blk, torch.nn.AdaptiveAvgPool2d((1, 1)), torch.nn.Flatten())
    x = make_input(3, 7, 13, 11, layout, device=dev)
    p = [t.to(dev) for t in (blk[0].weight, blk[0].bias, blk[2].weight, blk[2].bias, blk[4].weight, blk[4].bias)]
    with torch.no_grad():
        y = ops.nin_block_gap(x, *p, (2, 1), (1, 2))
    assert y.shape == (3, 17)
    assert_close_ref(y, ref64(head, x))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (0, 4, 3, 3), (3, 33, 23, 1), (2, 17, 1, 9),
                                   (2, 64, 16, 16)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "transposed"])
def test_global_avg_pool(backend, shape, layout):
    dev = device_for(backend)
    x = make_input(*shape, layout, device=dev)
    y = ops.global_avg_pool(x)
    assert y.shape == shape[:2]
    assert y.dtype == x.dtype and y.device == x.device
    assert_close_ref(y, x.double().cpu().mean((2, 3)))


def test_global_avg_pool_float64(backend):
    dev = device_for(backend)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64, device=dev)
    y = ops.global_avg_pool(x)
    assert y.dtype == torch.float64
    assert_close_ref(y, x.cpu().mean((2, 3)))


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------
def test_nin_block_gap_deterministic(backend):
    dev = device_for(backend)
    x = torch.randn(4, 17, 40, 37, device=dev)
    p = make_params(17, 48, 10, (3, 3), device=dev)
    y1 = ops.nin_block_gap(x, *p, 1, 1)
    y2 = ops.nin_block_gap(x, *p, 1, 1)
    assert torch.equal(y1, y2), f"nin_block_gap not bitwise deterministic: max diff {(y1 - y2).abs().max()}"
    z1 = ops.nin_block(x, *p, 1, 1)
    z2 = ops.nin_block(x, *p, 1, 1)
    assert torch.equal(z1, z2), "nin_block not bitwise deterministic"


# --------------------------------------------------------------------------------------
# float64 is near-exact; bf16/fp16 best effort (CPU)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS[:12], ids=_cfg_id)
def test_nin_block_float64(cfg, backend):
    dev = device_for(backend)
    c = cfg
    x = make_input(c["n"], c["c0"], c["h"], c["w"], c["layout"], dtype=torch.float64, device=dev)
    params = make_params(c["c0"], c["c1"], c["c2"], c["kernel"], c["bias"], dtype=torch.float64, device=dev)
    y = ops.nin_block(x, *params, c["stride"], c["pad"])
    assert y.dtype == torch.float64
    assert_close_ref(y, ref64_fn(ref_block_fn, x, *params, c["stride"], c["pad"]))
    g = ops.nin_block_gap(x, *params, c["stride"], c["pad"])
    assert g.dtype == torch.float64
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, x, *params, c["stride"], c["pad"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nin_block_low_precision(backend, dtype):
    dev = device_for(backend)
    x = torch.randn(2, 5, 11, 9).to(dtype)
    params = [p.to(dtype) if p is not None else None for p in make_params(5, 17, 7, (3, 3))]
    y = ops.nin_block(x.to(dev), *[p.to(dev) for p in params], 1, 1)
    assert y.dtype == dtype
    # reference from the same (already rounded) inputs, computed in float64
    assert_close_ref(y, ref64_fn(ref_block_fn, x, *params, 1, 1), dtype=dtype)
    g = ops.nin_block_gap(x.to(dev), *[p.to(dev) for p in params], 1, 1)
    assert g.dtype == dtype
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, x, *params, 1, 1), dtype=dtype)


# --------------------------------------------------------------------------------------
# Full NiN at 224x224, batch 1 (the notebook's configuration)
# --------------------------------------------------------------------------------------
def test_nin_full_224(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN().eval()
    ref = as_reference(ours).eval()
    x = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        y = ours.to(dev)(x.to(dev))
    assert y.shape == (1, 10)
    assert_close_ref(y, ref64(ref, x))


# --------------------------------------------------------------------------------------
# Weight layouts and larger channel counts (tiling remainders)
# --------------------------------------------------------------------------------------
def test_channels_last_weights(backend):
    """model.to(memory_format=channels_last) converts the 4-d weights; the reference then gives a
    channels_last output even for a contiguous input."""
    dev = device_for(backend)
    ref = notebook_nin_block(5, 12, 3, 1, 1).to(memory_format=torch.channels_last)
    ours = nin_ext.NiNBlock(5, 12, 3, 1, 1)
    ours.load_state_dict(ref.state_dict())
    ours.to(memory_format=torch.channels_last)
    x = torch.randn(2, 5, 9, 10)
    with torch.no_grad():
        y = ours.to(dev)(x.to(dev))
        y_ref = ref(x)
    assert_close_ref(y, ref64(ref, x))
    if dev.type == "cpu":
        assert same_memory_format(y, y_ref), f"ours strides {y.stride()}, reference {y_ref.stride()}"


def test_non_contiguous_weights(backend):
    dev = device_for(backend)
    x = torch.randn(2, 6, 11, 9, device=dev)
    w = torch.randn(5, 6, 3, 3, device=dev).permute(0, 1, 3, 2)                # non-contiguous (5,6,3,3)
    assert not w.is_contiguous()
    b = torch.randn(10, device=dev)[::2]
    w1 = torch.randn(5, 5, device=dev).t()[:, :, None, None]
    b1 = torch.randn(5, device=dev)
    w2 = torch.randn(4, 5, 2, 1, device=dev)[:, :, :1]
    b2 = torch.randn(8, device=dev)[1::2]
    params = [w, b, w1, b1, w2, b2]
    y = ops.nin_block(x, *params, 1, 1)
    assert_close_ref(y, ref64_fn(ref_block_fn, x, *params, (1, 1), (1, 1)))
    g = ops.nin_block_gap(x, *params, 1, 1)
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, x, *params, (1, 1), (1, 1)))


LARGE = [
    # (N, C0, H, W, C1, C2, k, s, p)
    (1, 96, 12, 12, 256, 256, 5, 1, 2),     # NiN block 2 at small spatial size
    (1, 256, 5, 5, 384, 384, 3, 1, 1),      # NiN block 3
    (2, 384, 5, 5, 10, 10, 3, 1, 1),        # NiN block 4
    (1, 1, 47, 51, 96, 96, 11, 4, 0),       # NiN block 1
    (2, 37, 9, 13, 100, 37, 3, 2, 1),       # channel counts that are not multiples of 8
    (1, 3, 70, 65, 19, 11, 3, 1, 1),        # many output pixels, odd counts
    (3, 65, 7, 7, 129, 65, 1, 1, 0),        # 1x1 first conv, counts just above powers of two
]


@pytest.mark.parametrize("case", LARGE, ids=lambda c: "n{}_c{}-{}-{}_{}x{}_k{}s{}p{}".format(
    c[0], c[1], c[4], c[5], c[2], c[3], c[6], c[7], c[8]))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nin_block_large_channels(backend, case, layout):
    dev = device_for(backend)
    n, c0, h, w, c1, c2, k, s, p = case
    x = make_input(n, c0, h, w, layout, device=dev)
    params = make_params(c0, c1, c2, (k, k), device=dev)
    y = ops.nin_block(x, *params, s, p)
    winograd = runs_winograd(backend, x, params[0], (s, s), (p, p), params[2].shape[0], params[4].shape[0])
    kind = "fwd_winograd" if winograd else "fwd"
    assert_close_ref(y, ref64_fn(ref_block_fn, x, *params, (s, s), (p, p)), kind=kind)
    g = ops.nin_block_gap(x, *params, s, p)
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, x, *params, (s, s), (p, p)))
