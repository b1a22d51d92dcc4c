"""nin_ext.fuse(): pattern matching, parameter sharing, non-matching layers left alone."""
import copy

import pytest
import torch
import torch.nn as nn

import nin_ext
from nin_ext import reference
from conftest import as_reference, assert_close_ref, ref64

FORBIDDEN = ("aten::convolution", "aten::conv2d", "aten::_convolution")


def _profile_names(fn):
    """The ops an inference call runs (with gradients on, the cpu backend runs nin_block_with_hidden)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def _snapshot(model):
    """Identity and type of every submodule and parameter, and a copy of all state."""
    return ([(n, id(m), type(m)) for n, m in model.named_modules()],
            [(n, id(p)) for n, p in model.named_parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_untouched(model, snap):
    mods, params, state = snap
    assert [(n, id(m), type(m)) for n, m in model.named_modules()] == mods, "input model's modules changed"
    assert [(n, id(p)) for n, p in model.named_parameters()] == params, "input model's parameters changed"
    now = model.state_dict()
    assert list(now) == list(state)
    for k in state:
        assert torch.equal(now[k], state[k]), k


def _assert_shared(fused, orig):
    fp, op = dict(fused.named_parameters()), dict(orig.named_parameters())
    assert list(fp) == list(op), "parameter names changed"
    for k in op:
        assert fp[k] is op[k], f"parameter {k} is not the same Parameter object"
    fs, os_ = fused.state_dict(), orig.state_dict()
    assert list(fs) == list(os_), "state_dict keys changed"
    for k in os_:
        assert fs[k].data_ptr() == os_[k].data_ptr(), f"state_dict[{k}] does not share storage"


# --------------------------------------------------------------------------------------
# The notebook net
# --------------------------------------------------------------------------------------
def test_fuse_reference_net(cpu_backend):
    ref = reference.nin_net().eval()
    snap = _snapshot(ref)
    x = torch.rand(2, 1, 80, 80)
    with torch.no_grad():
        y_before = ref(x)
    fused = nin_ext.fuse(ref)
    assert fused is not ref
    _assert_shared(fused, ref)
    # original untouched: plain nn.Sequential of plain torch.nn modules, still works identically
    _assert_untouched(ref, snap)
    assert type(ref) is nn.Sequential
    assert all(type(m).__module__.startswith("torch.nn") for m in ref.modules())
    with torch.no_grad():
        assert torch.equal(ref(x), y_before)
        y = fused.eval()(x)
    assert_close_ref(y, ref64(ref, x))
    names = _profile_names(lambda: fused(x))
    assert "nin_ext::nin_block_gap" in names, sorted(set(n for n in names if "nin" in n))
    blocks = [n for n in names if n in ("nin_ext::nin_block", "nin_ext::nin_block_max_pool")]
    assert len(blocks) >= 3, [n for n in names if n.startswith("nin_ext")]
    assert not [n for n in names if n in FORBIDDEN], "convolutions left unfused"


def test_fuse_reference_net_train_and_grads(cpu_backend):
    ref = reference.nin_net().train()
    fused = nin_ext.fuse(ref)
    fused.train()
    x = torch.rand(2, 1, 72, 72)
    torch.manual_seed(3)
    y_ref = ref(x)
    torch.manual_seed(3)
    y = fused(x)
    assert_close_ref(y, y_ref.double(), what="train-mode output with the same dropout mask")
    # gradients land on the shared parameters
    g = torch.randn(2, 10)
    (y * g).sum().backward()
    g_fused = {k: p.grad.clone() for k, p in ref.named_parameters()}
    ref.zero_grad()
    (y_ref * g).sum().backward()
    for k, p in ref.named_parameters():
        assert_close_ref(g_fused[k], p.grad.double(), kind="grad", what=f"grad {k}")


def test_fuse_nin_module_is_fine(cpu_backend):
    net = nin_ext.NiN().eval()
    fused = nin_ext.fuse(net)
    x = torch.rand(1, 1, 70, 70)
    with torch.no_grad():
        assert_close_ref(fused(x), net(x).double())


# --------------------------------------------------------------------------------------
# Patterns inside other modules
# --------------------------------------------------------------------------------------
def _run(cin, cout, k=3, s=1, p=1, bias=True, inplace=False):
    return [nn.Conv2d(cin, cout, k, s, p, bias=bias), nn.ReLU(inplace=inplace),
            nn.Conv2d(cout, cout, 1, bias=bias), nn.ReLU(inplace=inplace),
            nn.Conv2d(cout, cout, 1, bias=bias), nn.ReLU(inplace=inplace)]


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        bn = nn.BatchNorm2d(3)
        # a run nested one Sequential deeper, between non-matching layers
        self.features = nn.Sequential(bn, nn.Sequential(*_run(3, 8, 3, 2, 1)), nn.MaxPool2d(2))
        self.extra = nn.Conv2d(8, 8, 3, padding=1)
        # a run (1x1 first conv, no biases, in-place ReLUs) followed by global pooling
        self.head = nn.Sequential(*_run(8, 6, 1, 1, 0, bias=False, inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, 4)
        # non-trivial BN statistics
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.fc(self.head(torch.tanh(self.extra(self.features(x)))))


def test_fuse_custom_module(cpu_backend):
    m = Custom().eval()
    snap = _snapshot(m)
    x = torch.randn(2, 3, 17, 15)
    with torch.no_grad():
        y0 = m(x)
    fused = nin_ext.fuse(m).eval()
    _assert_untouched(m, snap)
    _assert_shared(fused, m)
    with torch.no_grad():
        y = fused(x)
    assert_close_ref(y, ref64(m, x))
    assert_close_ref(y, y0.double())
    # non-matching layers are kept as they are
    assert type(fused.features[0]) is nn.BatchNorm2d
    assert type(fused.extra) is nn.Conv2d and fused.extra.weight is m.extra.weight
    assert type(fused.fc) is nn.Linear and fused.fc.weight is m.fc.weight
    assert type(fused.features[2]) is nn.MaxPool2d
    with torch.no_grad():
        names = _profile_names(lambda: fused(x))
    assert "nin_ext::nin_block_max_pool" in names, sorted(set(n for n in names if "nin" in n))  # + its pool
    assert "nin_ext::nin_block_gap" in names, sorted(set(n for n in names if "nin" in n))
    # exactly one conv left (self.extra)
    assert names.count("aten::conv2d") == 1, names.count("aten::conv2d")


def test_fuse_run_embedded_in_longer_sequential(cpu_backend):
    m = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
                      *_run(4, 8, 3, 1, 1), *_run(8, 8, 5, 2, 2), nn.MaxPool2d(2),
                      nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten()).eval()
    with torch.no_grad():
        m[0].running_mean.uniform_(-1, 1)
    keys = list(m.state_dict())
    x = torch.randn(2, 4, 13, 14)
    fused = nin_ext.fuse(m).eval()
    assert list(fused.state_dict()) == keys
    _assert_shared(fused, m)
    with torch.no_grad():
        assert_close_ref(fused(x), ref64(m, x))
        names = _profile_names(lambda: fused(x))
    # the second run and the max pool after it are one op
    assert names.count("nin_ext::nin_block") == 1, [n for n in names if n.startswith("nin_ext")]
    assert names.count("nin_ext::nin_block_max_pool") == 1, [n for n in names if n.startswith("nin_ext")]
    assert names.count("aten::conv2d") == 2   # the leading 3x3 and the trailing 1x1


def test_fuse_non_unit_pool_is_not_gap(cpu_backend):
    m = nn.Sequential(*_run(3, 5), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    x = torch.randn(2, 3, 9, 9)
    fused = nin_ext.fuse(m).eval()
    with torch.no_grad():
        assert_close_ref(fused(x), ref64(m, x))
        names = _profile_names(lambda: fused(x))
    assert "nin_ext::nin_block_gap" not in names
    assert "nin_ext::nin_block" in names


# --------------------------------------------------------------------------------------
# Runs that must NOT be fused
# --------------------------------------------------------------------------------------
def _not_fusable_cases():
    def run_with(i, layer):
        r = _run(4, 6, 3, 1, 1)
        r[i] = layer
        return r
    return {
        "groups2": run_with(0, nn.Conv2d(4, 6, 3, 1, 1, groups=2)),
        "dilation2": run_with(0, nn.Conv2d(4, 6, 3, 1, 2, dilation=2)),
        "reflect_padding": run_with(0, nn.Conv2d(4, 6, 3, 1, 1, padding_mode="reflect")),
        "1x1_stride2": run_with(2, nn.Conv2d(6, 6, 1, stride=2)),
        "1x1_padding1": run_with(2, nn.Conv2d(6, 6, 1, padding=1)),
        "1x1_groups2": run_with(4, nn.Conv2d(6, 6, 1, groups=2)),
        "second_conv_3x3": run_with(2, nn.Conv2d(6, 6, 3, padding=1)),
        "third_conv_3x3": run_with(4, nn.Conv2d(6, 6, 3, padding=1)),
        "leaky_relu": run_with(3, nn.LeakyReLU(0.1)),
        "gelu_first": run_with(1, nn.GELU()),
        "relu6_last": run_with(5, nn.ReLU6()),
        "missing_last_relu": _run(4, 6, 3, 1, 1)[:5] + [nn.Tanh()],
        "bn_between": _run(4, 6, 3, 1, 1)[:2] + [nn.BatchNorm2d(6)] + _run(4, 6, 3, 1, 1)[2:],
    }


NOT_FUSABLE = _not_fusable_cases()


@pytest.mark.parametrize("case", sorted(NOT_FUSABLE))
def test_fuse_leaves_non_matching_runs(cpu_backend, case):
    torch.manual_seed(5)
    layers = _not_fusable_cases()[case]
    m = nn.Sequential(*layers).eval()
    if case == "bn_between":
        with torch.no_grad():
            m[2].running_mean.uniform_(-1, 1)
    snap = _snapshot(m)
    x = torch.randn(2, 4, 11, 10)
    fused = nin_ext.fuse(m).eval()
    _assert_untouched(m, snap)
    with torch.no_grad():
        y = fused(x)
        assert_close_ref(y, ref64(m, x))
        names = _profile_names(lambda: fused(x))
    assert not [n for n in names if n.startswith("nin_ext::")], f"{case} was fused"
    for (n0, mod0), (n1, mod1) in zip(m.named_modules(), fused.named_modules()):
        assert n0 == n1 and type(mod0) is type(mod1), f"layer {n0} replaced by {type(mod1)}"


def test_fuse_inplace_relu_bias_false_is_fused(cpu_backend):
    m = nn.Sequential(*_run(3, 7, 3, 1, 1, bias=False, inplace=True)).eval()
    x = torch.randn(2, 3, 9, 8)
    fused = nin_ext.fuse(m).eval()
    with torch.no_grad():
        assert_close_ref(fused(x), ref64(m, x))
        names = _profile_names(lambda: fused(x))
    assert "nin_ext::nin_block" in names


# --------------------------------------------------------------------------------------
# Changes between calls
# --------------------------------------------------------------------------------------
def test_fused_sequential_follows_changes_between_calls(cpu_backend):
    """A FusedSequential keeps the steps it matched between calls and matches again when a child is
    replaced or an attribute that the matching reads changes: every call gives what the plain
    Sequential of the same layers gives at that moment, and runs the fused ops that fit it."""
    torch.manual_seed(7)
    model = nin_ext.FusedSequential(*_run(3, 6, 3, 1, 1), nn.MaxPool2d(2), *_run(6, 5, 3, 1, 0),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(2, 3, 15, 13)

    def check(expected_ops):
        with torch.no_grad():
            assert_close_ref(model(x), ref64(nn.Sequential(*model), x))
            ops = [n for n in _profile_names(lambda: model(x)) if n.startswith("nin_ext::")]
        assert ops == expected_ops

    fused_both = ["nin_ext::nin_block_max_pool", "nin_ext::nin_block_gap"]
    check(fused_both)
    model[6].kernel_size, model[6].stride = 3, 1       # the pool's attributes
    check(fused_both)
    model[0].padding = (0, 2)                          # the first conv's
    model[7].stride = (2, 1)                           # the second block's conv
    check(fused_both)
    model[3] = nn.Tanh()                               # the first run no longer a block
    check(["nin_ext::max_pool2d", "nin_ext::nin_block_gap"])
    model[3] = nn.ReLU()
    model[13] = nn.AdaptiveAvgPool2d(2)                # no longer a global pool
    check(["nin_ext::nin_block_max_pool", "nin_ext::nin_block"])
    model[9].weight = nn.Parameter(torch.randn_like(model[9].weight))  # a new Parameter object
    check(["nin_ext::nin_block_max_pool", "nin_ext::nin_block"])
    del model[6]                                       # the pool gone: the first block alone
    check(["nin_ext::nin_block", "nin_ext::nin_block"])


def test_eval_dropout_and_flatten_follow_mode_and_attributes(cpu_backend):
    """An eval-mode Dropout takes no step and the Flatten() after the global pool none of its own; the
    steps follow train()/eval(), a p that F.dropout rejects, and a Flatten's dims as the reference."""
    ours, ref = _nin_pair()
    x = torch.rand(2, 1, 80, 80)
    with torch.no_grad():
        assert_close_ref(ours(x), ref64(ref, x))
        ours.train(), ref.train()
        for seed in (0, 3):  # train after eval: the same dropout masks as the reference
            torch.manual_seed(seed)
            y_ref = ref(x)
            torch.manual_seed(seed)
            assert_close_ref(ours(x), y_ref.double(), what=f"train output, seed {seed}")
        ours.eval(), ref.eval()
        ours[6].p = ref[6].p = 1.5  # F.dropout checks p in eval mode too
        with pytest.raises(ValueError, match="dropout probability"):
            ref(x)
        with pytest.raises(ValueError, match="dropout probability"):
            ours(x)
        ours[6].p = ref[6].p = 0.5
        for start, end in ((0, -1), (1, 2), (1, -1)):  # Flatten's dims read on every call
            ours[-1].start_dim, ours[-1].end_dim = start, end
            ref[-1].start_dim, ref[-1].end_dim = start, end
            for shape in ((2, 1, 80, 80), (1, 80, 80)):
                xs = torch.rand(shape)
                y, y_ref = ours(xs), ref(xs)
                assert y.shape == y_ref.shape, (start, end, shape)
                assert_close_ref(y, ref64(ref, xs))


