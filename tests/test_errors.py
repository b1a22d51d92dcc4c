"""Bad inputs raise RuntimeError/ValueError with a message naming the problem."""
import pytest
import torch

import nin_ext
from nin_ext import ops
from conftest import HAS_CUDA, NO_CUDA_REASON, device_for

ERR = (RuntimeError, ValueError)


@pytest.fixture(autouse=True)
def _tensors_on_the_backends_device(request):
    """The tests make their tensors and modules with torch's factories: under a backend, they are made
    on its device, so that the check under test, not the device check, is what fails."""
    if "backend" not in request.fixturenames:
        yield
        return
    with torch.device(device_for(request.getfixturevalue("backend"))):
        yield


def _p(c0=3, c1=4, c2=5, k=3, dtype=torch.float32):
    return [torch.randn(c1, c0, k, k, dtype=dtype), torch.randn(c1, dtype=dtype),
            torch.randn(c1, c1, 1, 1, dtype=dtype), torch.randn(c1, dtype=dtype),
            torch.randn(c2, c1, 1, 1, dtype=dtype), torch.randn(c2, dtype=dtype)]


@pytest.fixture(params=["nin_block", "nin_block_gap"])
def op(request, backend):
    return getattr(ops, request.param)


def test_channel_mismatch_x_vs_w(op):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ERR, match="(?i)channel"):
        op(x, *_p(c0=1), 1, 1)


def test_channel_mismatch_w_vs_w1(op):
    p = _p()
    p[2] = torch.randn(4, 7, 1, 1)      # w1 expects 7 input channels, w gives 4
    with pytest.raises(ERR, match="(?i)channel"):
        op(torch.randn(1, 3, 8, 8), *p, 1, 1)


def test_channel_mismatch_w1_vs_w2(op):
    p = _p()
    p[4] = torch.randn(5, 6, 1, 1)      # w2 expects 6 input channels, w1 gives 4
    with pytest.raises(ERR, match="(?i)channel"):
        op(torch.randn(1, 3, 8, 8), *p, 1, 1)


def test_bias_size_mismatch(op):
    p = _p()
    p[1] = torch.randn(7)
    with pytest.raises(ERR, match="(?i)bias|\\bb\\b|size|shape|channel"):
        op(torch.randn(1, 3, 8, 8), *p, 1, 1)


