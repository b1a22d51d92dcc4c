"""Shared fixtures and helpers for the nin_ext test suite.

The oracle is the notebook's model, re-typed here (``notebook_nin_block`` /
``notebook_net``) so that the tests do not depend on ``nin_ext.reference``
being right; ``test_modules.py`` checks that ``nin_ext.reference`` builds the
same thing.
"""
import contextlib
import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# Without a GPU the triton backend's kernels run in Triton's interpreter on CPU tensors; it reads this
# when the kernels are defined, so it is set before nin_ext is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the triton backend runs one tile configuration: autotuning each of the suite's random shapes
# would spend minutes timing configurations (test_triton.py checks the autotuned path on its own).
os.environ.setdefault("NIN_EXT_TRITON_AUTOTUNE", "0")

import nin_ext  # noqa: E402

SEED = 1234
TINY = 1e-30
HAS_CUDA = torch.cuda.is_available()
NO_CUDA_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False)"


# --------------------------------------------------------------------------------------
# Reference model: the notebook's, from nin_ext.reference (the package's ground truth)
# --------------------------------------------------------------------------------------
notebook_nin_block = nin_ext.reference.nin_block
notebook_net = nin_ext.reference.nin_net


NOTEBOOK_SHAPE_LINES = [
    "Sequential output shape:\t torch.Size([1, 96, 54, 54])",
    "MaxPool2d output shape:\t torch.Size([1, 96, 26, 26])",
    "Sequential output shape:\t torch.Size([1, 256, 26, 26])",
    "MaxPool2d output shape:\t torch.Size([1, 256, 12, 12])",
    "Sequential output shape:\t torch.Size([1, 384, 12, 12])",
    "MaxPool2d output shape:\t torch.Size([1, 384, 5, 5])",
    "Dropout output shape:\t torch.Size([1, 384, 5, 5])",
    "Sequential output shape:\t torch.Size([1, 10, 5, 5])",
    "AdaptiveAvgPool2d output shape:\t torch.Size([1, 10, 1, 1])",
    "Flatten output shape:\t torch.Size([1, 10])",
]

# Smallest square input that survives the three MaxPool2d(3, 2) of the NiN net
# (66 fails in the reference: "Output size is too small").
NIN_MIN_HW = 67


def ref_block_fn(x, w, b, w1, b1, w2, b2, stride, padding):
    """Functional reference of the fused op (three conv2d + relu)."""
    y = F.relu(F.conv2d(x, w, b, stride, padding))
    y = F.relu(F.conv2d(y, w1, b1))
    return F.relu(F.conv2d(y, w2, b2))


def ref_block_gap_fn(*args):
    return ref_block_fn(*args).mean((2, 3))


def block_case_id(case):
    """A test id for a block case (n, c0, h, w, cc, c1, c2, kernel, stride, padding, layout)."""
    n, c0, h, w, cc, c1, c2, k, s, p, layout = case
    return f"n{n}_c{c0}-{cc}-{c1}-{c2}_{h}x{w}_k{k[0]}x{k[1]}s{s[0]}x{s[1]}p{p[0]}x{p[1]}_{layout}"


def block_case_args(case, dtype):
    """nin_block's arguments for a block case: a random input in the case's layout ("sliced": every
    other column of a wider map, not contiguous) and He-scaled weights, small biases."""
    n, c0, h, w, cc, c1, c2, k, s, p, layout = case
    if layout == "sliced":
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


def _to64(t):
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=torch.float64)


def ref64(module, x):
    """Run a deepcopy of a (reference) module in float64 on CPU; returns a float64 tensor."""
    m = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        return m(_to64(x))


def ref64_fn(fn, *args, **kwargs):
    """Run a functional reference with every tensor argument cast to float64 on CPU."""
    args = [_to64(a) if isinstance(a, torch.Tensor) or a is None else a for a in args]
    with torch.no_grad():
        return fn(*args, **kwargs)


def as_reference(block):
    """A plain notebook-style copy of one of our NiNBlock/NiN modules (same weights)."""
    if isinstance(block, nin_ext.NiN):
        ref = notebook_net(block[0][0].in_channels, block[7][4].out_channels, block[6].p)
    else:
        c = block[0]
        ref = notebook_nin_block(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding)
    ref.load_state_dict(block.state_dict(), strict=True)
    ref.train(block.training)
    return ref


