"""nin_ext::conv2d_weight_grad (CPU): the weight gradient of a stride-1 conv2d, by Winograd tiles where
they pay, by ATen elsewhere; against a float64 run of ATen's convolution_backward, at the gradients'
own tolerance. Also its use in the training backward."""
import pytest
import torch

import nin_ext
from conftest import as_reference, assert_close_ref, require_extension


def _op():
    require_extension()
    return torch.ops.nin_ext.conv2d_weight_grad


def _tile_size(x_shape, c_out, k):
    from nin_ext import _C
    n, c_in, h, w = x_shape
    return _C.conv2d_weight_grad_tile_size(n, c_in, c_out, h + 2 * k[2] - k[0] + 1, w + 2 * k[3] - k[1] + 1, k[0], k[1])


def _reference(grad_out, x, kernel_size, padding):
    weight = torch.empty(grad_out.shape[1], x.shape[1], *kernel_size, dtype=torch.float64)
    return torch.ops.aten.convolution_backward(grad_out.double(), x.double(), weight, None, [1, 1], list(padding),
                                               [1, 1], False, [0, 0], 1, [False, True, False])[1]


def _draw(n, c_in, c_out, h, w, kernel_size, padding, channels_last=False, seed=0):
    """A block's input (after a ReLU) and a masked, signed output gradient, as the backward gets them."""
    gen = torch.Generator().manual_seed(seed)
    oh, ow = h + 2 * padding[0] - kernel_size[0] + 1, w + 2 * padding[1] - kernel_size[1] + 1
    x = torch.relu(torch.randn(n, c_in, h, w, generator=gen))
    grad_out = torch.randn(n, c_out, oh, ow, generator=gen) * (torch.rand(n, c_out, oh, ow, generator=gen) > 0.5)
    if channels_last:
        x, grad_out = (t.to(memory_format=torch.channels_last) for t in (x, grad_out))
    return grad_out, x


# (N, C_in, C_out, H, W, kernel, padding, channels_last, Winograd m expected)
CASES = [
    (8, 96, 256, 26, 26, (5, 5), (2, 2), False, 4),   # the seed's block 2: 392 blocks, 4 chunks
    (13, 256, 384, 12, 12, (3, 3), (1, 1), False, 2),  # the seed's block 3
    (7, 48, 70, 17, 13, (3, 3), (1, 1), True, 2),     # odd sizes, channels_last
    (7, 70, 33, 30, 29, (5, 5), (1, 2), False, 4),    # unequal padding, odd channel counts
    (1, 48, 64, 15, 15, (7, 7), (3, 3), False, 0),    # 7x7: F(2x2, 7x7)'s error is above the tolerance
    (8, 65, 80, 15, 15, (3, 3), (0, 0), False, 2),    # no padding
    (2, 12, 64, 17, 17, (3, 3), (1, 1), False, 0),    # too few input channels
    (1, 32, 32, 6, 6, (3, 3), (1, 1), False, 0),      # too little work for the tiles
    (8, 256, 384, 12, 12, (3, 3), (1, 1), False, 0),  # the seed's block 3 at batch 8: too few blocks
    (2, 32, 64, 12, 12, (4, 4), (1, 1), False, 0),    # an even kernel
    (2, 32, 64, 12, 12, (3, 5), (1, 2), False, 0),    # not square
]


