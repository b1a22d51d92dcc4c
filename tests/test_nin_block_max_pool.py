"""nin_block_max_pool: a NiN block and the max pool after it, one op on the CPU backend.

On the CPU it equals max_pool2d(nin_block(...)) to the bit (the same values, pooled from a buffer
instead of the block's full-size output): checked on random shapes, pool settings, layouts and thread
counts, on both of the block's paths (direct, Winograd), and where the two ops run one after the
other (channels_last output). Against float64 with the block's tolerances on every backend."""
import random

import pytest
import torch
import torch.nn as nn

import nin_ext
from nin_ext import ops
from conftest import (assert_close_ref, device_for, ref64, ref64_fn, ref_block_fn, require_extension,
                      runs_winograd)


def _draw(rng, i):
    k = rng.choice([1, 3, 5, 11])
    s = rng.choice([1, 2, 4]) if k > 1 else 1
    h, w = rng.randint(k, 40), rng.randint(k, 40)
    pool_k = (rng.randint(1, 3), rng.randint(1, 3))
    return dict(n=rng.choice([1, 2, 3, 5]), c0=rng.choice([1, 3, 8, 33]), c1=rng.choice([4, 13, 70]),
                c2=rng.choice([3, 16]), k=k, s=s, p=rng.randint(0, k // 2), h=h, w=w,
                pool=(pool_k, (rng.randint(1, 3), rng.randint(1, 3)),
                      (rng.randint(0, pool_k[0] // 2), rng.randint(0, pool_k[1] // 2)), rng.random() < 0.5),
                layout="channels_last" if i % 5 == 4 else "contiguous")


CASES = [_draw(random.Random(4242 + i), i) for i in range(16)]
# Blocks that take the Winograd path (tiles span images); in the last two the pool reads 12 of 13 and
# 24 of 25 rows and columns, so the block runs on fewer Winograd blocks than its whole output needs.
WINOGRAD_CASES = [
    dict(n=2, c0=32, c1=64, c2=8, k=3, s=1, p=1, h=10, w=9, pool=((3, 3), (2, 2), (0, 0), False),
         layout="contiguous"),
    dict(n=9, c0=32, c1=64, c2=5, k=5, s=1, p=2, h=7, w=6, pool=((2, 2), (2, 2), (1, 0), True), layout="contiguous"),
    dict(n=3, c0=64, c1=96, c2=8, k=3, s=1, p=1, h=13, w=13, pool=((2, 2), (2, 2), (0, 0), False),
         layout="contiguous"),
    dict(n=4, c0=64, c1=96, c2=8, k=5, s=1, p=2, h=25, w=25, pool=((2, 2), (2, 2), (0, 0), False),
         layout="contiguous")]
# The seed net's block 1 and its pool (which reads 23 of its 24 output columns here).
SEED_BLOCK1_CASE = dict(n=2, c0=1, c1=96, c2=96, k=11, s=4, p=0, h=99, w=103, pool=((3, 3), (2, 2), (0, 0), False),
                        layout="contiguous")
CASES += [SEED_BLOCK1_CASE] + WINOGRAD_CASES


def _args(case, device="cpu", dtype=torch.float32):
    x = torch.randn(case["n"], case["c0"], case["h"], case["w"], dtype=dtype)
    if case["layout"] == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    k, c1 = case["k"], case["c1"]
    params = [torch.randn(c1, case["c0"], k, k, dtype=dtype) / (case["c0"] * k * k) ** 0.5,
              torch.randn(c1, dtype=dtype) * 0.1,
              torch.randn(c1, c1, 1, 1, dtype=dtype) / c1 ** 0.5, torch.randn(c1, dtype=dtype) * 0.1,
              torch.randn(case["c2"], c1, 1, 1, dtype=dtype) / c1 ** 0.5, torch.randn(case["c2"], dtype=dtype) * 0.1]
    return x.to(device), [p.to(device) for p in params]


def _ids(c):
    return "n{n}_c{c0}-{c1}-{c2}_k{k}s{s}p{p}_{h}x{w}_{layout}_pool{pool}".format(**c).replace(" ", "")


def _valid(case):
    oh = (case["h"] + 2 * case["p"] - case["k"]) // case["s"] + 1
    ow = (case["w"] + 2 * case["p"] - case["k"]) // case["s"] + 1
    (kh, kw), _, _, _ = case["pool"]
    return oh >= kh and ow >= kw


@pytest.mark.parametrize("case", [c for c in CASES if _valid(c)], ids=_ids)
def test_equals_the_two_ops_on_cpu(cpu_backend, case):
    x, params = _args(case)
    s, p = (case["s"],) * 2, (case["p"],) * 2
    if case in WINOGRAD_CASES:
        assert runs_winograd("cpu", x, params[0], s, p, case["c1"], case["c2"])
    with torch.no_grad():
        expected = torch.ops.nin_ext.max_pool2d(torch.ops.nin_ext.nin_block(x, *params, s, p), *case["pool"])
        threads = torch.get_num_threads()
        try:
            for n_threads in (1, 2, 3, 5):  # Winograd tiles shared by threads: images pooled at the end
                torch.set_num_threads(n_threads)
                got = torch.ops.nin_ext.nin_block_max_pool(x, *params, s, p, *case["pool"])
                assert torch.equal(got, expected), f"{n_threads} threads"
                assert got.is_contiguous(memory_format=torch.channels_last) == \
                    expected.is_contiguous(memory_format=torch.channels_last)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.parametrize("case", [c for c in CASES[:6] + [SEED_BLOCK1_CASE] + WINOGRAD_CASES[:2] if _valid(c)],
                         ids=_ids)
def test_matches_float64(backend, case):
    x, params = _args(case, device_for(backend))
    s, p = case["s"], case["p"]
    with torch.no_grad():
        y = ops.nin_block_max_pool(x, *params, s, p, *case["pool"])
    block64 = ref64_fn(ref_block_fn, x, *params, (s, s), (p, p))
    y64 = torch.nn.functional.max_pool2d(block64, *case["pool"][:3], ceil_mode=case["pool"][3])
    kind = "fwd_winograd" if runs_winograd(backend, x, params[0], (s, s), (p, p), case["c1"], case["c2"]) else "fwd"
    assert_close_ref(y, y64, kind=kind)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes(cpu_backend, dtype):
    case = SEED_BLOCK1_CASE
    x, params = _args(case, dtype=dtype)
    with torch.no_grad():
        got = torch.ops.nin_ext.nin_block_max_pool(x, *params, [4, 4], [0, 0], *case["pool"])
        expected = torch.ops.nin_ext.max_pool2d(torch.ops.nin_ext.nin_block(x, *params, [4, 4], [0, 0]),
                                                *case["pool"])
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_empty_batch(cpu_backend):
    x, params = _args(dict(SEED_BLOCK1_CASE, n=0))
    y = torch.ops.nin_ext.nin_block_max_pool(x, *params, [4, 4], [0, 0], [3, 3], [2, 2], [0, 0], False)
    assert y.shape == (0, 96, 11, 11)


def test_gradients_match_the_two_ops(cpu_backend):
    case = dict(n=2, c0=3, c1=5, c2=4, k=3, s=1, p=1, h=9, w=8, pool=((3, 3), (2, 2), (1, 1), True),
                layout="contiguous")
    x, params = _args(case, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (x, *params)]
    op = lambda *a: torch.ops.nin_ext.nin_block_max_pool(*a, [1, 1], [1, 1], *case["pool"])  # noqa: E731
    assert torch.autograd.gradcheck(op, inputs)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_training_forward_returns_the_two_ops_results_and_their_gradients(cpu_backend, layout):
    """nin_block_max_pool_with_hidden (the cpu backend's block + pool when a gradient is needed) returns
    the two training ops' results, and its backward, which masks the pooled gradient instead of the
    block's, gives their gradients, through every output it returns."""
    case = dict(n=2, c0=3, c1=5, c2=5, k=3, s=1, p=1, h=9, w=8, pool=((3, 3), (2, 2), (1, 1), True), layout=layout)
    x, params = _args(case, dtype=torch.float64)
    got = torch.ops.nin_ext.nin_block_max_pool_with_hidden(x, *params, [1, 1], [1, 1], *case["pool"])
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(x, *params, [1, 1], [1, 1])
    pooled, argmax = torch.ops.nin_ext.max_pool2d_with_argmax(out, *case["pool"])
    for g, e in zip(got, (pooled, h0, h1, argmax)):
        assert torch.equal(g, e) and g.stride() == e.stride()
    inputs = [t.requires_grad_(True) for t in (x, *params)]
    op = lambda *a: torch.ops.nin_ext.nin_block_max_pool_with_hidden(*a, [1, 1], [1, 1], *case["pool"])  # noqa: E731
    assert torch.autograd.gradcheck(lambda *a: op(*a)[0], inputs)
    assert torch.autograd.gradcheck(lambda *a: sum(t.sum() * (i + 1) for i, t in enumerate(op(*a)[:3])), inputs)
    assert torch.autograd.gradcheck(lambda *a: op(*a)[2], inputs)  # a hidden output alone


def test_opcheck():
    require_extension()
    x, params = _args(dict(n=2, c0=3, c1=5, c2=4, k=3, s=2, p=1, h=11, w=9, pool=None, layout="contiguous"))
    torch.library.opcheck(torch.ops.nin_ext.nin_block_max_pool.default,
                          (x.requires_grad_(True), *params, [2, 2], [1, 1], [3, 2], [2, 1], [1, 0], True))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_training_forward(layout):
    require_extension()
    x, params = _args(dict(n=2, c0=3, c1=5, c2=5, k=3, s=2, p=1, h=11, w=9, pool=None, layout=layout))
    for requires_grad in (False, True):
        args = [t.clone().requires_grad_(requires_grad) for t in (x, *params)]
        torch.library.opcheck(torch.ops.nin_ext.nin_block_max_pool_with_hidden.default,
                              (*args, [2, 2], [1, 1], [3, 2], [2, 1], [1, 0], True))


def test_errors_name_the_argument(cpu_backend):
    x, params = _args(SEED_BLOCK1_CASE)
    with pytest.raises(RuntimeError, match="nin_block_max_pool: expected stride"):
        torch.ops.nin_ext.nin_block_max_pool(x, *params, [4, 0], [0, 0], [3, 3], [2, 2], [0, 0], False)
    with pytest.raises(RuntimeError, match="nin_block_max_pool: .*padding"):
        torch.ops.nin_ext.nin_block_max_pool(x, *params, [4, 4], [0, 0], [3, 3], [2, 2], [2, 2], False)


def test_fused_sequential_runs_it_without_grad(cpu_backend):
    model = nin_ext.NiN().eval()
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad(), torch.profiler.profile() as prof:
        y = model(x)
    assert sum(e.name == "nin_ext::nin_block_max_pool" for e in prof.events()) == 3
    reference = nin_ext.reference.nin_net().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_close_ref(y, ref64(reference, x))
    with torch.profiler.profile() as prof:  # a gradient is needed: the training forward of block + pool
        model(x[:1]).sum().backward()
    names = [e.name for e in prof.events()]
    assert "nin_ext::nin_block_max_pool" not in names
    assert names.count("nin_ext::nin_block_max_pool_with_hidden") == 3
    assert model[0][0].weight.grad is not None


def test_fused_sequential_leaves_a_lone_block_alone(cpu_backend):
    model = nin_ext.FusedSequential(nin_ext.NiNBlock(3, 8, 3, 1, 1), nn.AvgPool2d(2))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), torch.profiler.profile() as prof:
        model(x)
    assert not any(e.name == "nin_ext::nin_block_max_pool" for e in prof.events())
