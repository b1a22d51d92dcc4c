"""The CPU's zero-skipping 1x1 layers (csrc/cpu/zero_skipping_layer_avx2.cpp): the same bits as the
plain micro-kernel whatever the inputs' zeros, NaNs and infinities, never with non-finite weights,
and within float32 tolerance of the float64 reference.

The kernel exists for AVX2 only, and the micro-kernel is chosen once per process, so the checks run
in a subprocess with NIN_EXT_CPU_ISA=avx2 (any AVX2 + FMA CPU runs it, AVX-512 ones included).
"""
import json

import pytest

from conftest import CPU_FLAGS, run_python

pytestmark = pytest.mark.skipif(not {"avx2", "fma"} <= CPU_FLAGS, reason="CPU has no AVX2 + FMA")

# Each case runs with the kernel forced on (0: every tile) and off (2: none), and by the default rule
# (-1). Channel counts: 96 -> 96 (the seed's block 1, one pass of the accumulators); 40 and 24 (fewer
# than 12 vectors); 136 and 200 (a second pass of 5 vectors, and a pass of one); 200 and 72 inputs
# (chunks of 48 that cross a 64-bit word of the masks, a 64 + 8 split); 13 (not a multiple of 8:
# the plain kernel). Paths: direct tiles (11x11 stride 4, 5x5 stride 2), Winograd tiles (3x3 and 5x5
# at stride 1), the fused max pool and global average pool, and the training forward and backward.
SCRIPT = r"""
import json, torch, nin_ext
from nin_ext import reference
nin_ext.set_backend("cpu")
C = nin_ext._C
torch.manual_seed(0)

def same(a, b):
    return a.shape == b.shape and bool(torch.equal(a.isnan(), b.isnan())) and bool(
        torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))

report = {"isa": nin_ext.info()["cpu_microkernel"], "mismatches": [], "worst": 0.0, "skipped": {}, "rule": {}}
cases = [("block1", 1, 96, 96, 11, 4, 0, 67, 71, 2), ("narrow", 3, 40, 24, 3, 1, 1, 17, 13, 3),
         ("wide", 16, 64, 136, 5, 2, 2, 23, 19, 2), ("words", 8, 200, 72, 3, 1, 1, 13, 11, 2),
         ("winograd5", 24, 72, 200, 5, 1, 2, 20, 18, 2), ("odd", 5, 13, 16, 3, 1, 1, 9, 9, 2)]
for name, c0, c1, c2, k, s, p, h, w, n in cases:
    x = torch.randn(n, c0, h, w)
    w0, b0 = torch.randn(c1, c0, k, k) * (2.0 / (c0 * k * k)) ** 0.5, torch.randn(c1) * 0.1
    w1, b1 = torch.randn(c1, c1, 1, 1) * (2.0 / c1) ** 0.5, torch.randn(c1) * 0.1
    w2, b2 = torch.randn(c2, c1, 1, 1) * (2.0 / c1) ** 0.5, torch.randn(c2) * 0.1
    params = [w0, b0, w1, b1, w2, b2]
    special = x.clone()
    special[0, 0, 1, 2], special[-1, -1, -2, -3] = float("nan"), float("inf")
    inf_weight = [t.clone() for t in params]
    inf_weight[2][1, 3] = float("inf")  # 0 x inf is NaN: the layer must keep its zero products
    for label, xi, pi in (("plain", x, params), ("nan_inf_input", special, params), ("inf_weight", x, inf_weight)):
        outputs = {}
        for fraction in (0.0, 2.0):
            C.set_zero_skipping(fraction)
            before = C.zero_skipped_layer_tiles()
            outputs[fraction] = (nin_ext.ops.nin_block(xi, *pi, s, p), nin_ext.ops.nin_block_gap(xi, *pi, s, p),
                                 nin_ext.ops.nin_block_max_pool(xi, *pi, s, p, 3, 2))
            report["skipped"][f"{name}/{label}/{fraction}"] = C.zero_skipped_layer_tiles() - before
        for got, want in zip(*outputs.values()):
            if not same(got, want):
                report["mismatches"].append(f"{name}/{label}")
        if label == "plain":
            C.set_zero_skipping(0.0)
            want = reference.nin_block_reference(x.double(), *(t.double() for t in params), s, p)
            got = outputs[0.0][0]
            report["worst"] = max(report["worst"], ((got.double() - want).abs().max() / want.abs().max()).item())
    # Training: the forward that keeps the hidden activations, and the backward, on and off.
    grads = {}
    for fraction in (0.0, 2.0):
        C.set_zero_skipping(fraction)
        leaves = [t.clone().requires_grad_() for t in [x] + params]
        out = nin_ext.ops.nin_block(leaves[0], *leaves[1:], s, p)
        out.pow(2).sum().backward()
        grads[fraction] = [out.detach()] + [t.grad for t in leaves]
    if not all(same(a, b) for a, b in zip(*grads.values())):
        report["mismatches"].append(f"{name}/training")
# The default rule: half zeros skip in a 96-channel layer; with no zeros (a large bias ahead of
# every ReLU) no tile skips.
C.set_zero_skipping(-1.0)
x = torch.randn(2, 1, 67, 71)
w0, w1 = torch.randn(96, 1, 11, 11) * 0.13, torch.randn(96, 96, 1, 1) * 0.14
for label, bias in (("half_zeros", torch.zeros(96)), ("no_zeros", torch.full((96,), 100.0))):
    before = C.zero_skipped_layer_tiles()
    nin_ext.ops.nin_block(x, w0, bias, w1, bias, w1, bias, 4, 0)
    report["rule"][label] = C.zero_skipped_layer_tiles() - before
print(json.dumps(report))
"""