def _case_id(c):
    return (f"n{c[0]}_{c[1]}to{c[2]}_{c[3]}x{c[4]}_k{c[5][0]}{c[5][1]}p{c[6][0]}{c[6][1]}"
            f"{'_cl' if c[7] else ''}_m{c[8]}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_float64(case):
    op = _op()
    n, c_in, c_out, h, w, kernel, padding, channels_last, m = case
    grad_out, x = _draw(n, c_in, c_out, h, w, kernel, padding, channels_last)
    assert _tile_size(x.shape, c_out, kernel + padding) == m, "the case no longer checks its path"
    grad_w = op(grad_out, x, list(kernel), list(padding))
    assert grad_w.shape == (c_out, c_in, *kernel) and grad_w.is_contiguous()
    assert_close_ref(grad_w, _reference(grad_out, x, kernel, padding), kind="grad", what="weight gradient")


def test_same_bits_for_any_thread_count():
    """The chunks' sums are added in order and each point's product is one call: the thread count
    does not change the bits."""
    op = _op()
    grad_out, x = _draw(8, 64, 48, 26, 25, (5, 5), (2, 2))
    assert _tile_size(x.shape, 48, (5, 5, 2, 2)) == 4
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            results.append(op(grad_out, x, [5, 5], [2, 2]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_winograd_off_and_other_dtypes_take_aten():
    from nin_ext import _C
    op = _op()
    grad_out, x = _draw(2, 64, 64, 12, 12, (3, 3), (1, 1))
    aten = torch.ops.aten.convolution_backward(grad_out, x, torch.empty(64, 64, 3, 3), None, [1, 1], [1, 1],
                                               [1, 1], False, [0, 0], 1, [False, True, False])[1]
    before = _C.set_winograd_mode(0)
    try:
        assert _tile_size(x.shape, 64, (3, 3, 1, 1)) == 0
        assert torch.equal(op(grad_out, x, [3, 3], [1, 1]), aten)
    finally:
        _C.set_winograd_mode(before)
    grad64 = op(grad_out.double(), x.double(), [3, 3], [1, 1])
    assert grad64.dtype == torch.float64
    assert_close_ref(grad64, _reference(grad_out, x, (3, 3), (1, 1)))
    empty = op(grad_out[:0], x[:0], [3, 3], [1, 1])
    assert empty.shape == (64, 64, 3, 3) and not empty.any()


@pytest.mark.parametrize("bad, message", [
    (lambda g, x: (g[0], x, [3, 3], [1, 1]), "grad_out to be a 4-d"),
    (lambda g, x: (g, x[0], [3, 3], [1, 1]), "x to be a 4-d"),
    (lambda g, x: (g, x.double(), [3, 3], [1, 1]), "grad_out has dtype"),
    (lambda g, x: (g.int(), x.int(), [3, 3], [1, 1]), "floating-point"),
    (lambda g, x: (g[:1], x, [3, 3], [1, 1]), "batch"),
    (lambda g, x: (g, x, [5, 5], [1, 1]), "spatial size"),
    (lambda g, x: (g, x, [0, 3], [1, 1]), "kernel_size"),
    (lambda g, x: (g, x, [3, 3], [-1, 1]), "padding"),
])
def test_errors_name_the_argument(bad, message):
    op = _op()
    grad_out, x = _draw(2, 32, 48, 9, 9, (3, 3), (1, 1))
    with pytest.raises(RuntimeError, match=message):
        op(*bad(grad_out, x))


def test_opcheck():
    op = _op()
    for shapes, kernel, padding, channels_last in (((2, 64, 70, 9, 8), (3, 3), (1, 1), False),
                                                   ((1, 40, 64, 12, 12), (5, 5), (2, 2), True),
                                                   ((2, 8, 6, 5, 5), (3, 3), (0, 0), False)):
        grad_out, x = _draw(*shapes, kernel, padding, channels_last)
        torch.library.opcheck(op.default, (grad_out, x, list(kernel), list(padding)))


def test_training_backward_uses_it(cpu_backend):
    """A block whose stride-1 conv the tiles take gets its weight gradient from conv2d_weight_grad, and
    every gradient of the block matches a float64 run of the reference."""
    torch.manual_seed(0)
    block = nin_ext.NiNBlock(64, 64, 3, 1, 1)
    ref = as_reference(block).double()
    x = torch.rand(8, 64, 14, 14)
    assert _tile_size(x.shape, 64, (3, 3, 1, 1)) > 0
    grad_out = torch.randn(8, 64, 14, 14)
    x_ours, x_ref = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    with torch.profiler.profile() as prof:
        block(x_ours).backward(grad_out)
    assert "nin_ext::conv2d_weight_grad" in {e.name for e in prof.events()}
    ref(x_ref).backward(grad_out.double())
    assert_close_ref(x_ours.grad, x_ref.grad, kind="grad", what="input gradient")
    for (name, p), p_ref in zip(block.named_parameters(), ref.parameters()):
        assert_close_ref(p.grad, p_ref.grad, kind="grad", what=f"gradient of {name}")