def test_eval_dropout_and_flatten_hooks_run(cpu_backend):
    ours, ref = _nin_pair()
    x = torch.rand(2, 1, 80, 80)
    ours_calls, ref_calls = [], []
    handles = []
    for model, calls in ((ours, ours_calls), (ref, ref_calls)):
        handles.append(model[6].register_forward_hook(lambda m, i, o, calls=calls: calls.append("dropout")))
        handles.append(model[-1].register_forward_pre_hook(lambda m, i, calls=calls: calls.append(tuple(i[0].shape))))
    with torch.no_grad():
        assert_close_ref(ours(x), ref64(ref, x))
    assert ours_calls == ref_calls == ["dropout", (2, 10, 1, 1)]
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        ours(x)
    assert ours_calls == ["dropout", (2, 10, 1, 1)]


# --------------------------------------------------------------------------------------
# Hooks: a layer whose call runs hooks is not fused, so they run as in the reference
# --------------------------------------------------------------------------------------
def _nin_pair():
    torch.manual_seed(11)
    ours = nin_ext.NiN().eval()
    return ours, as_reference(ours)


def _record_hooks(model, calls):
    """Forward hooks on a block, on a 1x1 conv inside another (this one doubles its output) and a
    pre-hook on a pool: the reference's calls and outputs are what the fused model must give."""
    handles = [model[0].register_forward_hook(lambda m, i, o: calls.append(("block 0", tuple(o.shape)))),
               model[2][2].register_forward_hook(lambda m, i, o: 2 * o),
               model[5].register_forward_pre_hook(lambda m, i: calls.append(("pool 5", tuple(i[0].shape))))]
    return handles


