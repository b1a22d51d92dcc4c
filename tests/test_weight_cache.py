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
