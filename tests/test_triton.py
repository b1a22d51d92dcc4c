"""The triton backend's own cases: kernel sizes 1 to 11, its wide-layer paths, autocast, precision
choice, registration and selection. Without a GPU they run in Triton's interpreter on CPU tensors
(conftest sets TRITON_INTERPRET=1); the generic parity, gradient and error tests run the backend too
through conftest's BACKENDS."""
import random
import textwrap
import types

import pytest
import torch

import nin_ext
from nin_ext import ops
from conftest import (HAS_CUDA, assert_close_ref, device_for, exact_fp32_on_cuda, ref64_fn, ref_block_fn,
                      ref_block_gap_fn, run_python)
from test_parity import make_input, make_params

pytestmark = pytest.mark.usefixtures("triton_backend")
INTERPRETED = nin_ext.backends.device_of("triton") == "cpu"


@pytest.fixture
def triton_backend():
    reason = nin_ext.backends.unavailable_reason("triton")
    if reason is not None:
        pytest.skip(f"triton backend unavailable: {reason}")
    before = nin_ext.get_backend()
    nin_ext.set_backend("triton")
    with exact_fp32_on_cuda():  # the cases that test TF32 turn it on themselves
        yield
    nin_ext.set_backend(before)


def _dev():
    return device_for("triton")


def _check_block_and_gap(x, params, stride, padding, dtype=None):
    y = ops.nin_block(x, *params, stride, padding)
    assert_close_ref(y, ref64_fn(ref_block_fn, x, *params, stride, padding), dtype=dtype)
    g = ops.nin_block_gap(x, *params, stride, padding)
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, x, *params, stride, padding), dtype=dtype, what="gap")


@pytest.mark.parametrize("kernel", range(1, 12))
def test_kernel_sizes(kernel):
    """Every kernel size of the NiN (1, 3, 5, 11) and the ones between, with odd sizes, strides,
    paddings, batch up to 3 and channel counts that are not multiples of the tiles."""
    rng = random.Random(1000 + kernel)
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    h = max(kernel - 2 * padding[0], 1) + rng.randint(0, 6)
    w = max(kernel - 2 * padding[1], 1) + rng.randint(0, 6)
    c0, cc, c1, c2 = (rng.choice([1, 2, 3, 5, 7, 17, 19]) for _ in range(4))
    x = make_input(rng.randint(1, 3), c0, h, w, rng.choice(["contiguous", "channels_last", "sliced"]), device=_dev())
    params = make_params(c0, cc, c2, (kernel, kernel), device=_dev())
    params[2:4] = [torch.randn(c1, cc, 1, 1, device=_dev()) / cc ** 0.5, torch.randn(c1, device=_dev()) * 0.1]
    params[4] = torch.randn(c2, c1, 1, 1, device=_dev()) / c1 ** 0.5
    _check_block_and_gap(x, params, stride, padding)


@pytest.fixture
def narrow_tiles(monkeypatch):
    """Tile bounds small enough that tiny layers take the wide-layer paths: the conv's channels
    streamed in chunks and recomputed per chunk of the first 1x1 layer, output channels split over
    the grid."""
    from nin_ext.triton import nin_block_triton
    monkeypatch.setattr(nin_block_triton, "H0_RESIDENT_MAX_CHANNELS", 16)
    monkeypatch.setattr(nin_block_triton, "STREAMED_CC_CHUNK", 16)
    monkeypatch.setattr(nin_block_triton, "MAX_C2_TILE", 16)


@pytest.mark.parametrize("cc, c1, c2", [(37, 20, 35), (17, 3, 16), (33, 33, 1)])
def test_wide_layer_paths(narrow_tiles, cc, c1, c2):
    x = make_input(2, 3, 7, 6, "contiguous", device=_dev())
    params = make_params(3, cc, c2, (3, 3), device=_dev())
    params[2:4] = [torch.randn(c1, cc, 1, 1, device=_dev()) / cc ** 0.5, torch.randn(c1, device=_dev()) * 0.1]
    params[4] = torch.randn(c2, c1, 1, 1, device=_dev()) / c1 ** 0.5
    _check_block_and_gap(x, params, (1, 1), (1, 1))


