"""Gradients: gradcheck in float64 on tiny shapes, fp32 module gradients vs float64 reference."""
import copy

import pytest
import torch
from torch.autograd import forward_ad, gradcheck, gradgradcheck

import nin_ext
from nin_ext import ops
from conftest import NIN_MIN_HW, as_reference, assert_close_ref, device_for

# Triton's interpreter runs a forward in tenths of a second: the full Jacobian would take minutes.
FAST_GRADCHECK = {"triton": nin_ext.backends.device_of("triton") == "cpu"}


@pytest.fixture(autouse=True)
def _deterministic_cudnn():
    """The backward runs ATen's convolution backward, as the reference does; cuDNN's default algorithms
    may add up a weight gradient in another order on each run, which gradcheck's reentrancy check
    (two backward passes, compared bit for bit) rejects."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = before


def _params(c0, c1, c2, kernel, bias, dev, requires_grad=True):
    kh, kw = kernel
    mk = lambda *s: (torch.randn(*s, dtype=torch.float64, device=dev) * 0.5).requires_grad_(requires_grad)
    return [mk(c1, c0, kh, kw), mk(c1) if bias[0] else None,
            mk(c1, c1, 1, 1), mk(c1) if bias[1] else None,
            mk(c2, c1, 1, 1), mk(c2) if bias[2] else None]


GRAD_CASES = [
    # (N, C0, H, W, C1, C2, kernel, stride, padding, bias, channels_last)
    (2, 3, 6, 5, 4, 3, (3, 3), (1, 1), (1, 1), (True, True, True), False),
    (1, 2, 7, 6, 3, 5, (3, 2), (2, 1), (1, 0), (True, True, True), False),
    (2, 1, 5, 5, 2, 2, (1, 1), (1, 1), (0, 0), (False, False, False), False),
    (1, 3, 5, 7, 4, 2, (2, 3), (1, 2), (0, 1), (False, True, False), True),
]


def _case_id(c):
    return f"n{c[0]}c{c[1]}_{c[2]}x{c[3]}_k{c[6][0]}{c[6][1]}s{c[7][0]}{c[7][1]}p{c[8][0]}{c[8][1]}" + \
        f"_b{''.join(str(int(b)) for b in c[9])}{'_cl' if c[10] else ''}"


@pytest.mark.parametrize("case", GRAD_CASES, ids=_case_id)
@pytest.mark.parametrize("fn_name", ["nin_block", "nin_block_gap"])
def test_gradcheck_block(backend, case, fn_name):
    dev = device_for(backend)
    n, c0, h, w, c1, c2, kernel, stride, pad, bias, cl = case
    x = torch.randn(n, c0, h, w, dtype=torch.float64, device=dev)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    params = _params(c0, c1, c2, kernel, bias, dev)
    fn = getattr(ops, fn_name)
    assert gradcheck(lambda *a: fn(*a, stride, pad), (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5,
                     fast_mode=FAST_GRADCHECK.get(backend, False))


@pytest.mark.parametrize("fn_name", ["nin_block", "nin_block_gap"])
def test_gradcheck_block_partial_requires_grad(backend, fn_name):
    """Only some inputs need grad (e.g. frozen weights, or input without grad)."""
    dev = device_for(backend)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, device=dev)
    params = _params(2, 3, 2, (2, 2), (True, True, True), dev, requires_grad=False)
    params[2].requires_grad_(True)   # w1 only
    params[5].requires_grad_(True)   # b2 only
    fn = getattr(ops, fn_name)
    assert gradcheck(lambda *a: fn(*a, 1, 1), (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5,
                     fast_mode=FAST_GRADCHECK.get(backend, False))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 1, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_global_avg_pool(backend, shape, channels_last):
    dev = device_for(backend)
    x = torch.randn(*shape, dtype=torch.float64, device=dev)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert gradcheck(ops.global_avg_pool, (x,), eps=1e-6, atol=1e-6, rtol=1e-5,
                     fast_mode=FAST_GRADCHECK.get(backend, False))


def _grads_vs_reference(ours, x, out_weight):
    """Backward through ours (fp32) and its float64 notebook copy; compare every gradient."""
    ref64m = as_reference(ours.cpu()).double()
    dev = x.device
    ours.to(dev)
    x32 = x.clone().requires_grad_(True)
    (ours(x32) * out_weight.to(dev)).sum().backward()
    x64 = x.detach().cpu().double().requires_grad_(True)
    (ref64m(x64) * out_weight.double().cpu()).sum().backward()
    assert_close_ref(x32.grad, x64.grad, kind="grad", what="grad of input")
    p64 = dict(ref64m.named_parameters())
    names = [k for k, _ in ours.named_parameters()]
    assert names == list(p64), "parameter names differ from the reference"
    for k, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient for {k}"
        assert_close_ref(p.grad, p64[k].grad, kind="grad", what=f"grad of {k}")


def test_ninblock_fp32_grads(backend):
    dev = device_for(backend)
    ours = nin_ext.NiNBlock(3, 16, 5, 2, 2)
    x = torch.randn(2, 3, 21, 19, device=dev)
    _grads_vs_reference(ours, x, torch.randn(2, 16, 11, 10))


def test_ninblock_fp32_grads_channels_last(backend):
    dev = device_for(backend)
    ours = nin_ext.NiNBlock(4, 8, (3, 1), (1, 2), (1, 0))
    x = torch.randn(2, 4, 9, 12, device=dev).to(memory_format=torch.channels_last)
    _grads_vs_reference(ours, x, torch.randn(2, 8, 9, 6))


@pytest.mark.parametrize("pool", [False, True])
def test_ninblock_output_gradient_is_zero_where_the_output_is(backend, pool):
    """The output's ReLU backward selects, as the reference's threshold_backward: an inf or NaN
    output gradient where the output is 0 gives 0, not NaN (a product with the mask would); with a
    max pool after the block (the cpu backend masks the pooled gradient), where the pooled output is."""
    dev = device_for(backend)
    block = nin_ext.NiNBlock(3, 6, 3, 1, 1).to(dev)
    ours, ref = block, as_reference(block).to(dev)
    if pool:
        ours = nin_ext.FusedSequential(ours, torch.nn.MaxPool2d(2, 1))
        ref = torch.nn.Sequential(ref, torch.nn.MaxPool2d(2, 1))
    x = torch.randn(2, 3, 7, 5, device=dev)
    with torch.no_grad():
        zero = ref(x) == 0
    assert zero.any() and not zero.all()
    grad_out = torch.randn(zero.shape, device=dev).masked_fill(zero, float("inf"))
    grad_out.view(-1)[zero.view(-1).nonzero()[0]] = float("nan")
    grads = []
    for model in (ours, ref):
        model.zero_grad()
        x_ = x.clone().requires_grad_(True)
        model(x_).backward(grad_out)
        grads.append([x_.grad] + [p.grad for p in model.parameters()])
    for g, g_ref in zip(*grads):
        assert torch.isfinite(g_ref).all()
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_nin_fp32_grads(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN().eval()      # eval: dropout is identity, so the comparison is deterministic
    x = torch.rand(2, 1, 72, 72, device=dev)
    _grads_vs_reference(ours, x, torch.randn(2, 10))


def test_nin_minimum_input_size():
    """67x67 is the smallest square input the NiN net accepts (three MaxPool2d(3, 2))."""
    ours = nin_ext.NiN().eval()
    ref = as_reference(ours).eval()
    with torch.no_grad():
        assert ours(torch.rand(1, 1, NIN_MIN_HW, NIN_MIN_HW)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            ref(torch.rand(1, 1, NIN_MIN_HW - 1, NIN_MIN_HW - 1))
        with pytest.raises((RuntimeError, ValueError)):
            ours(torch.rand(1, 1, NIN_MIN_HW - 1, NIN_MIN_HW - 1))


def test_training_forward_returns_the_hidden_activations(cpu_backend):
    """nin_block_with_hidden (the cpu backend's forward when gradients are needed) returns the
    block's output and both hidden activations, and its backward takes gradients through all three."""
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(5, 3, 3, 3), torch.randn(5), torch.randn(4, 5, 1, 1), torch.randn(4),
              torch.randn(6, 4, 1, 1), torch.randn(6)]
    params = [p.double().requires_grad_(True) for p in params]
    out, h0, h1 = torch.ops.nin_ext.nin_block_with_hidden(x, *params, [2, 1], [1, 0])
    expected = nin_ext.reference.nin_block_activations(x, *params, (2, 1), (1, 0))
    for y, y64 in zip((h0, h1, out), expected):
        assert_close_ref(y, y64.detach())
    assert gradcheck(lambda *a: sum(t.sum() * (i + 1) for i, t in enumerate(
        torch.ops.nin_ext.nin_block_with_hidden(*a, [2, 1], [1, 0]))), (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_training_forward_is_used_when_grad_is_needed(cpu_backend):
    block = nin_ext.NiNBlock(3, 4, 3, 1, 1)
    x = torch.randn(1, 3, 6, 6)
    for grad_enabled, expected in ((True, "nin_ext::nin_block_with_hidden"), (False, "nin_ext::nin_block")):
        with torch.set_grad_enabled(grad_enabled), torch.profiler.profile() as prof:
            block(x)
        names = {e.name for e in prof.events()}
        assert expected in names, names


def _small_nin_call(fn_name, dev):
    """A call of ops.<fn_name> on small float64 inputs: (function, input)."""
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=dev)
    params = _params(3, 4, 5, (3, 3), (True, True, True), dev, requires_grad=False)
    if fn_name == "global_avg_pool":
        return ops.global_avg_pool, x
    if fn_name == "max_pool2d":
        return (lambda t: ops.max_pool2d(t, 2)), x
    if fn_name == "nin_block_max_pool":
        return (lambda t: ops.nin_block_max_pool(t, *params, 1, 1, 2)), x
    return (lambda t: getattr(ops, fn_name)(t, *params, 1, 1)), x


@pytest.mark.parametrize("fn_name", ["nin_block", "nin_block_gap", "nin_block_max_pool", "max_pool2d",
                                     "global_avg_pool"])
def test_forward_mode_ad(backend, fn_name):
    """A dual input (forward-mode AD) runs the reference's ATen ops, which have the forward derivative
    that the fused kernels lack: the output's tangent is there, not dropped."""
    fn, x = _small_nin_call(fn_name, device_for(backend))
    tangent = torch.randn_like(x)
    with forward_ad.dual_level():
        out_tangent = forward_ad.unpack_dual(fn(forward_ad.make_dual(x, tangent))).tangent
    # The ops are piecewise linear (ReLU, max, mean): the tangent is the output's change along it.
    expected = (fn(x + 1e-6 * tangent) - fn(x - 1e-6 * tangent)) / 2e-6
    torch.testing.assert_close(out_tangent, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn_name", ["nin_block", "nin_block_gap", "nin_block_max_pool", "max_pool2d",
                                     "global_avg_pool"])
