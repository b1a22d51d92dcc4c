"""The CPU backend's layers on AMX tiles (NIN_EXT_CPU_ISA=amx, csrc/cpu/packed_layer_amx.cpp): float32
from int8 slice products (three slices per value for a 1x1 layer, four for the direct path's conv,
whose inputs have both signs; scaled per pixel and per weight row), against float64 and against the
AVX-512 kernel.

Layers of 96 inputs or more run there (kAmxMinReduction; 192 in the training forward), so the cases
have 96-384 channels (the seed's block 1 among them), counts that are not multiples of the tiles' 32
or 64 (100, 130, 200; a last 64-wide chunk of at most 32 inputs, as in 96, 130 and 200, takes its
slices side by side in two tiles), pixel counts that leave a panel tail and an odd panel count (the tiles take
two panels at a time), both memory formats, the direct and the Winograd paths, the pooled ops and the
training forward, hidden activations spread over six orders of magnitude within a pixel (the
slices' scale is the pixel's largest input), and a conv on normalized images (inputs of both signs).
Inputs or weights that are not finite take the micro-kernel (the slices hold finite values only):
the NaN and inf positions match the AVX-512 kernel's. Each kernel is chosen once per process, so
each runs in its own subprocess."""
import json

import pytest

from conftest import HAS_AMX, NO_AMX_REASON, run_python

pytestmark = pytest.mark.skipif(not HAS_AMX, reason=NO_AMX_REASON)