def test_zero_skipping_same_bits_as_the_plain_kernel():
    result = run_python(["-c", SCRIPT], env_extra={"NIN_EXT_CPU_ISA": "avx2"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["isa"] == "avx2"
    assert report["mismatches"] == []
    assert report["worst"] < 1e-5
    skipped = report["skipped"]
    for name in ("block1", "narrow", "wide", "words", "winograd5"):
        assert skipped[f"{name}/plain/0.0"] > 0, f"{name}: no tile ran the zero-skipping kernel"
        assert skipped[f"{name}/plain/2.0"] == 0
    # 13 channels into the first layer: neither layer has 8-multiple inputs; an infinite weight in
    # the first 1x1 layer leaves only the second to skip.
    assert skipped["odd/plain/0.0"] == 0
    assert 0 < skipped["block1/inf_weight/0.0"] < skipped["block1/plain/0.0"]
    assert report["rule"]["half_zeros"] > 0
    assert report["rule"]["no_zeros"] == 0


def test_zero_skipping_setting_from_the_environment():
    script = ("import torch, nin_ext; nin_ext.set_backend('cpu'); "
              "p = [torch.randn(96, 1, 11, 11), torch.zeros(96), torch.randn(96, 96, 1, 1), torch.zeros(96), "
              "torch.randn(96, 96, 1, 1), torch.zeros(96)]; "
              "nin_ext.ops.nin_block(torch.randn(1, 1, 67, 71), *p, 4, 0); "
              "print(nin_ext._C.zero_skipped_layer_tiles())")
    never = run_python(["-c", script], env_extra={"NIN_EXT_CPU_ISA": "avx2", "NIN_EXT_CPU_ZERO_SKIPPING": "2"})
    assert never.returncode == 0, never.stderr
    assert int(never.stdout.split()[-1]) == 0
    always = run_python(["-c", script], env_extra={"NIN_EXT_CPU_ISA": "avx2", "NIN_EXT_CPU_ZERO_SKIPPING": "0"})
    assert always.returncode == 0, always.stderr
    assert int(always.stdout.split()[-1]) > 0
    bad = run_python(["-c", script], env_extra={"NIN_EXT_CPU_ISA": "avx2", "NIN_EXT_CPU_ZERO_SKIPPING": "half"})
    assert bad.returncode != 0
    assert "NIN_EXT_CPU_ZERO_SKIPPING must be a number" in bad.stderr and "'half'" in bad.stderr
