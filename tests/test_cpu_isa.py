"""Every CPU micro-kernel this machine can run (NIN_EXT_CPU_ISA), checked against float64, and the
max_pool2d plane kernels compiled with it against torch.

The kernel is chosen once per process, so each one runs in its own subprocess.
"""
import json

import pytest

from conftest import CPU_FLAGS as FLAGS, HAS_AMX, NO_AMX_REASON, backends_without_the_extension, run_python

ISAS = [
    pytest.param("amx", marks=pytest.mark.skipif(not HAS_AMX, reason=NO_AMX_REASON)),
    pytest.param("avx512", marks=pytest.mark.skipif("avx512f" not in FLAGS, reason="CPU has no AVX-512")),
    pytest.param("avx2", marks=pytest.mark.skipif(not {"avx2", "fma"} <= FLAGS, reason="CPU has no AVX2 + FMA")),
    "portable",
]

# Odd channel counts (row tails of every MR), pixel counts (panel tails of every NR), strides,
# paddings, both memory formats, both ops; the first case (3 -> 13 channels, 3x3) takes the shifted
# products (csrc/cpu/nin_block_shifted_cpu.h), which have a micro-kernel per ISA too; the next two take the
# Winograd path (3x3 and 5x5, stride 1, wide enough), whose tile transforms are compiled per ISA too;
# then an RGB block 1 (11x11, stride 4), which runs Winograd tiles in its polyphase form; the last two
# have rows of 38 and 41 pixels, so that the gathers' and the band's copies (copy_runs.h) take runs of
# several vectors plus a tail on every ISA (a 5x5 stride-2 direct path, a 3x3 Winograd one); the
# 2x2 outputs of 19 images take the direct path's gather by lanes (gather_lanes) with a panel tail;
# the 200-channel 3x3 case and the last two run the direct path's conv by the pixel-broadcast kernels
# (13 output channels: the narrow one; 40: the wide one, with a group tail), their band copied by
# channels_last_row; the last three take Winograd tiles of other kernel sizes: 7x7 at stride 1 (F(2x2, 7x7)),
# 11x11 and 7x7 at stride 2 in their polyphase forms (6x6 and 4x4 kernels). The
# cases that take Winograd tiles run again with every m forced (each m has its own transforms), and with
# the swapped products off (their tiles of few blocks put the output channels in the lanes). Then the
# max pools' plane kernels and the weight gradient's tiles and im2col product (conv2d_weight_grad).
PARITY_SCRIPT = r"""
import json, torch, nin_ext
from nin_ext import reference
nin_ext.set_backend("cpu")
torch.manual_seed(0)
worst, winograd_cases, broadcast_cases, lanes_mismatches = 0.0, 0, 0, 0
for c0, c1, c2, k, s, p, h, w, n in [(3, 13, 7, 3, 1, 1, 9, 11, 2), (1, 33, 17, 5, 2, 2, 23, 19, 1),
                                     (5, 1, 3, (2, 3), (1, 2), (0, 1), 7, 13, 3), (17, 40, 25, 1, 1, 0, 6, 5, 2),
                                     (200, 13, 5, 3, 1, 1, 5, 6, 3),
                                     (33, 65, 9, 3, 1, 1, 6, 10, 2), (32, 70, 11, 5, 1, 2, 8, 4, 1),
                                     (3, 64, 9, 11, 4, 1, 61, 57, 2),
                                     (2, 12, 5, 5, 2, 2, 9, 79, 2), (32, 64, 7, 3, 1, 1, 5, 41, 1),
                                     (12, 20, 6, 5, 3, 0, 10, 10, 19), (24, 13, 5, 3, 2, 1, 13, 11, 3),
                                     (40, 40, 7, (3, 5), 1, (1, 2), 9, 7, 5),
                                     (32, 64, 9, 7, 1, 3, 9, 11, 2), (12, 64, 5, 11, 2, 5, 31, 27, 2),
                                     (9, 67, 3, 7, 2, 3, 15, 22, 2)]:
    x = torch.randn(n, c0, h, w)
    w0, b0 = torch.randn(c1, c0, *((k, k) if isinstance(k, int) else k)) * 0.3, torch.randn(c1) * 0.1
    w1, b1 = torch.randn(c1, c1, 1, 1) * 0.3, torch.randn(c1) * 0.1
    w2, b2 = torch.randn(c2, c1, 1, 1) * 0.3, torch.randn(c2) * 0.1
    params = (w0, b0, w1, b1, w2, b2)
    pair = lambda v: (v, v) if isinstance(v, int) else v
    nin_ext._C.set_winograd_mode(2)  # forced, the path takes every shape it applies to
    winograd = nin_ext._C.winograd_tile_size(tuple(x.shape), tuple(w0.shape), c1, c2, pair(s), pair(p)) > 0
    winograd_cases += winograd
    broadcast_cases += not winograd and nin_ext._C.direct_conv_by_broadcast(
        tuple(x.shape), tuple(w0.shape), c1, c2, pair(s), pair(p)) and not nin_ext._C.shifted_conv(
        tuple(x.shape), tuple(w0.shape), c1, c2, pair(s), pair(p))
    for mode in (-1, 2, 3, 4) if winograd else (-1,):
        nin_ext._C.set_winograd_mode(mode)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            xm = x.contiguous(memory_format=memory_format)
            expected = reference.nin_block_reference(xm.double(), *(t.double() for t in params), s, p)
            for got, want in ((nin_ext.ops.nin_block(xm, *params, s, p), expected),
                              (nin_ext.ops.nin_block_gap(xm, *params, s, p), expected.mean((2, 3)))):
                worst = max(worst, ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item())
        if winograd:  # Winograd tiles of few blocks run swapped products where the ISA has them: same bits
            swapped = nin_ext.ops.nin_block(x, *params, s, p)
            nin_ext._C.set_channel_lanes(False)
            lanes_mismatches += int(not torch.equal(swapped, nin_ext.ops.nin_block(x, *params, s, p)))
            nin_ext._C.set_channel_lanes(True)
    nin_ext._C.set_winograd_mode(-1)
# max_pool2d's and max_pool2d_with_argmax's NCHW plane kernels are compiled per ISA too: every
# stride-2 window position, row tails of every vector width (the 3x3 stride-2 kernels' chunks of 8
# and 16 outputs too), paddings, a NaN that must win; values and indices must equal torch's exactly.
pool_mismatches = 0
for h, w, k, s, p in [(54, 54, 3, 2, 0), (26, 26, 3, 2, 0), (12, 12, 3, 2, 0), (5, 17, 3, 2, 0), (9, 33, 3, 2, 0),
                      (4, 35, 3, 2, 0), (11, 100, 3, 2, 0), (7, 37, 3, 2, 1), (9, 70, 5, 2, 2),
                      (5, 33, 2, 2, 0), (6, 17, 3, 1, 1), (8, 19, 3, 3, 0), (1, 3, 3, 2, 1)]:
    x = torch.randn(2, 3, h, w)
    x[1, 2, h // 2, w // 2] = float("nan")
    got = torch.ops.nin_ext.max_pool2d(x, [k, k], [s, s], [p, p], False)
    want = torch.nn.functional.max_pool2d(x, k, s, p)
    pool_mismatches += int(not torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)))
    got, got_index = torch.ops.nin_ext.max_pool2d_with_argmax(x, [k, k], [s, s], [p, p], False)
    want, want_index = torch.nn.functional.max_pool2d(x, k, s, p, return_indices=True)
    pool_mismatches += int(not torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)))
    pool_mismatches += int(not torch.equal(got_index.long(), want_index))
# conv2d_weight_grad's tiles use the ISA's input transform, swapped product and output-gradient
# transform: F(2x2, 3x3) and F(4x4, 5x5), odd channel counts, several chunks of blocks; its im2col
# product (1 and 2 input channels) the ISA's swapped product: strided, padded, 40 output channels.
weight_grad_worst, weight_grad_cases, im2col_cases = 0.0, 0, 0
for n, ci, co, h, w, k, s, p in [(4, 37, 45, 25, 23, 3, 1, 1), (6, 33, 70, 30, 29, 5, 1, 2), (20, 17, 40, 19, 17, 5, 1, 1),
                                 (3, 1, 96, 61, 57, 11, 4, 0), (2, 2, 40, 23, 26, 5, 2, 2)]:
    x, dy = torch.relu(torch.randn(n, ci, h, w)), torch.randn(n, co, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    if s == 1:
        weight_grad_cases += nin_ext._C.conv2d_weight_grad_tile_size(n, ci, co, dy.shape[2], dy.shape[3], k, k) > 0
    else:
        im2col_cases += nin_ext._C.conv2d_weight_grad_by_im2col(n, ci, co, dy.shape[2], dy.shape[3], k, k)
    got = torch.ops.nin_ext.conv2d_weight_grad(dy, x, [k, k], [s, s], [p, p])
    want = torch.ops.aten.convolution_backward(dy.double(), x.double(), torch.empty(co, ci, k, k, dtype=torch.float64),
                                               None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    weight_grad_worst = max(weight_grad_worst, ((got.double() - want).abs().max() / want.abs().max()).item())
polyphase_tile = nin_ext._C.winograd_tile_size((2, 3, 61, 57), (64, 3, 11, 11), 64, 9, (4, 4), (1, 1))
print(json.dumps({"isa": nin_ext.info()["cpu_microkernel"], "worst": worst, "pool_mismatches": pool_mismatches,
                  "weight_grad_worst": weight_grad_worst, "weight_grad_cases": weight_grad_cases,
                  "im2col_cases": im2col_cases,
                  "polyphase_tile": polyphase_tile, "winograd_cases": winograd_cases,
                  "broadcast_cases": broadcast_cases, "lanes_mismatches": lanes_mismatches,
                  "swapped_tiles": nin_ext._C.winograd_channel_lanes(65, 4)}))
"""


