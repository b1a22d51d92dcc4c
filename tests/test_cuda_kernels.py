"""CUDA-specific checks of nin_ext's CUDA kernels against float64 references: TF32 on and off,
fp16 and bf16 (also under torch.autocast), channel counts up to 1024, tile edges, layouts, the
deterministic nin_block_gap, global_avg_pool, non-default streams and torch.compile.
Everything here needs a CUDA GPU and skips without one."""
import contextlib

import pytest
import torch

import nin_ext
from nin_ext import ops
from conftest import (HAS_CUDA, NO_CUDA_REASON, TOL, assert_close_ref, exact_fp32_on_cuda, ref64, ref64_fn,
                      ref_block_fn, ref_block_gap_fn, rel_err, require_extension, same_memory_format)

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)

TF32_REL = 5e-3  # TF32 keeps 10 mantissa bits: max-norm error of three chained layers
LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def cuda_backend():
    require_extension()
    before = nin_ext.get_backend()
    nin_ext.set_backend("cuda")  # raises (fails the test) when the build has no CUDA kernels
    yield
    nin_ext.set_backend(before)


@contextlib.contextmanager
def tf32(enabled):
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def make_block(n, c0, cc, c1, c2, kernel, h, w, dtype=torch.float32, layout="contiguous", bias=True, seed=0):
    """x and the block's parameters on the GPU, scaled so that every layer's output is O(1)."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    x = torch.randn(n, c0, h, w, generator=g)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    params = [torch.randn(cc, c0, kh, kw, generator=g) / (c0 * kh * kw) ** 0.5,
              torch.randn(cc, generator=g) * 0.1 if bias else None,
              torch.randn(c1, cc, 1, 1, generator=g) / cc ** 0.5,
              torch.randn(c1, generator=g) * 0.1 if bias else None,
              torch.randn(c2, c1, 1, 1, generator=g) / c1 ** 0.5,
              torch.randn(c2, generator=g) * 0.1 if bias else None]
    x = x.to(device="cuda", dtype=dtype)
    if layout == "sliced":
        x = x[:, :, :, ::1].transpose(2, 3).contiguous().transpose(2, 3)  # NCWH storage, NCHW view
    params = [p.to(device="cuda", dtype=dtype) if p is not None else None for p in params]
    return x, params


def assert_rel(y, y64, rel, what="output"):
    assert tuple(y.shape) == tuple(y64.shape), f"{what}: shape {tuple(y.shape)} != {tuple(y64.shape)}"
    assert torch.isfinite(y.float()).all(), f"{what}: non-finite values"
    err = rel_err(y, y64)
    assert err <= rel, f"{what}: max rel error {err:.3e} > {rel:.1e}"


# (n, c0, cc, c1, c2, kernel, h, w, stride, padding): the NiN's blocks at small batch, tile edges,
# and odd channel counts that leave partial channel and reduction chunks.
SHAPES = {
    "nin_block1": (2, 1, 96, 96, 96, (11, 11), 224, 224, 4, 0),
    "nin_block2": (2, 96, 256, 256, 256, (5, 5), 26, 26, 1, 2),
    "nin_block3": (3, 256, 384, 384, 384, (3, 3), 12, 12, 1, 1),
    "nin_block4": (5, 384, 10, 10, 10, (3, 3), 5, 5, 1, 1),
    "odd": (3, 5, 17, 33, 7, (3, 2), 11, 9, (2, 1), (1, 0)),
    "tile_edges_65px": (1, 3, 65, 63, 129, (1, 1), 5, 13, 1, 0),
    "one_pixel": (7, 4, 8, 8, 3, (3, 3), 3, 3, 1, 0),
    "wide_1024": (2, 8, 1024, 1024, 1024, (3, 3), 7, 6, 1, 1),
    "wide_odd": (2, 3, 1000, 523, 1023, (2, 3), 5, 9, 1, (0, 1)),
}
SHAPE_IDS = list(SHAPES)


def _run(op, x, params, shape):
    stride, padding = shape[8], shape[9]
    return op(x, *params, stride, padding)


def _ref(fn, x, params, shape):
    stride, padding = shape[8], shape[9]
    pair = (lambda v: tuple(v) if isinstance(v, tuple) else (v, v))
    return ref64_fn(fn, x, *params, pair(stride), pair(padding))


@pytest.mark.parametrize("name", SHAPE_IDS)
@pytest.mark.parametrize("allow_tf32", [False, True], ids=["exact", "tf32"])
def test_nin_block_fp32(name, allow_tf32):
    shape = SHAPES[name]
    x, params = make_block(*shape[:8])
    with tf32(allow_tf32):
        y = _run(ops.nin_block, x, params, shape)
        g = _run(ops.nin_block_gap, x, params, shape)
    y64 = _ref(ref_block_fn, x, params, shape)
    assert y.dtype == torch.float32 and y.is_cuda
    assert_rel(y, y64, TF32_REL if allow_tf32 else TOL["fwd"][torch.float32]["rel"])
    assert_rel(g, y64.mean((2, 3)), TF32_REL if allow_tf32 else TOL["fwd"][torch.float32]["rel"], what="gap")


@pytest.mark.parametrize("name", SHAPE_IDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_nin_block_low_precision(name, dtype):
    shape = SHAPES[name]
    x, params = make_block(*shape[:8], dtype=dtype)
    y = _run(ops.nin_block, x, params, shape)
    g = _run(ops.nin_block_gap, x, params, shape)
    y64 = _ref(ref_block_fn, x, params, shape)  # from the same rounded inputs
    assert y.dtype == dtype and g.dtype == dtype
    assert_rel(y, y64, TOL["fwd"][dtype]["rel"])
    assert_rel(g, y64.mean((2, 3)), TOL["fwd"][dtype]["rel"], what="gap")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_layouts_and_memory_format(layout, dtype):
    shape = SHAPES["odd"]
    x, params = make_block(*shape[:8], dtype=dtype, layout=layout)
    with exact_fp32_on_cuda():
        y = _run(ops.nin_block, x, params, shape)
    y64 = _ref(ref_block_fn, x, params, shape)
    assert_close_ref(y, y64, dtype=dtype)
    y_ref = _run(ref_block_fn, x.cpu().float(), [p.cpu().float() for p in params], shape)
    assert same_memory_format(y, y_ref), f"memory format differs from the reference's: strides {y.stride()}"


def test_no_bias_and_stride_padding_mix():
    shape = (2, 6, 20, 12, 9, (4, 3), 17, 10, (3, 2), (2, 1))
    x, params = make_block(*shape[:8], bias=False)
    with exact_fp32_on_cuda():
        y = _run(ops.nin_block, x, params, shape)
    assert_close_ref(y, _ref(ref_block_fn, x, params, shape))


def test_nin_block_gap_is_deterministic():
    shape = SHAPES["nin_block3"]
    x, params = make_block(*shape[:8])
    first = _run(ops.nin_block_gap, x, params, shape)
    for _ in range(3):
        assert torch.equal(_run(ops.nin_block_gap, x, params, shape), first)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_autocast_runs_in_autocast_dtype(dtype):
    shape = SHAPES["odd"]
    x, params = make_block(*shape[:8])
    with torch.autocast("cuda", dtype=dtype):
        y = _run(ops.nin_block, x, params, shape)
        g = _run(ops.nin_block_gap, x, params, shape)
    assert y.dtype == dtype and g.dtype == dtype
    x_d, params_d = x.to(dtype), [p.to(dtype) for p in params]
    y64 = _ref(ref_block_fn, x_d, params_d, shape)
    assert_rel(y, y64, TOL["fwd"][dtype]["rel"])
    assert_rel(g, _ref(ref_block_gap_fn, x_d, params_d, shape), TOL["fwd"][dtype]["rel"], what="gap")


def test_autocast_backward_reaches_fp32_parameters():
    shape = SHAPES["odd"]
    x, params = make_block(*shape[:8])
    params = [p.requires_grad_(True) for p in params]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = _run(ops.nin_block, x, params, shape)
    y.float().sum().backward()
    for p in params:
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


def test_runs_on_the_current_stream():
    shape = SHAPES["nin_block3"]
    x, params = make_block(*shape[:8])
    with exact_fp32_on_cuda():
        expected = _run(ops.nin_block, x, params, shape)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            y = _run(ops.nin_block, x, params, shape)
            g = _run(ops.nin_block_gap, x, params, shape)
        stream.synchronize()
        expected_gap = _run(ops.nin_block_gap, x, params, shape)
    assert torch.equal(y, expected)
    assert torch.equal(g, expected_gap)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 40, 300, 301), (1, 1, 1, 1), (5, 1000, 2, 3), (2, 0, 3, 3)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_global_avg_pool(shape, layout, dtype):
    x = torch.randn(*shape, dtype=torch.float32).to(device="cuda", dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(2, 3)
    y = ops.global_avg_pool(x)
    assert y.dtype == dtype and y.shape == x.shape[:2]
    assert_close_ref(y, x.double().mean((2, 3)).cpu(), dtype=dtype)


def _reference_of(net):
    ref = nin_ext.reference.nin_net()
    ref.load_state_dict(net.state_dict())
    return ref.eval()


def test_nin_matches_reference_end_to_end():
    net = nin_ext.NiN().cuda().eval()
    x = torch.rand(4, 1, 224, 224, device="cuda")
    with exact_fp32_on_cuda(), torch.no_grad():
        y = net(x)
    assert_rel(y, ref64(_reference_of(net), x), TOL["fwd"][torch.float32]["rel"])


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "backward"])
def test_torch_compile_fullgraph(grad):
    torch._dynamo.reset()
    net = nin_ext.NiN().cuda().eval()
    x = torch.rand(3, 1, 96, 96, device="cuda")
    x_eager = x.clone().requires_grad_(grad)
    x_compiled = x.clone().requires_grad_(grad)
    with exact_fp32_on_cuda():
        eager = net(x_eager)
        compiled = torch.compile(net, fullgraph=True)(x_compiled)
        assert_close_ref(compiled, eager.double(), what="compiled vs eager")
        if grad:
            eager.sum().backward()
            compiled.sum().backward()
            assert_close_ref(x_compiled.grad, x_eager.grad.double(), kind="grad", what="input gradient")
