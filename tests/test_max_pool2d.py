"""nin_ext's max_pool2d (the pooling between NiN blocks) against torch's max_pool2d."""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nin_ext
from nin_ext import ops
from conftest import device_for, require_extension

LAYOUTS = ["contiguous", "channels_last", "sliced"]


def _draw_config(rng, i):
    kernel = (rng.randint(1, 5), rng.randint(1, 5))
    return dict(
        n=rng.choice([0, 1, 2, 3]) if i % 8 else 0,
        c=rng.choice([1, 2, 5, 17]),
        h=rng.randint(1, 23), w=rng.randint(1, 23),
        kernel=kernel,
        stride=(rng.randint(1, 4), rng.randint(1, 4)),
        padding=(rng.randint(0, kernel[0] // 2), rng.randint(0, kernel[1] // 2)),
        ceil_mode=rng.random() < 0.5,
        layout=LAYOUTS[i % len(LAYOUTS)],
    )


CONFIGS = [_draw_config(random.Random(7001 + i), i) for i in range(48)]


def _input(cfg, dtype, device):
    """An input in the config's layout, with one NaN (a max must propagate it, as torch's does)."""
    n, c, h, w = cfg["n"], cfg["c"], cfg["h"], cfg["w"]
    if cfg["layout"] == "sliced":
        x = torch.randn(n, c + 1, h, 2 * w, dtype=dtype, device=device)[:, 1:, :, ::2]
    else:
        x = torch.randn(n, c, h, w, dtype=dtype, device=device)
        if cfg["layout"] == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    if x.numel() > 1:
        x[-1, -1, h // 2, w // 2] = float("nan")
    return x


def _pool_args(cfg):
    return cfg["kernel"], cfg["stride"], cfg["padding"], cfg["ceil_mode"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: (
    f"n{c['n']}c{c['c']}_{c['h']}x{c['w']}_k{c['kernel']}_s{c['stride']}_p{c['padding']}"
    f"_{'ceil' if c['ceil_mode'] else 'floor'}_{c['layout']}").replace(" ", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_torch(backend, cfg, dtype):
    x = _input(cfg, dtype, device_for(backend))
    try:
        expected = F.max_pool2d(x, *_pool_args(cfg)[:3], ceil_mode=cfg["ceil_mode"])
    except RuntimeError:  # torch rejects the configuration: so must we
        with pytest.raises(RuntimeError, match="max_pool2d"):
            ops.max_pool2d(x, *_pool_args(cfg))
        return
    y = ops.max_pool2d(x, *_pool_args(cfg))
    # A max picks one of its inputs: the results are identical, NaN included.
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y.nan_to_num(), expected.nan_to_num())
    assert y.dtype == expected.dtype and y.shape == expected.shape
    if y.numel() > 0:
        assert y.stride() == expected.stride()


def test_seed_shapes(backend):
    for shape in [(2, 96, 54, 54), (2, 256, 26, 26), (2, 384, 12, 12)]:
        x = torch.randn(shape, device=device_for(backend))
        assert torch.equal(ops.max_pool2d(x, 3, 2), F.max_pool2d(x, 3, 2))


@pytest.mark.parametrize("h, w", [(3, 3), (5, 17), (7, 32), (9, 33), (4, 34), (11, 35), (6, 66), (13, 100)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_3x3_stride2_rows_of_any_width(native_backend, h, w, ceil_mode):
    """The NiN pools' shape has a plane kernel of its own on AVX-512 and AVX2 CPUs, 16 or 8 outputs
    (33 or 17 input columns) at a time: widths around their chunk boundaries, NaN and -inf in the
    windows that straddle them (test_cpu_isa runs the other ISA's)."""
    x = torch.randn(2, 3, h, w, device=device_for(native_backend))
    for col in {0, w // 2, min(w - 1, 32), min(w - 1, 33), w - 1}:
        x[0, 1, h // 2, col] = float("nan")
        x[1, 2, 0, col] = float("-inf")
    y = ops.max_pool2d(x, 3, 2, 0, ceil_mode)
    expected = F.max_pool2d(x, 3, 2, 0, ceil_mode=ceil_mode)
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_gradient_matches_torch(native_backend, layout, dtype):
    """Training keeps the argmax (max_pool2d_with_argmax); ties go where torch sends them."""
    x = torch.randn(2, 3, 9, 8, dtype=dtype, device=device_for(native_backend))
    x[0, 0, :3, :3] = 1.0  # a tied window
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    # The same values give the same argmax; bfloat16 is compared with float64 (ATen sums in bfloat16).
    ref_dtype = torch.float64 if dtype == torch.bfloat16 else dtype
    x_ref = x.detach().to(ref_dtype).requires_grad_(True)
    y = ops.max_pool2d(x, 3, 2, 1)
    grad = torch.randn_like(y)
    y.backward(grad)
    F.max_pool2d(x_ref, 3, 2, 1).backward(grad.to(ref_dtype))
    if dtype == torch.bfloat16:  # summed in float, rounded once
        assert torch.allclose(x.grad.double(), x_ref.grad, rtol=1e-2, atol=1e-2 * x_ref.grad.abs().max().item())
    else:
        assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.parametrize("name", ["max_pool2d", "max_pool2d_with_argmax"])
@pytest.mark.parametrize("idx", range(4))
def test_opcheck(name, idx):
    require_extension()
    samples = [
        (torch.randn(2, 3, 7, 9), [3, 3], [2, 2], [0, 0], False),
        (torch.randn(1, 4, 6, 5, requires_grad=True), [2, 3], [1, 2], [1, 1], True),
        (torch.randn(2, 5, 8, 6).to(memory_format=torch.channels_last).requires_grad_(True), [3, 3], [2, 2],
         [1, 1], False),
        (torch.randn(0, 2, 5, 5, dtype=torch.float64), [3, 3], [2, 2], [0, 0], False),
    ]
    torch.library.opcheck(getattr(torch.ops.nin_ext, name).default, samples[idx])


def test_opcheck_backward():
    require_extension()
    x = torch.randn(2, 3, 7, 6)
    out, argmax = torch.ops.nin_ext.max_pool2d_with_argmax(x, [3, 3], [2, 2], [1, 1], False)
    torch.library.opcheck(torch.ops.nin_ext.max_pool2d_backward.default,
                          (torch.randn_like(out), argmax, [2, 3, 7, 6], False))


@pytest.mark.parametrize("args, message", [
    ((torch.randn(3, 5, 5), 3, 2, 0, False), "expected x to be a 4-d"),
    ((torch.ones(1, 1, 5, 5, dtype=torch.int32), 3, 2, 0, False), "floating-point dtype"),
    ((torch.randn(1, 1, 5, 5), 0, 2, 0, False), "kernel_size"),
    ((torch.randn(1, 1, 5, 5), 3, 0, 0, False), "stride"),
    ((torch.randn(1, 1, 5, 5), 3, 2, 2, False), "padding"),
    ((torch.randn(1, 1, 2, 2), 3, 2, 0, False), "output size is too small"),
])
def test_errors_name_the_argument(backend, args, message):
    x, *rest = args
    with pytest.raises(RuntimeError, match=message):
        ops.max_pool2d(x.to(device_for(backend)), *rest)


def test_fused_sequential_runs_its_max_pools(cpu_backend):
    model = nin_ext.FusedSequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True))
    x = torch.randn(2, 3, 11, 10)
    for grad_enabled, op in ((False, "nin_ext::max_pool2d"), (True, "nin_ext::max_pool2d_with_argmax")):
        with torch.set_grad_enabled(grad_enabled), torch.profiler.profile() as prof:
            y = model(x)
        assert any(e.name == op for e in prof.events()), op
    assert torch.equal(y, nn.Sequential(*model)(x))
    # Unbatched input, as nn.MaxPool2d takes it.
    assert torch.equal(model(x[0]), nn.Sequential(*model)(x[0]))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, dilation=2), nn.MaxPool2d(3, 2, return_indices=True)])
def test_fused_sequential_leaves_other_max_pools_to_torch(cpu_backend, pool):
    model = nin_ext.FusedSequential(pool)
    x = torch.randn(1, 2, 12, 12)
    with torch.profiler.profile() as prof:
        model(x)
    assert not any(e.name == "nin_ext::max_pool2d" for e in prof.events())
