"""nin_ext::conv2d_weight_grad (CPU): the weight gradient of a conv2d, by Winograd tiles where they pay
(stride 1), as one im2col product for 1-2 input channels (any stride), by ATen elsewhere; against a
float64 run of ATen's convolution_backward, at the gradients' own tolerance. Also its use in the
training backward."""
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


def _by_im2col(grad_out, x, kernel_size):
    from nin_ext import _C
    return _C.conv2d_weight_grad_by_im2col(x.shape[0], x.shape[1], *grad_out.shape[1:], *kernel_size)


def _reference(grad_out, x, kernel_size, padding, stride=(1, 1)):
    weight = torch.empty(grad_out.shape[1], x.shape[1], *kernel_size, dtype=torch.float64)
    return torch.ops.aten.convolution_backward(grad_out.double(), x.double(), weight, None, list(stride),
                                               list(padding), [1, 1], False, [0, 0], 1, [False, True, False])[1]


def _draw(n, c_in, c_out, h, w, kernel_size, padding, channels_last=False, seed=0, stride=(1, 1), image=False):
    """A block's input (after a ReLU; an image, signed, for block 1) and a masked, signed output
    gradient, as the backward gets them."""
    gen = torch.Generator().manual_seed(seed)
    oh = (h + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    x = torch.randn(n, c_in, h, w, generator=gen)
    x = x if image else torch.relu(x)
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
    assert not _by_im2col(grad_out, x, kernel) or m > 0
    grad_w = op(grad_out, x, list(kernel), [1, 1], list(padding))
    assert grad_w.shape == (c_out, c_in, *kernel) and grad_w.is_contiguous()
    assert_close_ref(grad_w, _reference(grad_out, x, kernel, padding), kind="grad", what="weight gradient")


# (N, C_in, C_out, H, W, kernel, stride, padding, channels_last): 1-2 input channels, the im2col product
IM2COL_CASES = [
    (2, 1, 96, 224, 224, (11, 11), (4, 4), (0, 0), False),  # the seed's block 1: 5832 pixels, 3 slabs
    (3, 2, 40, 23, 26, (5, 5), (2, 2), (2, 2), True),       # 2 channels, a part panel of channels
    (5, 1, 33, 31, 29, (4, 6), (3, 2), (1, 3), False),      # unequal kernel, stride and padding
    (2, 2, 17, 10, 12, (7, 7), (1, 1), (3, 3), False),      # stride 1: too few channels for the tiles
    (3, 1, 6, 5, 7, (3, 3), (2, 2), (2, 2), False),         # padding as wide as the kernel: outside rows
    (1, 1, 5, 4, 4, (4, 4), (1, 1), (0, 0), False),         # a 1x1 output
]


@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: (f"n{c[0]}_{c[1]}to{c[2]}_{c[3]}x{c[4]}_k{c[5][0]}{c[5][1]}"
                                                               f"s{c[6][0]}{c[6][1]}p{c[7][0]}{c[7][1]}"
                                                               f"{'_cl' if c[8] else ''}"))
def test_im2col_matches_float64(case):
    op = _op()
    n, c_in, c_out, h, w, kernel, stride, padding, channels_last = case
    grad_out, x = _draw(n, c_in, c_out, h, w, kernel, padding, channels_last, stride=stride, image=True)
    assert _by_im2col(grad_out, x, kernel), "the case no longer checks the im2col product"
    grad_w = op(grad_out, x, list(kernel), list(stride), list(padding))
    assert grad_w.shape == (c_out, c_in, *kernel) and grad_w.is_contiguous()
    assert_close_ref(grad_w, _reference(grad_out, x, kernel, padding, stride), kind="grad", what="weight gradient")


def test_im2col_reads_any_strides():
    """The output gradient as a view with gaps (and x as one): the same bits as from contiguous copies."""
    op = _op()
    grad_out, x = _draw(2, 1, 24, 30, 30, (5, 5), (1, 1), stride=(3, 3), image=True)
    wide_grad = torch.zeros(2, 48, *grad_out.shape[2:]).transpose(2, 3).contiguous().transpose(2, 3)
    wide_grad[:, ::2] = grad_out
    wide_x = torch.zeros(2, 1, 30, 60)
    wide_x[..., ::2] = x
    got = op(wide_grad[:, ::2], wide_x[..., ::2], [5, 5], [3, 3], [1, 1])
    assert torch.equal(got, op(grad_out, x, [5, 5], [3, 3], [1, 1]))


