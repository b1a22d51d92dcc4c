"""The CUDA kernel's tiling arithmetic (csrc/cuda/nin_block_tile_plan.h), checked on the CPU: the
header is plain C++, so tests/cuda_tile_plan_test.cpp compiles it with the host compiler and runs."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_tile_plan_arithmetic(tmp_path):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (c++, g++, clang++ or $CXX) to build tests/cuda_tile_plan_test.cpp")
    exe = tmp_path / "cuda_tile_plan_test"
    build = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}",
                            os.path.join(HERE, "cuda_tile_plan_test.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ", 0 failed" in run.stdout
