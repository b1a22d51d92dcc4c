"""nin_ext.NiNBlock / nin_ext.NiN / nin_ext.reference: structure, state_dict, modes, compile, profile."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import nin_ext
from nin_ext import reference
from conftest import (NIN_MIN_HW, as_reference, assert_close_ref, device_for, notebook_nin_block,
                      notebook_net, ref64)

NIN_CHILD_TYPES = [nin_ext.NiNBlock, nn.MaxPool2d, nin_ext.NiNBlock, nn.MaxPool2d, nin_ext.NiNBlock,
                   nn.MaxPool2d, nn.Dropout, nin_ext.NiNBlock, nn.AdaptiveAvgPool2d, nn.Flatten]


def _structure(m):
    """A comparable description of a module tree: types (by torch.nn class) and layer config."""
    out = []
    for name, sub in m.named_modules():
        t = next(c for c in type(sub).__mro__ if c.__module__.startswith("torch.nn"))
        cfg = {}
        for a in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                  "padding_mode", "p", "output_size", "start_dim", "end_dim", "inplace"):
            if hasattr(sub, a):
                cfg[a] = getattr(sub, a)
        if isinstance(sub, nn.Conv2d):
            cfg["bias"] = sub.bias is not None
        out.append((name, t.__name__, cfg))
    return out


# --------------------------------------------------------------------------------------
# nin_ext.reference is the notebook's model
# --------------------------------------------------------------------------------------
def test_reference_block_is_notebook_block():
    ref = reference.nin_block(3, 8, 5, 2, 1)
    assert type(ref) is nn.Sequential
    assert _structure(ref) == _structure(notebook_nin_block(3, 8, 5, 2, 1))


def test_reference_net_is_notebook_net():
    ref = reference.nin_net()
    assert type(ref) is nn.Sequential and len(ref) == 10
    assert _structure(ref) == _structure(notebook_net())
    assert _structure(reference.nin_net(in_channels=3, num_classes=7, dropout=0.2)) == \
        _structure(notebook_net(3, 7, 0.2))


# --------------------------------------------------------------------------------------
# Structure and constructors
# --------------------------------------------------------------------------------------
def test_ninblock_structure_positional_like_notebook():
    ours = nin_ext.NiNBlock(96, 256, 5, 1, 2)
    assert isinstance(ours, nn.Sequential) and len(ours) == 6
    assert [type(c) for c in ours] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    assert _structure(ours)[1:] == _structure(notebook_nin_block(96, 256, 5, 1, 2))[1:]


def test_ninblock_keyword_forms():
    a = nin_ext.NiNBlock(in_channels=3, out_channels=8, kernel_size=3, strides=2, padding=1)
    b = nin_ext.NiNBlock(3, 8, kernel_size=3, stride=2, padding=1)
    c = nin_ext.NiNBlock(3, 8, 3, 2, 1)
    for m in (a, b, c):
        assert m[0].stride == (2, 2) and m[0].padding == (1, 1) and m[0].kernel_size == (3, 3)
        assert _structure(m)[1:] == _structure(notebook_nin_block(3, 8, 3, 2, 1))[1:]


def test_ninblock_non_square_args():
    m = nin_ext.NiNBlock(3, 8, (3, 5), (1, 2), (0, 2))
    assert m[0].kernel_size == (3, 5) and m[0].stride == (1, 2) and m[0].padding == (0, 2)


def test_nin_structure():
    net = nin_ext.NiN()
    assert isinstance(net, nn.Sequential) and len(net) == 10
    assert [type(c) for c in net] == NIN_CHILD_TYPES
    assert _structure(net)[1:] == _structure(notebook_net())[1:]
    assert net[6].p == 0.5
    assert nin_ext.NiN(dropout=0.25)[6].p == 0.25


def test_nin_in_channels_num_classes(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN(in_channels=3, num_classes=7).eval()
    assert _structure(ours)[1:] == _structure(notebook_net(3, 7))[1:]
    ref = as_reference(ours).eval()
    x = torch.rand(2, 3, 80, 75)
    with torch.no_grad():
        y = ours.to(dev)(x.to(dev))
    assert y.shape == (2, 7)
    assert_close_ref(y, ref64(ref, x))


# --------------------------------------------------------------------------------------
# state_dict round trips
# --------------------------------------------------------------------------------------
def test_state_dict_reference_to_ours_and_back():
    ref = notebook_net().eval()
    ours = nin_ext.NiN().eval()
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    ours.load_state_dict(ref.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    x = torch.rand(1, 1, 70, 70)
    with torch.no_grad():
        assert_close_ref(ours(x), ref64(ref, x))
    # ours -> a fresh reference
    ref2 = notebook_net()
    ref2.load_state_dict(nin_ext.NiN().state_dict(), strict=True)   # other random weights, keys fit
    ref2.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(ref2.state_dict()[k], v), k


def test_state_dict_block_round_trip():
    ref = notebook_nin_block(5, 9, 3, 2, 1)
    ours = nin_ext.NiNBlock(5, 9, 3, 2, 1)
    keys = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert list(ours.state_dict().keys()) == keys == list(ref.state_dict().keys())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref2 = notebook_nin_block(5, 9, 3, 2, 1)
    ref2.load_state_dict(ours.state_dict(), strict=True)
    for k in keys:
        assert torch.equal(ref2.state_dict()[k], ref.state_dict()[k])


def test_state_dict_nin_expected_keys():
    keys = list(nin_ext.NiN().state_dict().keys())
    expected = [f"{i}.{j}.{p}" for i in (0, 2, 4, 7) for j in (0, 2, 4) for p in ("weight", "bias")]
    assert keys == expected


# --------------------------------------------------------------------------------------
# train / eval
# --------------------------------------------------------------------------------------
def test_nin_train_mode_dropout_matches_reference(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN().train()
    ref = as_reference(ours).train().to(dev)
    ours.to(dev)
    x = torch.rand(2, 1, 80, 80, device=dev)
    for s in (0, 1, 7):
        torch.manual_seed(s)
        y_ref = ref(x)
        torch.manual_seed(s)
        y = ours(x)
        # fp32 reference with the same dropout mask
        assert_close_ref(y, y_ref.double(), what=f"train output, seed {s}")
    with torch.no_grad():
        y_eval = ours.eval()(x)
    assert not torch.allclose(y_eval, y, rtol=1e-3, atol=1e-5), "dropout seems inactive in train mode"


def test_nin_eval_mode(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN().eval()
    ref = as_reference(ours).eval()
    x = torch.rand(2, 1, 96, 90)
    with torch.no_grad():
        y1 = ours.to(dev)(x.to(dev))
        y2 = ours(x.to(dev))
    assert torch.equal(y1, y2)
    assert_close_ref(y1, ref64(ref, x))


# --------------------------------------------------------------------------------------
# unbatched / empty
# --------------------------------------------------------------------------------------
def test_nin_unbatched(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN().eval()
    ref = as_reference(ours).eval()
    x = torch.rand(1, NIN_MIN_HW, 70)
    with torch.no_grad():
        y = ours.to(dev)(x.to(dev))
        y_ref = ref(x)
    # The notebook net on a 3-d input: AdaptiveAvgPool2d gives (10, 1, 1), Flatten gives (10, 1).
    assert y.shape == y_ref.shape == (10, 1)
    assert_close_ref(y, ref64(ref, x))


def test_ninblock_unbatched_module(backend):
    dev = device_for(backend)
    ours = nin_ext.NiNBlock(2, 6, 3, 1, 0).eval()
    ref = as_reference(ours)
    x = torch.rand(2, 8, 7)
    with torch.no_grad():
        y = ours.to(dev)(x.to(dev))
    assert y.shape == (6, 6, 5)
    assert_close_ref(y, ref64(ref, x))


def test_nin_empty_batch(backend):
    dev = device_for(backend)
    ours = nin_ext.NiN().eval().to(dev)
    with torch.no_grad():
        y = ours(torch.rand(0, 1, 70, 70, device=dev))
    assert y.shape == (0, 10)


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------
def test_nin_torch_compile_fullgraph(cpu_backend):
    torch._dynamo.reset()
    ours = nin_ext.NiN().eval()
    x = torch.rand(2, 1, 70, 70)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y_eager = ours(x)
        compiled = torch.compile(ours, fullgraph=True)
        y_c = compiled(x)
    # Dynamo traces nin_ext's Python without complaint (a functools.cache there would warn).
    assert not [w for w in caught if "nin_ext" in str(w.message) or "nin_ext" in w.filename], \
        [str(w.message) for w in caught]
    assert_close_ref(y_c, y_eager.double(), what="compiled vs eager")
    assert_close_ref(y_c, ref64(as_reference(ours).eval(), x), what="compiled vs reference")
    # another batch size (dynamic-shape recompile through the fake kernels)
    x3 = torch.rand(3, 1, 75, 70)
    with torch.no_grad():
        assert_close_ref(compiled(x3), ours(x3).double(), what="compiled vs eager, batch 3")
    torch._dynamo.reset()


def test_nin_dynamo_graph_holds_fused_ops(cpu_backend):
    """The graph Dynamo captures calls the nin_ext ops (not a graph break, not the aten reference)."""
    torch._dynamo.reset()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    ours = nin_ext.NiN().eval()
    x = torch.rand(1, 1, 70, 70)
    with torch.no_grad():
        y = torch.compile(ours, backend=record, fullgraph=True)(x)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("nin_ext.nin_block_gap" in t for t in targets) == 1, targets
    assert sum("nin_ext.nin_block_max_pool" in t for t in targets) == 3, targets  # blocks 1-3 and their pools
    assert not any("conv2d" in t for t in targets), targets
    assert_close_ref(y, ours(x).double())
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------
# profiler: the block runs as one nin_ext op, not as aten convolutions
# --------------------------------------------------------------------------------------
FORBIDDEN = ("aten::convolution", "aten::conv2d", "aten::_convolution")


def _profile_names(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def test_profile_ninblock_uses_fused_op(native_backend):
    dev = device_for(native_backend)
    m = nin_ext.NiNBlock(3, 16, 3, 1, 1).to(dev)
    x = torch.rand(2, 3, 12, 12, device=dev)
    with torch.no_grad():
        names = _profile_names(lambda: m(x))
    nin = [n for n in names if n.startswith("nin_ext::")]
    assert nin, f"no nin_ext:: event in profile: {sorted(set(names))}"
    bad = [n for n in names if n in FORBIDDEN]
    assert not bad, f"unfused convolution events in profile: {sorted(set(bad))}"


def test_profile_nin_uses_block_gap(native_backend):
    dev = device_for(native_backend)
    m = nin_ext.NiN().eval().to(dev)
    x = torch.rand(1, 1, 70, 70, device=dev)
    with torch.no_grad():
        names = _profile_names(lambda: m(x))
    assert "nin_ext::nin_block_gap" in names, f"profile: {sorted(set(n for n in names if 'nin' in n))}"
    bad = [n for n in names if n in FORBIDDEN]
    assert not bad, f"unfused convolution events in profile: {sorted(set(bad))}"


def test_profile_ninblock_training_uses_fused_op(native_backend):
    """Training path (autograd on) still dispatches to the fused op."""
    dev = device_for(native_backend)
    m = nin_ext.NiNBlock(3, 8, 3, 1, 1).to(dev)
    x = torch.rand(2, 3, 10, 10, device=dev, requires_grad=True)
    names = _profile_names(lambda: m(x).sum().backward())
    assert any(n.startswith("nin_ext::") for n in names)


@pytest.mark.parametrize("kernel_size, fused", [(3, True), ((3, 5), True), (4, False), ((2, 3), False)])
def test_ninblock_padding_same(native_backend, kernel_size, fused):
    """padding='same' runs fused for odd kernels; an even kernel pads asymmetrically, which the fused
    kernels do not do, so the block then runs its layers one by one, with the reference's result."""
    dev = device_for(native_backend)
    ours = nin_ext.NiNBlock(3, 5, kernel_size, 1, "same").eval().to(dev)
    ref = as_reference(ours)
    x = torch.rand(2, 3, 9, 8, device=dev)
    with torch.no_grad():
        names = _profile_names(lambda: ours(x))
        y = ours(x)
    assert any(n.startswith("nin_ext::") for n in names) == fused
    assert y.shape == (2, 5, 9, 8)
    assert_close_ref(y, ref64(ref, x.cpu()))