@pytest.mark.parametrize("path", ["tiles", "im2col"])
def test_same_bits_for_any_thread_count(path):
    """The tiles' chunks and the im2col product's slabs are summed in order, each sum one task's: the
    thread count does not change the bits."""
    op = _op()
    if path == "tiles":
        kernel, stride, padding = (5, 5), (1, 1), (2, 2)
        grad_out, x = _draw(8, 64, 48, 26, 25, kernel, padding)
        assert _tile_size(x.shape, 48, (5, 5, 2, 2)) == 4
    else:
        kernel, stride, padding = (11, 11), (4, 4), (0, 0)
        grad_out, x = _draw(3, 1, 40, 224, 200, kernel, padding, stride=stride, image=True)  # 7 slabs
        assert _by_im2col(grad_out, x, kernel)
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            results.append(op(grad_out, x, list(kernel), list(stride), list(padding)))
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
        assert torch.equal(op(grad_out, x, [3, 3], [1, 1], [1, 1]), aten)
    finally:
        _C.set_winograd_mode(before)
    grad64 = op(grad_out.double(), x.double(), [3, 3], [1, 1], [1, 1])
    assert grad64.dtype == torch.float64
    assert_close_ref(grad64, _reference(grad_out, x, (3, 3), (1, 1)))
    empty = op(grad_out[:0], x[:0], [3, 3], [1, 1], [1, 1])
    assert empty.shape == (64, 64, 3, 3) and not empty.any()
    # 1 channel: float64 and an empty batch take ATen too
    grad_out, x = _draw(2, 1, 8, 13, 13, (3, 3), (0, 0), stride=(2, 2), image=True)
    assert_close_ref(op(grad_out.double(), x.double(), [3, 3], [2, 2], [0, 0]),
                     _reference(grad_out, x, (3, 3), (0, 0), (2, 2)))
    assert not _by_im2col(grad_out[:0], x[:0], (3, 3))
    assert not op(grad_out[:0], x[:0], [3, 3], [2, 2], [0, 0]).any()


@pytest.mark.parametrize("bad, message", [
    (lambda g, x: (g[0], x, [3, 3], [1, 1], [1, 1]), "grad_out to be a 4-d"),
    (lambda g, x: (g, x[0], [3, 3], [1, 1], [1, 1]), "x to be a 4-d"),
    (lambda g, x: (g, x.double(), [3, 3], [1, 1], [1, 1]), "grad_out has dtype"),
    (lambda g, x: (g.int(), x.int(), [3, 3], [1, 1], [1, 1]), "floating-point"),
    (lambda g, x: (g[:1], x, [3, 3], [1, 1], [1, 1]), "batch"),
    (lambda g, x: (g, x, [5, 5], [1, 1], [1, 1]), "spatial size"),
    (lambda g, x: (g, x, [3, 3], [2, 2], [1, 1]), "spatial size"),
    (lambda g, x: (g, x, [0, 3], [1, 1], [1, 1]), "kernel_size"),
    (lambda g, x: (g, x, [3, 3], [0, 1], [1, 1]), "stride"),
    (lambda g, x: (g, x, [3, 3], [1, 1], [-1, 1]), "padding"),
])
def test_errors_name_the_argument(bad, message):
    op = _op()
    grad_out, x = _draw(2, 32, 48, 9, 9, (3, 3), (1, 1))
    with pytest.raises(RuntimeError, match=message):
        op(*bad(grad_out, x))


def test_opcheck():
    op = _op()
    for shapes, kernel, stride, padding, channels_last in (((2, 64, 70, 9, 8), (3, 3), (1, 1), (1, 1), False),
                                                           ((1, 40, 64, 12, 12), (5, 5), (1, 1), (2, 2), True),
                                                           ((2, 8, 6, 5, 5), (3, 3), (1, 1), (0, 0), False),
                                                           ((2, 1, 20, 19, 23), (5, 5), (3, 2), (1, 0), False)):
        grad_out, x = _draw(*shapes, kernel, padding, channels_last, stride=stride)
        torch.library.opcheck(op.default, (grad_out, x, list(kernel), list(stride), list(padding)))


@pytest.mark.parametrize("x_requires_grad", [True, False])
@pytest.mark.parametrize("conv", ["tiles", "im2col"])
def test_training_backward_uses_it(cpu_backend, conv, x_requires_grad):
    """A block whose conv the tiles (stride 1) or the im2col product (1 channel, stride 4, as block 1)
    take gets its weight gradient from conv2d_weight_grad, and every gradient of the block matches a
    float64 run of the reference, with or without the input's gradient (block 1 has none)."""
    torch.manual_seed(0)
    if conv == "tiles":
        block, x = nin_ext.NiNBlock(64, 64, 3, 1, 1), torch.rand(8, 64, 14, 14)
        assert _tile_size(x.shape, 64, (3, 3, 1, 1)) > 0
    else:
        block, x = nin_ext.NiNBlock(1, 40, 11, 4, 1), torch.randn(3, 1, 61, 58)
    ref = as_reference(block).double()
    grad_out = torch.randn(ref(x.double()).shape)
    x_ours, x_ref = x.clone().requires_grad_(x_requires_grad), x.double().requires_grad_(x_requires_grad)
    with torch.profiler.profile() as prof:
        block(x_ours).backward(grad_out)
    assert "nin_ext::conv2d_weight_grad" in {e.name for e in prof.events()}
    ref(x_ref).backward(grad_out.double())
    if x_requires_grad:
        assert_close_ref(x_ours.grad, x_ref.grad, kind="grad", what="input gradient")
    for (name, p), p_ref in zip(block.named_parameters(), ref.parameters()):
        assert_close_ref(p.grad, p_ref.grad, kind="grad", what=f"gradient of {name}")