def test_calls_that_need_no_gradient(native_backend, fn_name):
    """Where no gradient is needed the ops dispatch past their (Python) autograd kernel: the bits of the
    call through it, and no grad_fn, also for inputs that require grad under torch.no_grad."""
    fn, x = _small_nin_call(fn_name, device_for(native_backend))
    through_autograd = fn(x.clone().requires_grad_(True))
    assert through_autograd.grad_fn is not None
    plain = fn(x)
    assert plain.grad_fn is None and not plain.requires_grad
    with torch.no_grad():
        no_grad = fn(x.clone().requires_grad_(True))
    assert no_grad.grad_fn is None and not no_grad.requires_grad
    assert torch.equal(plain, through_autograd.detach()) and torch.equal(plain, no_grad)


# --------------------------------------------------------------------------------------
# Double backward (create_graph=True): the backward differentiates the reference's ATen ops
# --------------------------------------------------------------------------------------
def _double_backward_call(fn_name, dev):
    params = _params(3, 4, 3, (3, 3), (True, True, True), dev)
    calls = {"nin_block": lambda x, *p: ops.nin_block(x, *p, 1, 1),
             "nin_block_gap": lambda x, *p: ops.nin_block_gap(x, *p, (2, 1), 0),
             "nin_block_max_pool": lambda x, *p: ops.nin_block_max_pool(x, *p, 1, 1, 3, 2, 1, True),
             "max_pool2d": lambda x, *p: ops.max_pool2d(x, 3, 2, 1, True),
             "global_avg_pool": lambda x, *p: ops.global_avg_pool(x)}
    pooled = fn_name in ("max_pool2d", "global_avg_pool")
    return calls[fn_name], [] if pooled else params


