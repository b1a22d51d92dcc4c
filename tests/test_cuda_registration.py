"""A CUDA build registers CUDA (and AutocastCUDA) kernels for every op. Runs without a GPU: the
dispatcher table is inspected, nothing is launched. `make cuda-build-check` sets
NIN_EXT_EXPECT_CUDA=1, so there a build that silently left out the CUDA sources fails instead of
skipping."""
import os

import pytest
import torch

import nin_ext

from conftest import require_extension

OPS = ("nin_ext::nin_block", "nin_ext::nin_block_gap", "nin_ext::global_avg_pool")
AUTOCAST_OPS = ("nin_ext::nin_block", "nin_ext::nin_block_gap")


@pytest.fixture
def cuda_build():
    require_extension()
    if not nin_ext._extension.cuda_built:
        if os.environ.get("NIN_EXT_EXPECT_CUDA") == "1":
            pytest.fail("NIN_EXT_EXPECT_CUDA=1 but nin_ext._C.cuda_built is False: the CUDA sources were not built")
        pytest.skip("nin_ext._C.cuda_built is False: this build has no CUDA kernels")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_registered(cuda_build, op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), f"{op} has no CUDA kernel"


@pytest.mark.parametrize("op", AUTOCAST_OPS)
def test_autocast_cuda_kernel_registered(cuda_build, op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "AutocastCUDA"), f"{op} has no AutocastCUDA kernel"


def test_cuda_archs_recorded(cuda_build):
    assert nin_ext._extension.cuda_archs, "nin_ext._C.cuda_archs is empty in a CUDA build"