@pytest.mark.parametrize("cc, c1, c2", [(1024, 24, 1024), (24, 1024, 24), (24, 24, 384)])
def test_1024_channels(cc, c1, c2):
    """The widest layers the backend promises, with the real tile bounds (streamed conv, split outputs,
    many chunks of the first 1x1 layer; 384 outputs, the seed's block 3, in one program); one wide
    layer at a time keeps the interpreter's time down."""
    x = make_input(1, 3, 2, 3, "contiguous", device=_dev())
    params = make_params(3, cc, c2, (3, 3), device=_dev())
    params[2:4] = [torch.randn(c1, cc, 1, 1, device=_dev()) / cc ** 0.5, torch.randn(c1, device=_dev()) * 0.1]
    params[4] = torch.randn(c2, c1, 1, 1, device=_dev()) / c1 ** 0.5
    _check_block_and_gap(x, params, (1, 1), (1, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast(dtype):
    """Under torch.autocast the reference's convolutions run in the autocast dtype; so does the block."""
    x = make_input(2, 4, 9, 8, "contiguous", device=_dev())
    params = make_params(4, 12, 5, (3, 3), device=_dev())
    with torch.autocast(_dev().type, dtype=dtype):
        y = ops.nin_block(x, *params, 1, 1)
        g = ops.nin_block_gap(x, *params, 1, 1)
        y_ref = ref_block_fn(x, *params, 1, 1)
    assert y.dtype == g.dtype == y_ref.dtype == dtype
    rounded = [x.to(dtype)] + [p.to(dtype) for p in params]   # what autocast hands the convolutions
    assert_close_ref(y, ref64_fn(ref_block_fn, *rounded, 1, 1), dtype=dtype)
    assert_close_ref(g, ref64_fn(ref_block_gap_fn, *rounded, 1, 1), dtype=dtype, what="gap")


def test_dot_precision_follows_cudnn_allow_tf32(monkeypatch):
    from nin_ext.triton.config import dot_input_precision
    cuda32 = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert dot_input_precision(cuda32) == "tf32"
    assert dot_input_precision(types.SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"))) == "ieee"
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert dot_input_precision(types.SimpleNamespace(dtype=dtype, device=torch.device("cuda"))) == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert dot_input_precision(cuda32) == "ieee"


def test_runs_the_triton_ops():
    from torch.profiler import ProfilerActivity, profile
    m = nin_ext.NiNBlock(3, 5, 3, 1, 1).to(_dev())
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        m(torch.randn(1, 3, 6, 6, device=_dev()))
    names = {e.name for e in prof.events()}
    assert "nin_ext_triton::nin_block" in names, sorted(names)
    assert not any(n.startswith("aten::conv") for n in names), sorted(names)


def _block_samples():
    dev = _dev()
    x = make_input(2, 3, 7, 6, "channels_last", device=dev).requires_grad_(True)
    p = [t.requires_grad_(True) for t in make_params(3, 4, 5, (3, 2), device=dev)]
    no_bias = make_params(2, 3, 2, (2, 2), bias=(False, False, False), device=dev)
    return [[x, *p, [2, 1], [1, 0]],
            [make_input(1, 2, 5, 5, "contiguous", device=dev), *no_bias, [1, 1], [0, 0]],
            [make_input(0, 3, 5, 5, "contiguous", device=dev), *make_params(3, 4, 4, (3, 3), device=dev), [1, 1], [1, 1]]]


# opcheck's test_aot_dispatch_* trace the kernels, which Triton's interpreter cannot do (see
# test_compile_fullgraph); they run on a GPU.
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor") if INTERPRETED else \
    torch.library._OPCHECK_DEFAULT_UTILS


@pytest.mark.parametrize("name", ["nin_block", "nin_block_gap"])
@pytest.mark.parametrize("idx", range(3))
def test_opcheck_block_ops(name, idx):
    torch.library.opcheck(getattr(torch.ops.nin_ext_triton, name).default, _block_samples()[idx],
                          test_utils=OPCHECK_TESTS)


def test_opcheck_global_avg_pool():
    x = make_input(2, 5, 4, 3, "channels_last", device=_dev()).requires_grad_(True)
    torch.library.opcheck(torch.ops.nin_ext_triton.global_avg_pool.default, [x], test_utils=OPCHECK_TESTS)


@pytest.mark.skipif(INTERPRETED, reason="torch.compile cannot trace kernels in Triton's interpreter: "
                    "torch.library.wrap_triton hands interpreted kernels back unwrapped (torch 2.13), so "
                    "tracing would launch them on fake tensors; runs on a GPU")
def test_compile_fullgraph():
    m = nin_ext.NiNBlock(3, 8, 3, 1, 1).to(_dev())
    x = torch.randn(2, 3, 9, 7, device=_dev(), requires_grad=True)
    y = torch.compile(m, fullgraph=True)(x)
    assert_close_ref(y, ref64_fn(ref_block_fn, x, *[p for p in m.parameters()], (1, 1), (1, 1)))
    y.sum().backward()
    assert x.grad is not None


# --------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------
def test_interpreter_backend_is_listed_but_not_auto():
    if not INTERPRETED:
        pytest.skip("runs CUDA tensors here (TRITON_INTERPRET is not set)")
    assert "triton" in nin_ext.available_backends()
    nin_ext.set_backend("auto")
    assert nin_ext.backends.resolve(torch.empty(1)) in ("cpu", "reference")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message given without a GPU")
def test_unavailable_without_gpu_or_interpreter():
    code = """
    import nin_ext
    assert "triton" not in nin_ext.available_backends()
    try:
        nin_ext.set_backend("triton")
    except RuntimeError as error:
        print("ERR=" + str(error))
    """
    r = run_python(["-c", textwrap.dedent(code)])
    assert r.returncode == 0, r.stderr
    assert "no CUDA GPU" in r.stdout and "TRITON_INTERPRET=1" in r.stdout, r.stdout


def test_works_without_the_compiled_extension():
    code = """
    import sys, warnings
    sys.modules["nin_ext._C"] = None
    warnings.simplefilter("ignore")
    import torch, nin_ext
    torch.backends.cudnn.allow_tf32 = False  # exact fp32 on both sides, for assert_close's fp32 tolerance
    nin_ext.set_backend("triton")
    x = torch.randn(1, 2, 5, 5, device=DEVICE)
    m = nin_ext.NiNBlock(2, 3, 3, 1, 1).to(DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(m(x), torch.nn.Sequential(*m)(x))
    print("OK")
    """.replace("DEVICE", repr(_dev().type))
    env = {"TRITON_INTERPRET": "1"} if INTERPRETED else None
    r = run_python(["-c", textwrap.dedent(code)], env_extra=env)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


H100_SHARED_MEMORY = 232448  # bytes of shared memory a block may use on an H100 (227 KiB)

SM90_COMPILE = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from nin_ext.triton.global_avg_pool_triton import spatial_mean_kernel
from nin_ext.triton.config import _NIN_BLOCK_GPU_TILES, _NIN_BLOCK_UNTUNED_TILE, nin_block_shared_memory_bytes
from nin_ext.triton.nin_block_triton import nin_block_kernel

H100_SHARED_MEMORY = H100_SHARED_MEMORY_BYTES

def compile_sm90(kernel, pointers, constexprs, **options):
    names = kernel.arg_names
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)

def compile_block(dtype, precision, gap, resident, block_cc, block_c2, tile):
    p, k, c1, warps, stages = tile
    pointers = {n: "*" + dtype for n in ("x_ptr", "w_ptr", "b_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr")}
    pointers["out_ptr"] = "*fp32" if gap else "*" + dtype
    return compile_sm90(nin_block_kernel, pointers, dict(
        KH=3, KW=3, HAS_B=True, HAS_B1=True, HAS_B2=False, HAS_GAP=gap, H0_RESIDENT=resident,
        ACC_DTYPE=tl.float64 if dtype == "fp64" else tl.float32, DOT_PRECISION=precision, BLOCK_CC=block_cc,
        BLOCK_C2=block_c2, GAP_GROUP=16, BLOCK_P=p, BLOCK_K=k, BLOCK_C1=c1), num_warps=warps, num_stages=stages)

for dtype, precision, gap, resident in [("fp32", "tf32", False, True), ("fp16", "ieee", True, False),
                                        ("fp64", "ieee", False, True)]:
    kernel = compile_block(dtype, precision, gap, resident, 128 if resident else 64, 128, (64, 32, 32, 4, 2))
    if dtype != "fp64":
        assert "mma" in kernel.asm["ptx"], (dtype, "no tensor-core instruction")

# The widest resident layer (512 channels of h0, 512 output channels) in fp32: the configurations the
# pruning keeps there must fit an H100's 227 KiB of shared memory, with the estimate at or above it.
for tile in _NIN_BLOCK_GPU_TILES:
    p, k, c1, warps, stages = tile
    estimate = nin_block_shared_memory_bytes(p, k, c1, stages, 512, 512, True, 4)
    if estimate <= H100_SHARED_MEMORY and p * (512 + 512) <= 128 * 32 * warps:
        shared = compile_block("fp32", "tf32", False, True, 512, 512, tile).metadata.shared
        assert shared <= min(estimate, H100_SHARED_MEMORY), (tile, shared, estimate)
        print("fits", tile, shared, estimate)
# Without autotuning (the test suite on a GPU) one configuration runs every layer, in every dtype.
shared = compile_block("fp64", "ieee", False, True, 512, 512, _NIN_BLOCK_UNTUNED_TILE).metadata.shared
assert shared <= H100_SHARED_MEMORY, shared
compile_sm90(spatial_mean_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32"}, dict(ACC_DTYPE=tl.float32, BLOCK_C=64),
             num_warps=4)
print("OK")
""".replace("H100_SHARED_MEMORY_BYTES", str(H100_SHARED_MEMORY))


AUTOTUNED_NIN = """
import torch, nin_ext
nin_ext.set_backend("triton")
torch.backends.cudnn.allow_tf32 = False
net = nin_ext.NiN().cuda().eval()
reference = nin_ext.reference.nin_net().cuda().eval()
reference.load_state_dict(net.state_dict())
x = torch.rand(2, 1, 96, 96, device="cuda")
with torch.no_grad():
    y, y_ref = net(x), reference(x)
err = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
assert err < 1e-4, err
print("OK")
"""


@pytest.mark.skipif(INTERPRETED, reason="autotuning runs on a GPU (the interpreter has one configuration)")
def test_autotuned_configurations_run_the_nin():
    """The suite runs one configuration (conftest); here every configuration the pruning keeps is timed,
    on the NiN's layers, the widest of which leaves only two that fit in shared memory."""
    r = run_python(["-c", AUTOTUNED_NIN], env_extra={"NIN_EXT_TRITON_AUTOTUNE": "1"})
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_pruning_keeps_the_configurations_that_fit(monkeypatch):
    import triton

    from nin_ext.triton import config
    monkeypatch.setattr(config, "max_shared_memory", lambda device: H100_SHARED_MEMORY)
    configs = [triton.Config(dict(BLOCK_P=p, BLOCK_K=k, BLOCK_C1=c1), num_warps=w, num_stages=s)
               for p, k, c1, w, s in config._NIN_BLOCK_GPU_TILES]
    x = torch.empty(1, dtype=torch.float32)

    def kept(**kwargs):
        pruned = config.prune_nin_block_configs(configs, {"x_ptr": x}, **kwargs)
        return [(c.kwargs["BLOCK_P"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_C1"], c.num_warps, c.num_stages)
                for c in pruned]

    # 512 resident channels in fp32: only the two 32-pixel tiles fit, and both are kept to be tried.
    assert kept(BLOCK_CC=512, BLOCK_C2=256, H0_RESIDENT=True) == [(32, 16, 16, 8, 1), (32, 32, 32, 8, 2)]
    # and with 512 output channels in one program (the widest tile)
    assert kept(BLOCK_CC=512, BLOCK_C2=512, H0_RESIDENT=True) == [(32, 16, 16, 8, 1), (32, 32, 32, 8, 2)]
    # narrow layers keep every tile whose accumulators fit in registers
    assert len(kept(BLOCK_CC=16, BLOCK_C2=16, H0_RESIDENT=True)) == len(configs)
    # when nothing fits, the least shared memory is still tried
    monkeypatch.setattr(config, "max_shared_memory", lambda device: 1024)
    assert kept(BLOCK_CC=512, BLOCK_C2=256, H0_RESIDENT=True) == [(32, 16, 16, 8, 1)]


def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler rejects: compile the kernels for an H100 (sm_90, to
    PTX and through ptxas; no GPU needed) in a process without TRITON_INTERPRET."""
    r = run_python(["-c", SM90_COMPILE])
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