def test_nin_runs_hooks_like_reference(cpu_backend):
    ours, ref = _nin_pair()
    x = torch.rand(2, 1, 96, 96)
    y64 = ref64(ref, x)
    ours_calls, ref_calls = [], []
    handles = _record_hooks(ours, ours_calls) + _record_hooks(ref, ref_calls)
    with torch.no_grad():
        assert_close_ref(ours(x), ref64(ref, x))   # the hooked reference, in float64
        assert ours_calls == ref_calls and len(ref_calls) == 2
        ops = [n for n in _profile_names(lambda: ours(x)) if n.startswith("nin_ext::")]
    # Block 0 runs as a module, its pool apart; block 1 layer by layer (ATen), its pool by nin_ext;
    # block 2 fused, but its pool (pre-hook) by the module; block 3 fused with the global pool.
    assert ops == ["nin_ext::nin_block", "nin_ext::max_pool2d", "nin_ext::max_pool2d", "nin_ext::nin_block",
                   "nin_ext::nin_block_gap"]
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        assert_close_ref(ours(x), y64)
        ops = [n for n in _profile_names(lambda: ours(x)) if n.startswith("nin_ext::")]
    assert ops == ["nin_ext::nin_block_max_pool"] * 3 + ["nin_ext::nin_block_gap"]