# --------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------
# rel:  max|y - y64| / max(max|y64|, tiny)
# rtol/atol_scale: elementwise |y - y64| <= atol_scale * max|y64| + rtol * |y64|
TOL = {
    "fwd": {
        torch.float32: dict(rel=1e-5, rtol=1e-5, atol_scale=1e-6),
        torch.float64: dict(rel=1e-12, rtol=1e-12, atol_scale=1e-13),
        torch.bfloat16: dict(rel=3e-2, rtol=3e-2, atol_scale=1e-2),
        torch.float16: dict(rel=4e-3, rtol=4e-3, atol_scale=1e-3),
    },
    # The CPU backend's Winograd path (float32 3x3/5x5 convs, see tests/test_winograd.py): errors up to
    # ten times direct convolution's, so the elementwise floor is 1e-5 of the output's scale (the block's
    # relative bound; torch.testing's float32 default allows 1e-5 absolute).
    "fwd_winograd": {
        torch.float32: dict(rel=1e-5, rtol=1e-5, atol_scale=1e-5),
    },
    "grad": {
        torch.float32: dict(rel=1e-4, rtol=1e-4, atol_scale=1e-5),
        torch.float64: dict(rel=1e-10, rtol=1e-10, atol_scale=1e-11),
        torch.bfloat16: dict(rel=5e-2, rtol=5e-2, atol_scale=2e-2),
        torch.float16: dict(rel=8e-3, rtol=8e-3, atol_scale=2e-3),
    },
}


def runs_winograd(backend, x, w, stride, padding, c1=1, c2=1):
    """Whether the cpu backend runs this block's conv with Winograd (its choice, csrc/cpu/winograd_cpu.h
    and nin_block_tiling_cpu.h, asked of the extension; the 1x1 widths c1, c2 weigh in the choice)."""
    if backend != "cpu" or x.dtype != torch.float32:
        return False
    from nin_ext import _C
    return _C.winograd_tile_size(tuple(x.shape), tuple(w.shape), c1, c2, tuple(stride), tuple(padding)) > 0


def rel_err(y, y64):
    y = y.detach().to("cpu", torch.float64)
    y64 = y64.detach().to("cpu", torch.float64)
    if y64.numel() == 0:
        return 0.0
    return ((y - y64).abs().max() / max(y64.abs().max().item(), TINY)).item()


def assert_close_ref(y, y64, dtype=None, kind="fwd", what="output"):
    """Compare y (any dtype/device) with its float64 reference y64."""
    dtype = dtype or y.dtype
    tol = TOL[kind][dtype]
    assert tuple(y.shape) == tuple(y64.shape), f"{what}: shape {tuple(y.shape)} != reference {tuple(y64.shape)}"
    if y64.numel() == 0:
        return
    yd = y.detach().to("cpu", torch.float64)
    y64 = y64.detach().to("cpu", torch.float64)
    assert torch.isfinite(yd).all(), f"{what}: non-finite values"
    scale = max(y64.abs().max().item(), TINY)
    err = rel_err(yd, y64)
    assert err <= tol["rel"], f"{what}: max rel error {err:.3e} > {tol['rel']:.1e} ({dtype}, {kind})"
    diff = (yd - y64).abs()
    bound = tol["atol_scale"] * scale + tol["rtol"] * y64.abs()
    bad = diff > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {diff.numel()} elements outside rtol={tol['rtol']:.0e}, "
        f"atol={tol['atol_scale']:.0e}*{scale:.3e}; worst excess {(diff - bound).max().item():.3e}")


def assert_block_ops_match_float64(args):
    """nin_block, nin_block_gap and the hidden activations of nin_block_with_hidden match the float64
    reference (hidden1 from the op's own hidden0, so that hidden0's rounding does not count twice), and
    nin_block_max_pool and nin_block_with_hidden's output equal max_pool2d of nin_block and nin_block. On
    a CPU with AMX tiles the training forward runs 1x1 layers of 96-191 inputs off them (their hidden
    activations set the backward's masks: kAmxMinReductionForBackward), so there its output is held to
    the float64 reference instead."""
    block = nin_ext.ops.nin_block(*args)
    reference = ref64_fn(ref_block_fn, *args)
    assert_close_ref(block, reference, what="nin_block")
    assert_close_ref(nin_ext.ops.nin_block_gap(*args), ref64_fn(ref_block_gap_fn, *args), what="nin_block_gap")
    assert torch.equal(nin_ext.ops.nin_block_max_pool(*args, 2, 1, 1), F.max_pool2d(block, 2, 1, 1))
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(*args)
    if HAS_AMX and args[0].device.type == "cpu":
        assert_close_ref(out, reference, what="nin_block_with_hidden output")
    else:
        assert torch.equal(out, block)
    x64 = [a.double() for a in args[:7]]
    assert_close_ref(h0, F.relu(F.conv2d(x64[0], x64[1], x64[2], args[7], args[8])), what="hidden0")
    assert_close_ref(h1, F.relu(F.conv2d(h0.double(), x64[3], x64[4])), what="hidden1")