@pytest.mark.parametrize("isa", ISAS)
def test_microkernel_parity(isa):
    result = run_python(["-c", PARITY_SCRIPT], env_extra={"NIN_EXT_CPU_ISA": isa})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["isa"] == isa
    assert report["worst"] < 1e-5
    assert report["pool_mismatches"] == 0
    assert report["weight_grad_cases"] == 3, "the weight gradient's cases no longer take its tiles"
    assert report["im2col_cases"] == 2, "the weight gradient's strided cases no longer take its im2col product"
    assert report["weight_grad_worst"] < 1e-5
    assert report["lanes_mismatches"] == 0, "swapped Winograd products changed the bits"
    assert report["swapped_tiles"], "the ISA's kernel has no swapped product"
    assert report["polyphase_tile"] > 0, "the RGB block 1 case did not take the polyphase form"
    assert report["winograd_cases"] == 7, "the 3x3, 5x5, RGB block 1, wide 3x3, 7x7 and two strided cases run every m"
    assert report["broadcast_cases"] >= 3, "the 200-, 24- and 40-channel cases run the broadcast kernels"


def test_unknown_isa_is_an_import_error_that_falls_back():
    result = run_python(["-c", "import nin_ext; print(nin_ext.available_backends())"],
                        env_extra={"NIN_EXT_CPU_ISA": "sse9"})
    assert result.returncode == 0, result.stderr
    assert "NIN_EXT_CPU_ISA must be amx, avx512, avx2 or portable" in result.stderr
    assert result.stdout.strip() == str(backends_without_the_extension())