@pytest.mark.parametrize("fn_name", ["nin_block", "nin_block_gap", "nin_block_max_pool", "max_pool2d",
                                     "global_avg_pool"])
def test_gradgradcheck(backend, fn_name):
    dev = device_for(backend)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, device=dev, requires_grad=True)
    fn, params = _double_backward_call(fn_name, dev)
    # fast mode (a random projection of the Hessian-vector products): the full check took minutes
    assert gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_nin_gradient_penalty_like_reference(native_backend):
    """A gradient penalty (the input gradient's norm, differentiated again) through the whole NiN, in
    train mode (dropout under one seed) and float64, against the reference."""
    dev = device_for(native_backend)
    ours = nin_ext.NiN(dropout=0.3).double().to(dev)
    ref = as_reference(ours.cpu()).double().to(dev)
    ours.to(dev)
    x = torch.rand(2, 1, 70, 70, dtype=torch.float64, device=dev)
    results = []
    for model in (ours, ref):
        torch.manual_seed(5)
        xx = x.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(model(xx).square().sum(), xx, create_graph=True)
        grad_x.square().sum().backward()
        results.append([xx.grad] + [p.grad for p in model.parameters()])
    for got, expected in zip(*results):
        assert_close_ref(got, expected, kind="grad", what="gradient of the penalty")


def test_per_sample_gradients_like_reference(native_backend):
    """torch.func transforms (here vmap of grad over functional_call: per-sample gradients, as for
    DP-SGD) run the reference's ATen ops under nin_ext's modules: the same gradients as the reference."""
    from torch.func import functional_call, grad, vmap
    dev = device_for(native_backend)
    ours = nin_ext.NiN(dropout=0.0).double().to(dev).eval()
    ref = as_reference(ours.cpu()).double().to(dev)
    ours.to(dev)
    x = torch.rand(3, 1, 70, 70, dtype=torch.float64, device=dev)
    per_sample = []
    for model in (ours, ref):
        params = {k: v.detach() for k, v in model.named_parameters()}
        loss = lambda p, xi: functional_call(model, p, (xi[None],)).square().sum()
        per_sample.append(vmap(grad(loss), in_dims=(None, 0))(params, x))
    for k, expected in per_sample[1].items():
        assert_close_ref(per_sample[0][k], expected, kind="grad", what=f"per-sample gradient of {k}")