def assert_same_bits_for_any_thread_count(args):
    """nin_block and nin_block_gap give the same bits with 1, 2 and 3 threads: the CPU paths tile by the
    shapes only, each value is computed the same way in any tile, and the global average pool adds its
    parts in a fixed order."""
    threads = torch.get_num_threads()
    try:
        outputs = []
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            outputs.append((nin_ext.ops.nin_block(*args), nin_ext.ops.nin_block_gap(*args)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outputs[0][0], y) and torch.equal(outputs[0][1], g) for y, g in outputs[1:])


def same_memory_format(y, y_ref):
    return (y.is_contiguous(), y.is_contiguous(memory_format=torch.channels_last)) == (
        y_ref.is_contiguous(), y_ref.is_contiguous(memory_format=torch.channels_last))


# --------------------------------------------------------------------------------------
# Extension / backend fixtures
# --------------------------------------------------------------------------------------
def extension_loaded():
    return bool(nin_ext.info().get("extension"))


def require_extension():
    """The compiled extension is part of what is tested: missing it is a failure, unless
    the run deliberately installed without it (NIN_EXT_NO_EXT=1), where it is a skip."""
    if extension_loaded():
        return
    msg = f"nin_ext compiled extension not loaded: {nin_ext.info().get('extension_error')}"
    if os.environ.get("NIN_EXT_NO_EXT") == "1":
        pytest.skip(msg + " (NIN_EXT_NO_EXT=1)")
    pytest.fail(msg)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(SEED)
    torch.manual_seed(SEED)
    yield


@pytest.fixture(autouse=True)
def _restore_backend():
    """Every test leaves the global backend as it found it."""
    before = nin_ext.get_backend()
    yield
    nin_ext.set_backend(before)


def _set_backend_for(name):
    if name == "cuda" and not HAS_CUDA:
        pytest.skip(NO_CUDA_REASON)
    if name in ("cpu", "cuda"):
        require_extension()
    if name == "triton":
        reason = nin_ext.backends.unavailable_reason("triton")
        if reason is not None:
            pytest.skip(f"triton backend unavailable: {reason}")
    nin_ext.set_backend(name)


BACKENDS = ["cpu", "reference", "cuda", "triton"]
NATIVE_BACKENDS = ["cpu", "cuda"]


def _backend_for_the_test(name):
    """Sets nin_ext's backend for the test and restores the previous one afterwards. On CUDA the
    shared tests hold fp32 to the exact-fp32 tolerance, so TF32 (cuDNN's default, which nin_ext's
    CUDA and Triton kernels follow) is off during them; test_cuda_kernels.py and test_triton.py cover
    TF32 on."""
    before = nin_ext.get_backend()
    _set_backend_for(name)
    with exact_fp32_on_cuda(name in ("cuda", "triton")):
        yield name
    nin_ext.set_backend(before)


@contextlib.contextmanager
def exact_fp32_on_cuda(enabled=True):
    """torch.backends.cudnn.allow_tf32 off while the block runs (when enabled), restored after."""
    before = torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(params=BACKENDS)
def backend(request):
    yield from _backend_for_the_test(request.param)


@pytest.fixture(params=NATIVE_BACKENDS)
def native_backend(request):
    """Compiled backends only (cpu; cuda when a GPU is present)."""
    yield from _backend_for_the_test(request.param)


@pytest.fixture
def cpu_backend():
    yield from _backend_for_the_test("cpu")


def backends_without_the_extension():
    """available_backends() of a process whose nin_ext._C cannot be loaded (and without TRITON_INTERPRET,
    which run_python drops): triton where there is a GPU, and reference."""
    triton_runs = HAS_CUDA and nin_ext.backends.unavailable_reason("triton") is None
    return (["triton"] if triton_runs else []) + ["reference"]


def device_for(backend_name):
    if backend_name == "reference":
        return torch.device("cpu")
    return torch.device(nin_ext.backends.device_of(backend_name))


# --------------------------------------------------------------------------------------
# Subprocess helper
# --------------------------------------------------------------------------------------
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


CPU_FLAGS = _cpu_flags()
# What the CPU backend's "amx" kernel needs (csrc/cpu/packed_layer_amx.cpp, amx_int8_usable).
AMX_FLAGS = {"amx_tile", "amx_int8", "avx512bw", "avx512dq", "avx512vl"}
HAS_AMX = AMX_FLAGS <= CPU_FLAGS
NO_AMX_REASON = "CPU has no AMX-INT8 tiles (/proc/cpuinfo flags amx_tile, amx_int8)"

PKG_ROOT = str(Path(nin_ext.__file__).resolve().parent.parent)


def run_python(args, env_extra=None, cwd=None, timeout=300):
    """Run ``python <args>`` importing the same nin_ext as this test process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NIN_EXT_BACKEND", None)
    env.pop("TRITON_INTERPRET", None)  # set by this conftest for the in-process triton tests only
    if env_extra:
        env.update(env_extra)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)
