"""The CPU ops' tensor cache (csrc/cpu/tensor_cache_cpu.h): large outputs take back the blocks of freed
ones of the same size; the tensors behave as any CPU tensor; the cache can be emptied, limited and
turned off, and memory profiles count its tensors."""
import os
import textwrap

import pytest
import torch

import nin_ext
from conftest import assert_close_ref, as_reference, ref64, require_extension, run_python

MIB = 2**20


@pytest.fixture
def cache():
    require_extension()
    nin_ext.clear_tensor_cache()
    yield nin_ext._C
    nin_ext.clear_tensor_cache()


def _block_and_input(batch=3):
    # An output of 3 x 40 x 47 x 53 floats: 1.14 MiB, past the cache's 1 MiB floor.
    return nin_ext.NiNBlock(2, 40, 3, 1, 1), torch.randn(batch, 2, 47, 53)


def test_freed_output_block_is_taken_back(cpu_backend, cache):
    block, x = _block_and_input()
    with torch.no_grad():
        first = block(x)
        assert first.untyped_storage().nbytes() >= MIB
        pointer = first.data_ptr()
        del first
        assert cache.tensor_cache_free_bytes() >= MIB
        second = block(x)
    assert second.data_ptr() == pointer
    assert cache.tensor_cache_free_bytes() == 0
    assert_close_ref(second, ref64(as_reference(block), x))


def test_live_outputs_never_share_a_block(cpu_backend, cache):
    block, x = _block_and_input()
    with torch.no_grad():
        outputs = [block(x) for _ in range(3)]
    assert len({y.data_ptr() for y in outputs}) == 3
    for y in outputs:
        assert_close_ref(y, ref64(as_reference(block), x))


def test_small_outputs_bypass_the_cache(cpu_backend, cache):
    block, x = _block_and_input(batch=1)  # 0.38 MiB
    with torch.no_grad():
        block(x)
    assert cache.tensor_cache_free_bytes() == 0


def test_clear_returns_the_bytes_freed(cpu_backend, cache):
    block, x = _block_and_input()
    with torch.no_grad():
        y = block(x)
    nbytes = y.untyped_storage().nbytes()
    del y
    assert nin_ext.clear_tensor_cache() == nbytes
    assert cache.tensor_cache_free_bytes() == 0
    assert nin_ext.clear_tensor_cache() == 0


def test_cached_tensors_behave_as_cpu_tensors(cpu_backend, cache):
    block, x = _block_and_input()
    with torch.no_grad():
        y = block(x)
    expected = y.clone()
    y.resize_(2 * y.numel())                # the storage grows like any CPU storage
    assert torch.equal(y[:expected.numel()], expected.flatten())
    z = block(x)
    assert torch.equal(torch.from_numpy(z.detach().numpy()), z.detach())
    z.detach().share_memory_()
    assert torch.equal(z.detach(), expected)


def test_memory_profile_counts_the_outputs(cpu_backend, cache):
    block, x = _block_and_input()
    with torch.no_grad():
        block(x)  # freed at once: the next output takes its block, still an allocation to the profiler
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            y = block(x)
            nbytes = y.untyped_storage().nbytes()
            del y
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert nbytes in sizes and -nbytes in sizes


_LIMIT_SCRIPT = textwrap.dedent("""
    import torch, nin_ext
    nin_ext.set_backend("cpu")
    block, x = nin_ext.NiNBlock(2, 40, 3, 1, 1), torch.randn(3, 2, 47, 53)
    with torch.no_grad():
        block(x)
    print(nin_ext._C.tensor_cache_free_bytes())
""")


@pytest.mark.parametrize("mib, kept", [("0", False), ("1", False), ("2", True)])
def test_limit_from_the_environment(mib, kept):
    require_extension()
    r = run_python(["-c", _LIMIT_SCRIPT], {"NIN_EXT_CPU_TENSOR_CACHE_MB": mib})
    assert r.returncode == 0, r.stderr
    assert (int(r.stdout.split()[-1]) > 0) == kept


def test_bad_limit_is_an_error_that_names_the_variable():
    require_extension()
    r = run_python(["-c", _LIMIT_SCRIPT], {"NIN_EXT_CPU_TENSOR_CACHE_MB": "lots"})
    assert r.returncode != 0
    assert "NIN_EXT_CPU_TENSOR_CACHE_MB" in r.stderr and "lots" in r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_forked_child_uses_the_cache(cpu_backend, cache):
    # A DataLoader worker is a fork: the cache's blocks and lock must work in the child. (os._exit in
    # any case: the child must never return into pytest.)
    block, x = _block_and_input()
    with torch.no_grad():
        expected = block(x)
        block(x)  # a free block waits in the cache at the fork
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's threads are not forked
                ok = torch.equal(block(x), expected) and torch.equal(block(x), expected)
            finally:
                os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