def test_nin_global_hooks_run_like_reference(cpu_backend):
    ours, ref = _nin_pair()
    x = torch.rand(1, 1, 80, 80)
    y64 = ref64(ref, x)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    try:
        with torch.no_grad():
            ref(x)
            ref_calls, calls[:] = list(calls), []
            y = ours(x)
            ours_calls = list(calls)
            ops = [n for n in _profile_names(lambda: ours(x)) if n.startswith("nin_ext::")]
    finally:
        handle.remove()
    # Every layer is called, so every hook runs (the reference's containers are Sequentials).
    assert [{"NiNBlock": "Sequential", "NiN": "Sequential"}.get(c, c) for c in ours_calls] == ref_calls
    assert "nin_ext::nin_block_max_pool" not in ops and "nin_ext::nin_block_gap" not in ops
    assert_close_ref(y, y64)


def test_pruned_conv_uses_its_current_weight(cpu_backend):
    """torch.nn.utils.prune computes weight = weight_orig * weight_mask in a forward pre-hook: a fused
    block would use the weight of the last call that ran the hook."""
    from torch.nn.utils import prune
    ours, ref = _nin_pair()
    ref = ref.double()   # a pruned module cannot be deep-copied: pruned alike, in float64
    x = torch.rand(2, 1, 80, 80)
    for model in (ours, ref):
        prune.l1_unstructured(model[4][2], "weight", 0.5)
    with torch.no_grad():
        ours(x)
        for model in (ours, ref):
            model[4][2].weight_orig.mul_(-3.0)
        assert_close_ref(ours(x), ref(x.double()))


