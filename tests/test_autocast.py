"""torch.autocast: the reference's convolutions run in the autocast dtype, so the fused block ops do
too (their inputs cast as autocast casts a convolution's), on the CPU (bfloat16, float16) as on CUDA;
the pools run in their input's dtype, float64 is left alone, and gradients reach float32 parameters."""
import pytest
import torch

import nin_ext
from nin_ext import ops
from conftest import as_reference, assert_close_ref, device_for, ref64, ref64_fn, ref_block_fn, ref_block_gap_fn
from test_parity import make_input, make_params

LOW_PRECISION = [torch.bfloat16, torch.float16]
POOL = (3, 2, 1, True)   # kernel, stride, padding, ceil_mode


def _block_case(device):
    x = make_input(2, 5, 13, 11, "contiguous", device=device)
    params = [p.to(device) if p is not None else None for p in make_params(5, 12, 9, (3, 3))]
    return x, params


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_block_ops_run_in_autocast_dtype(native_backend, dtype):
    device = device_for(native_backend)
    x, params = _block_case(device)
    with torch.autocast(device.type, dtype=dtype):
        y = ops.nin_block(x, *params, 1, 1)
        g = ops.nin_block_gap(x, *params, 1, 1)
        p = ops.nin_block_max_pool(x, *params, 1, 1, *POOL)
        y_ref = ref_block_fn(x, *params, 1, 1)
    assert y.dtype == g.dtype == p.dtype == y_ref.dtype == dtype
    rounded = [x.to(dtype)] + [t.to(dtype) for t in params]   # what autocast hands a convolution
    y64 = ref64_fn(ref_block_fn, *rounded, 1, 1)
    assert_close_ref(y, y64, dtype=dtype)
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, *rounded, 1, 1), dtype=dtype, what="gap")
    assert_close_ref(p, torch.nn.functional.max_pool2d(y64, *POOL[:3], ceil_mode=POOL[3]), dtype=dtype,
                     what="block + max pool")


def test_float64_is_left_alone(native_backend):
    device = device_for(native_backend)
    x, params = _block_case(device)
    x, params = x.double(), [p.double() for p in params]
    expected = ops.nin_block_max_pool(x, *params, 1, 1, *POOL)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = ops.nin_block_max_pool(x, *params, 1, 1, *POOL)
    assert got.dtype == torch.float64 and torch.equal(got, expected)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_nin_under_autocast_like_reference(native_backend, dtype):
    device = device_for(native_backend)
    ours = nin_ext.NiN().eval().to(device)
    ref = as_reference(ours).to(device)
    x = torch.rand(3, 1, 83, 77, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        y, y_ref = ours(x), ref(x)
    assert y.dtype == y_ref.dtype == dtype
    ref_rounded = as_reference(ours).to(dtype)   # the weights autocast hands the convolutions
    assert_close_ref(y, ref64(ref_rounded, x.to(dtype)), dtype=dtype)


def test_training_under_autocast_like_reference(native_backend):
    """Gradients reach the float32 parameters, as far from float64's as the reference's under the same
    autocast (bfloat16 moves pre-activations across ReLU's zero: both are 10-40% off in places)."""
    device = device_for(native_backend)
    ours = nin_ext.NiN().eval().to(device)   # eval: no dropout; gradients on: the training forward
    ref = as_reference(ours).to(device)
    ref64_model = as_reference(ours).double()
    x = torch.rand(2, 1, 70, 70, device=device)
    for model in (ours, ref):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = model(x)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
    ref64_model(x.cpu().double()).sum().backward()
    for (name, p), q, p64 in zip(ours.named_parameters(), ref.parameters(), ref64_model.parameters()):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        scale = max(p64.grad.abs().max().item(), 1e-30)
        ours_err = (p.grad.cpu().double() - p64.grad).abs().max().item() / scale
        ref_err = (q.grad.cpu().double() - p64.grad).abs().max().item() / scale
        assert ours_err <= 1.5 * ref_err + 1e-2, f"{name}: {ours_err:.3g} against the reference's {ref_err:.3g}"
