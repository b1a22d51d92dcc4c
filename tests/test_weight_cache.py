"""The CPU kernels' packed-weight cache: reused while the weights hold the same values, rebuilt when they change."""
import pytest
import torch

import nin_ext
from conftest import assert_close_ref, as_reference, ref64, require_extension


@pytest.fixture
def cache():
    require_extension()
    nin_ext._C.clear_weight_cache()
    yield nin_ext._C
    nin_ext._C.clear_weight_cache()


def _block():
    return nin_ext.NiNBlock(3, 5, 3, 1, 1)


def _check(block, x):
    assert_close_ref(block(x), ref64(as_reference(block), x))


def test_reused_between_calls(cpu_backend, cache):
    block, x = _block(), torch.randn(2, 3, 7, 6)
    block(x)
    block(x)
    assert cache.weight_cache_entries() == 1


def test_optimizer_step_repacks(cpu_backend, cache):
    block, x = _block(), torch.randn(2, 3, 7, 6)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
    for _ in range(3):
        block(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            _check(block, x)


def test_in_place_updates_repack(cpu_backend, cache):
    block, x = _block(), torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        block(x)
        block[0].weight.mul_(-1)            # no_grad in-place: bumps the version
        _check(block, x)
        block[2].bias.add_(1)
        _check(block, x)
        other = _block()
        block.load_state_dict(other.state_dict())
        _check(block, x)
        torch.nn.init.normal_(block[4].weight)
        _check(block, x)


def test_replaced_parameter_repacks(cpu_backend, cache):
    block, x = _block(), torch.randn(2, 3, 7, 6)
    block(x)
    block[4].weight = torch.nn.Parameter(torch.randn_like(block[4].weight))
    _check(block, x)


def test_functional_call_with_new_tensors(cpu_backend, cache):
    x = torch.randn(1, 3, 5, 5)
    for _ in range(2):
        w, w1, w2 = torch.randn(4, 3, 3, 3), torch.randn(4, 4, 1, 1), torch.randn(2, 4, 1, 1)
        y = nin_ext.ops.nin_block(x, w, None, w1, None, w2, None, 1, 1)
        expected = nin_ext.reference.nin_block_reference(x.double(), w.double(), None, w1.double(), None,
                                                         w2.double(), None, (1, 1), (1, 1))
        assert_close_ref(y, expected)


def test_inference_tensors(cpu_backend, cache):
    with torch.inference_mode():
        block, x = _block(), torch.randn(2, 3, 7, 6)
        block(x)
        block[0].weight.mul_(2)
        _check(block, x)


def test_bounded(cpu_backend, cache):
    x = torch.randn(1, 3, 5, 5)
    blocks = [_block() for _ in range(40)]
    for block in blocks:
        block(x)
    assert 0 < cache.weight_cache_entries() <= 16


def test_untracked_writes_repack(cpu_backend, cache):
    block, x = _block(), torch.randn(2, 3, 7, 6)
    block(x)
    block[0].weight.data.mul_(-1)           # `.data` writes do not move the parameter's version
    _check(block, x)
    block[2].weight.detach()[0, 0] += 1
    _check(block, x)


def test_untracked_column_write_repacks(cpu_backend, cache):
    # A column of a 256 x 256 1x1 weight: every 256th value, in place through `.data`.
    block, x = nin_ext.NiNBlock(3, 256, 3, 1, 1), torch.randn(1, 3, 6, 5)
    block(x)
    block[2].weight.data[:, 7] += 0.5
    _check(block, x)
    block[4].weight.data[:, 0].neg_()
    _check(block, x)


def test_clear(cpu_backend, cache):
    block, x = _block(), torch.randn(2, 3, 7, 6)
    block(x)
    nin_ext.clear_weight_cache()
    assert cache.weight_cache_entries() == 0
    _check(block, x)


def _assert_repacked(block, x):
    """The block's output equals, bit for bit, its output with its weights packed afresh."""
    y = block(x)
    nin_ext.clear_weight_cache()
    torch.testing.assert_close(y, block(x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bit", [0, 22, 23, 30, 31])
def test_single_bit_flips_repack(cpu_backend, cache, bit):
    # 383 channels: w1 (383 x 383 floats) is two 256 KiB chunks and a partial one, and it and the conv
    # weight end in a partial 64-byte stripe. A bit flipped anywhere, and flipped back, repacks.
    block, x = nin_ext.NiNBlock(3, 383, 3, 1, 1), torch.randn(1, 3, 5, 4)
    chunk_floats = (256 << 10) // 4
    w1, w = block[2].weight, block[0].weight
    flips = [(w1, i) for i in (0, chunk_floats - 1, chunk_floats, 2 * chunk_floats + 5, w1.numel() - 1)]
    flips += [(w, i) for i in (0, 15, 16, w.numel() - 1)]
    mask = 1 << bit if bit < 31 else -(1 << 31)
    with torch.no_grad():
        for weight, index in flips:
            bits = weight.data.view(-1).view(torch.int32)
            for _ in range(2):
                block(x)
                bits[index] ^= mask
                _assert_repacked(block, x)


def test_paired_changes_repack(cpu_backend, cache):
    # Changes that cancel in a plain or position-weighted sum: two values swapped, two signs flipped.
    block, x = nin_ext.NiNBlock(3, 256, 3, 1, 1), torch.randn(1, 3, 6, 5)
    weight = block[2].weight.data.view(-1)
    with torch.no_grad():
        for i, j in ((0, 16), (3, 3 + 4096), (100, 60000)):
            block(x)
            weight[i], weight[j] = weight[j].clone(), weight[i].clone()
            _assert_repacked(block, x)
            weight[i].neg_()
            weight[j].neg_()
            _assert_repacked(block, x)