def test_fuse_keeps_a_hooked_sequential(cpu_backend):
    calls = []
    inner = nn.Sequential(*_run(3, 5))
    inner.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    m = nn.Sequential(inner, nn.MaxPool2d(2), nn.Sequential(*_run(5, 4)), nn.AdaptiveAvgPool2d(1)).eval()
    fused = nin_ext.fuse(m)
    assert type(fused[0]) is nn.Sequential and type(fused[2]) is nin_ext.NiNBlock
    x = torch.randn(2, 3, 10, 9)
    y64 = ref64(m, x)
    calls.clear()
    with torch.no_grad():
        assert_close_ref(fused(x), y64)
    assert calls == [(2, 5, 10, 9)]


def test_fuse_under_a_global_hook_still_fuses(cpu_backend):
    """fuse() matches structure: a global hook registered while it runs does not stop the fusion; the
    fused model runs layer by layer while the hook is there (so it sees every layer) and fused after."""
    m = nn.Sequential(*_run(3, 5), nn.MaxPool2d(2), nn.Sequential(*_run(5, 4)), nn.AdaptiveAvgPool2d(1)).eval()
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
    try:
        fused = nin_ext.fuse(m)
        x = torch.randn(2, 3, 10, 9)
        with torch.no_grad():
            fused(x)
    finally:
        handle.remove()
    assert type(fused) is nin_ext.FusedSequential and type(fused[7]) is nin_ext.NiNBlock
    assert calls.count("Conv2d") == 6 and calls.count("ReLU") == 6
    with torch.no_grad():
        assert_close_ref(fused(x), ref64(m, x))
        ops = [n for n in _profile_names(lambda: fused(x)) if n.startswith("nin_ext::")]
    assert ops == ["nin_ext::nin_block_max_pool", "nin_ext::nin_block_gap"]
