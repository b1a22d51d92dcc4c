"""Backend registry, NIN_EXT_BACKEND, and the pure-Python fallback without the extension."""
import json
import textwrap

import pytest
import torch

import nin_ext
from conftest import HAS_CUDA, backends_without_the_extension, extension_loaded, require_extension, run_python

ORDER = ["cpu", "cuda", "triton", "reference"]


def test_available_backends_contents():
    av = nin_ext.available_backends()
    assert isinstance(av, list) and all(isinstance(b, str) for b in av)
    assert set(av) <= set(ORDER), av
    assert av == [b for b in ORDER if b in av], f"not in canonical order: {av}"
    assert len(set(av)) == len(av)
    assert "reference" in av
    assert ("cpu" in av) == extension_loaded(), (av, nin_ext.info().get("extension_error"))
    if not HAS_CUDA:
        assert "cuda" not in av


def test_extension_is_built():
    require_extension()
    assert "cpu" in nin_ext.available_backends()


def test_set_get_backend_round_trip():
    for name in nin_ext.available_backends():
        nin_ext.set_backend(name)
        assert nin_ext.get_backend() == name
    nin_ext.set_backend("auto")
    assert nin_ext.get_backend() in ["auto"] + nin_ext.available_backends()


def test_info_fields():
    info = nin_ext.info()
    for k in ("nin_ext", "torch", "python", "extension", "extension_error", "cuda_built", "cuda_archs",
              "backends", "cpu"):
        assert k in info, k
    assert info["nin_ext"] == nin_ext.__version__
    assert info["torch"] == torch.__version__
    assert isinstance(info["extension"], bool)
    assert info["backends"] == nin_ext.available_backends()
    assert (info["extension_error"] is None) == info["extension"]
    json.dumps(info)   # serialisable


def _run_code(code, env=None):
    r = run_python(["-c", textwrap.dedent(code)], env_extra=env)
    assert r.returncode == 0, f"subprocess failed:\nSTDOUT:\n{r.stdout}\nSTDERR:\n{r.stderr}"
    return r


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_env_var_sets_initial_backend(name):
    if name == "cpu":
        require_extension()
    r = _run_code("import nin_ext; print('BACKEND=' + nin_ext.get_backend())", env={"NIN_EXT_BACKEND": name})
    assert f"BACKEND={name}" in r.stdout.splitlines(), r.stdout + r.stderr


def test_env_var_reference_backend_runs_reference():
    code = """
    import torch, nin_ext
    from torch.profiler import profile, ProfilerActivity
    assert nin_ext.get_backend() == "reference"
    m = nin_ext.NiNBlock(3, 4, 3, 1, 1)
    ref = torch.nn.Sequential(*[c for c in m])
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))
    print("OK")
    """
    r = _run_code(code, env={"NIN_EXT_BACKEND": "reference"})
    assert "OK" in r.stdout


FALLBACK_CODE = """
import sys, warnings
import torch
sys.modules["nin_ext._C"] = None          # make the compiled extension unimportable
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import nin_ext
user = [w for w in caught if issubclass(w.category, UserWarning)]
print("NWARN=%d" % len(user))
for w in user:
    print("WARN=" + str(w.message).replace("\\n", " "))
print("BACKENDS=" + ",".join(nin_ext.available_backends()))
print("BACKEND=" + nin_ext.get_backend())
print("EXT=" + str(nin_ext.info()["extension"]))
print("EXTERR=" + str(nin_ext.info()["extension_error"]))

try:
    nin_ext.set_backend("cpu")
    print("SETCPU=ok")
except RuntimeError as e:
    print("SETCPU=RuntimeError " + str(e))

# everything still works, and matches the notebook block
import torch.nn as nn
torch.manual_seed(0)
m = nin_ext.NiNBlock(3, 8, 3, 2, 1)
ref = nn.Sequential(*[c for c in m])        # plain children: the notebook block with the same weights
x = torch.rand(2, 3, 11, 10)
with torch.no_grad():
    y, yr = m(x), ref(x)
    assert y.shape == yr.shape == (2, 8, 6, 5)
    assert (y - yr).abs().max() <= 1e-5 * yr.abs().max(), (y - yr).abs().max()
    y3 = m(x[0])
    assert (y3 - yr[0]).abs().max() <= 1e-5 * yr.abs().max()
    net = nin_ext.NiN().eval()
    ref_net = nn.Sequential(*[nn.Sequential(*c) if isinstance(c, nin_ext.NiNBlock) else c for c in net]).eval()
    xn = torch.rand(1, 1, 70, 70)
    a, b = net(xn), ref_net(xn)
    assert a.shape == (1, 10) and (a - b).abs().max() <= 1e-5 * b.abs().max()
    g = nin_ext.ops.global_avg_pool(x)
    assert (g - x.mean((2, 3))).abs().max() <= 1e-6
    fused = nin_ext.fuse(ref_net)
    c = fused(xn)
    assert (c - b).abs().max() <= 1e-5 * b.abs().max()
# gradients too
xg = x.clone().requires_grad_(True)
m(xg).sum().backward()
assert xg.grad is not None and m[0].weight.grad is not None
print("OK")
"""


def test_fallback_without_extension():
    r = _run_code(FALLBACK_CODE)
    out = r.stdout.splitlines()
    info = "\n".join(out) + "\nSTDERR:\n" + r.stderr
    assert "NWARN=1" in out, info
    warns = [l for l in out if l.startswith("WARN=")]
    assert len(warns) == 1 and "reference" in warns[0].lower(), info
    assert "BACKENDS=" + ",".join(backends_without_the_extension()) in out, info
    assert ("BACKEND=auto" in out) or ("BACKEND=reference" in out), info
    assert "EXT=False" in out, info
    assert not any(l in ("EXTERR=None", "EXTERR=") for l in out), info
    setcpu = [l for l in out if l.startswith("SETCPU=")]
    assert setcpu and setcpu[0].startswith("SETCPU=RuntimeError"), info
    assert "OK" in out, info


def test_fallback_import_is_quiet_with_extension():
    """With the extension present, importing nin_ext emits no warning."""
    require_extension()
    code = """
    import warnings, torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import nin_ext
    print("NWARN=%d" % len([w for w in caught if issubclass(w.category, UserWarning)]))
    for w in caught: print("WARN=", w.category.__name__, w.message)
    """
    r = _run_code(code)
    assert "NWARN=0" in r.stdout.splitlines(), r.stdout + r.stderr


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_backend_available_with_gpu():
    assert "cuda" in nin_ext.available_backends(), nin_ext.info()


def test_auto_uses_compiled_cpu_kernels():
    """Under the default 'auto', CPU tensors run the compiled kernels when they are built."""
    require_extension()
    from torch.profiler import ProfilerActivity, profile
    nin_ext.set_backend("auto")
    m = nin_ext.NiNBlock(3, 8, 3, 1, 1)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        m(x)
    names = [e.name for e in prof.events()]
    assert "nin_ext::nin_block" in names, sorted(set(names))


def test_default_backend_is_auto():
    r = _run_code("import nin_ext; print('BACKEND=' + nin_ext.get_backend())")
    assert "BACKEND=auto" in r.stdout.splitlines(), r.stdout + r.stderr