def test_module_channel_mismatch(backend):
    m = nin_ext.NiNBlock(1, 4, 3, 1, 1)
    with pytest.raises(ERR, match="(?i)channel"):
        m(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_dtype(op, dtype):
    x = torch.randint(0, 5, (1, 3, 8, 8), dtype=dtype)
    p = [t.to(dtype) for t in _p()]
    with pytest.raises(ERR, match="(?i)dtype|Long|Int|Byte|floating|integer"):
        op(x, *p, 1, 1)


def test_integer_input_float_weights(op):
    with pytest.raises(ERR, match="(?i)dtype|Long|floating|integer"):
        op(torch.randint(0, 5, (1, 3, 8, 8)), *_p(), 1, 1)


def test_global_avg_pool_integer_dtype(backend):
    with pytest.raises(ERR, match="(?i)dtype|Long|floating|integer"):
        ops.global_avg_pool(torch.randint(0, 5, (1, 3, 4, 4)))


def test_input_smaller_than_kernel(op):
    with pytest.raises(ERR, match="(?i)kernel|small"):
        op(torch.randn(1, 3, 4, 4), *_p(k=5), 1, 0)
    with pytest.raises(ERR, match="(?i)kernel|small"):
        op(torch.randn(1, 3, 8, 2), *_p(k=5), 1, 1)   # width 2 + 2*1 < 5
    # padding makes it fit: no error
    assert op(torch.randn(1, 3, 3, 3), *_p(k=5), 1, 1).shape[0] == 1


def test_module_input_smaller_than_kernel(backend):
    with pytest.raises(ERR, match="(?i)kernel|small"):
        nin_ext.NiNBlock(3, 4, 11, 4, 0)(torch.randn(1, 3, 10, 10))


@pytest.mark.parametrize("shape", [(3, 8), (1, 1, 3, 8, 8)], ids=["2d", "5d"])
def test_wrong_ndim_op(op, shape):
    with pytest.raises(ERR, match="(?i)dim|4-?d|4D|shape"):
        op(torch.randn(*shape), *_p(), 1, 1)


@pytest.mark.parametrize("shape", [(3, 8), (1, 1, 3, 8, 8)], ids=["2d", "5d"])
def test_wrong_ndim_module(backend, shape):
    with pytest.raises(ERR, match="(?i)dim|3-?d|4-?d|3D|4D|shape"):
        nin_ext.NiNBlock(3, 4, 3, 1, 1)(torch.randn(*shape))


@pytest.mark.parametrize("shape", [(3, 8), (1, 1, 3, 8, 8), (3,)], ids=["2d", "5d", "1d"])
def test_global_avg_pool_wrong_ndim(backend, shape):
    with pytest.raises(ERR, match="(?i)dim|4-?d|4D|shape"):
        ops.global_avg_pool(torch.randn(*shape))


def test_message_prints_the_numbers(backend):
    """The whole message, numbers included: a build that linked its own static libstdc++ cut it at the
    first number (here) or crashed formatting it (on a GPU machine whose g++ linked libstdc++ so)."""
    with pytest.raises(ERR, match=r"got shape \[3, 8\]"):
        ops.global_avg_pool(torch.randn(3, 8))


def test_weight_wrong_ndim(op):
    p = _p()
    p[0] = torch.randn(4, 3, 3)
    with pytest.raises(ERR, match="(?i)\\bw\\b|weight|dim|shape"):
        op(torch.randn(1, 3, 8, 8), *p, 1, 1)


def test_pointwise_weight_not_1x1(op):
    p = _p()
    p[2] = torch.randn(4, 4, 3, 3)
    with pytest.raises(ERR, match="(?i)1x1|1 x 1|w1|kernel|shape"):
        op(torch.randn(1, 3, 8, 8), *p, 1, 1)


def test_float32_input_float64_weights(op):
    with pytest.raises(ERR, match="(?i)dtype|double|float"):
        op(torch.randn(1, 3, 8, 8), *_p(dtype=torch.float64), 1, 1)


def test_mixed_weight_dtypes(op):
    p = _p()
    p[4] = p[4].double()
    with pytest.raises(ERR, match="(?i)dtype|double|float"):
        op(torch.randn(1, 3, 8, 8), *p, 1, 1)


@pytest.mark.parametrize("stride,padding", [(0, 1), ((1, 0), 1), (1, -1)])
def test_bad_stride_padding(op, stride, padding):
    with pytest.raises(ERR, match="(?i)stride|padding"):
        op(torch.randn(1, 3, 8, 8), *_p(), stride, padding)


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)
def test_device_mismatch():
    nin_ext.set_backend("cuda")
    p = [t.cuda() for t in _p()]
    with pytest.raises(ERR, match="(?i)device|cuda|cpu"):
        ops.nin_block(torch.randn(1, 3, 8, 8), *p, 1, 1)


# --------------------------------------------------------------------------------------
# Backend selection errors
# --------------------------------------------------------------------------------------
def test_set_backend_unknown():
    before = nin_ext.get_backend()
    with pytest.raises(ValueError, match="nope"):
        nin_ext.set_backend("nope")
    assert nin_ext.get_backend() == before


@pytest.mark.parametrize("name, reason", [("cuda", "(?i)gpu|not built|without cuda|no cuda|device|driver"),
                                          ("triton", "(?i)triton")])
def test_set_backend_absent(name, reason):
    """A backend that is present is selected; one that is absent is refused with why, and the
    selection stays as it was."""
    if name in nin_ext.available_backends():
        nin_ext.set_backend(name)
        assert nin_ext.get_backend() == name
        return
    before = nin_ext.get_backend()
    with pytest.raises(RuntimeError, match=reason):
        nin_ext.set_backend(name)
    assert nin_ext.get_backend() == before