GLOBAL_AVG_POOL_SCRIPT = r"""
import json, torch, nin_ext
torch.manual_seed(0)
means = []
for shape in [(3, 7, 5, 5), (2, 384, 12, 12), (1, 3, 13, 11), (2, 5, 1, 1), (1, 9, 3, 2)]:
    means += torch.ops.nin_ext.global_avg_pool(torch.randn(*shape) * 100).flatten().tolist()
print(json.dumps({"isa": nin_ext.info()["cpu_microkernel"], "means": means}))
"""


def test_global_avg_pool_same_bits_on_every_isa():
    """The float planes' double sums (the AVX-512 kernel's own, plane_means_avx512, and the portable
    ones) add the same values in the same order: the same bits whatever the ISA, 8-value runs and
    tails alike."""
    isas = [isa.values[0] if hasattr(isa, "values") else isa for isa in ISAS]
    reports = {}
    for isa in isas:
        result = run_python(["-c", GLOBAL_AVG_POOL_SCRIPT], env_extra={"NIN_EXT_CPU_ISA": isa})
        if result.returncode != 0 and "but this CPU" in result.stderr:
            continue  # an ISA this CPU does not run
        assert result.returncode == 0, result.stderr
        reports[isa] = json.loads(result.stdout.strip().splitlines()[-1])["means"]
    assert "portable" in reports
    for isa, means in reports.items():
        assert means == reports["portable"], f"{isa} differs from portable"