SCRIPT = r"""
import json, torch, nin_ext
import torch.nn.functional as F
from nin_ext import ops
nin_ext.set_backend("cpu")

def reference(x, w, b, w1, b1, w2, b2, s, p):
    y = F.relu(F.conv2d(x, w, b, s, p))
    return F.relu(F.conv2d(F.relu(F.conv2d(y, w1, b1)), w2, b2))

def rel(y, y64):
    return ((y.double() - y64).abs().max() / y64.abs().max()).item()

report = {"isa": nin_ext.info()["cpu_microkernel"], "worst": 0.0, "grad_worst": 0.0, "outputs": []}
torch.manual_seed(0)
for n, c0, cc, c1, c2, k, s, p, h, w, cl in [(2, 16, 200, 384, 130, 3, 1, 1, 9, 7, False),
                                            (1, 8, 256, 256, 10, 1, 1, 0, 13, 11, True),
                                            (3, 32, 192, 192, 192, 5, 2, 2, 15, 17, False),
                                            (2, 96, 256, 256, 256, 5, 1, 2, 12, 13, True),
                                            (2, 1, 96, 96, 96, 11, 4, 0, 47, 51, False),
                                            (1, 3, 100, 96, 40, 3, 1, 1, 10, 9, True)]:
    x = torch.rand(n, c0, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(cc, c0, k, k) * (2 / (c0 * k * k)) ** 0.5, torch.randn(cc) * 0.1,
              torch.randn(c1, cc, 1, 1) * (2 / cc) ** 0.5, torch.randn(c1) * 0.1,
              torch.randn(c2, c1, 1, 1) * (2 / c1) ** 0.5, torch.randn(c2) * 0.1]
    want = reference(x.double(), *[t.double() for t in params], s, p)
    y = ops.nin_block(x, *params, s, p)
    report["worst"] = max(report["worst"], rel(y, want), rel(ops.nin_block_gap(x, *params, s, p), want.mean((2, 3))),
                          rel(ops.nin_block_max_pool(x, *params, s, p, 3, 2), F.max_pool2d(want, 3, 2)))
    report["outputs"].append(y.flatten().tolist())
    # The training forward (hidden activations kept) and its gradients.
    xg, pg = x.clone().requires_grad_(), [t.clone().requires_grad_() for t in params]
    ops.nin_block(xg, *pg, s, p).square().sum().backward()
    x64, p64 = x.double().requires_grad_(), [t.double().requires_grad_() for t in params]
    reference(x64, *p64, s, p).square().sum().backward()
    report["grad_worst"] = max([report["grad_worst"], rel(xg.grad, x64.grad)] +
                               [rel(a.grad, b.grad) for a, b in zip(pg, p64)])

# Hidden activations from 1e-3 to 1e3 within a pixel: the conv's output channels scaled apart.
x = torch.rand(2, 8, 9, 10)
spread = 10.0 ** torch.linspace(-3, 3, 256)
params = [torch.randn(256, 8, 1, 1) * spread[:, None, None, None], torch.rand(256) * spread,
          torch.randn(192, 256, 1, 1) * 0.06, torch.randn(192) * 0.1, torch.randn(100, 192, 1, 1) * 0.07, torch.zeros(100)]
want = reference(x.double(), *[t.double() for t in params], 1, 0)
report["worst"] = max(report["worst"], rel(ops.nin_block(x, *params, 1, 0), want))

# A conv's inputs of both signs (the direct path's conv on the tiles takes signed slices): the seed's
# block 1 on normalized images, then with a NaN pixel.
x = (torch.rand(2, 1, 47, 51) - 0.286) / 0.353
params = [torch.randn(96, 1, 11, 11) * (2 / 121) ** 0.5, torch.randn(96) * 0.1, torch.randn(96, 96, 1, 1) * (2 / 96) ** 0.5,
          torch.randn(96) * 0.1, torch.randn(96, 96, 1, 1) * (2 / 96) ** 0.5, torch.randn(96) * 0.1]
want = reference(x.double(), *[t.double() for t in params], 4, 0)
y = ops.nin_block(x, *params, 4, 0)
report["worst"] = max(report["worst"], rel(y, want))
report["outputs"].append(y.flatten().tolist())
x[1, 0, 20, 30] = float("nan")
report["conv_nan"] = ops.nin_block(x, *params, 4, 0).isnan().flatten().tolist()
# The training forward keeps layers of fewer than 192 inputs off the tiles (its hidden activations set
# the backward's masks): the same bits as the AVX-512 kernel's.
x[1, 0, 20, 30] = 0.5
report["training_forward"] = [t.flatten().tolist() for t in torch.ops.nin_ext.nin_block_with_hidden(x, *params, 4, 0)]

# Infinities and NaN: in the input (one pixel each) and in a 1x1 layer's weights.
x = torch.rand(2, 16, 9, 10)
x[0, 3, 2, 5], x[1, 7, 8, 1], x[1, 2, 0, 0] = float("inf"), float("nan"), -float("inf")
params = [torch.rand(256, 16, 1, 1) * 0.1, torch.rand(256) * 0.1, torch.rand(256, 256, 1, 1) * 0.01, torch.zeros(256),
          torch.rand(200, 256, 1, 1) * 0.1, torch.randn(200) * 0.1]
y = ops.nin_block(x, *params, 1, 0)
report["nan"] = y.isnan().flatten().tolist()
report["inf"] = y.isinf().flatten().tolist()
params[4][7, 3, 0, 0] = float("inf")
y = ops.nin_block(torch.rand(1, 16, 6, 7), *params, 1, 0)
report["weights_nan"] = y.isnan().flatten().tolist()
report["weights_inf"] = y.isinf().flatten().tolist()
print(json.dumps(report))
"""


def _run(isa):
    result = run_python(["-c", SCRIPT], env_extra={"NIN_EXT_CPU_ISA": isa})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_amx_layers_against_float64_and_the_avx512_kernel():
    amx, avx512 = _run("amx"), _run("avx512")
    assert amx["isa"] == "amx" and avx512["isa"] == "avx512"
    assert amx["worst"] < 1e-5, amx["worst"]
    assert amx["grad_worst"] < 1e-4, amx["grad_worst"]
    for ours, theirs in zip(amx["outputs"], avx512["outputs"]):
        assert ours != theirs, "a wide case did not run on the tiles (the same bits as the AVX-512 kernel)"
    assert amx["training_forward"] == avx512["training_forward"], "the training forward ran 96-input layers on the tiles"
    for key in ("nan", "inf", "weights_nan", "weights_inf", "conv_nan"):
        assert amx[key] == avx512[key], f"{key}: the non-finite positions differ from the AVX-512 kernel's"
    assert any(amx["nan"]) and any(amx["inf"]) and any(amx["weights_inf"]) and any(amx["conv_nan"])
