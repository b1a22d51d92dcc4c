# nin_ext developer entry points. From a fresh clone:
#   make test    - create .venv, install torch + build deps, build nin_ext (editable), run pytest
#   make bench   - same setup, then run the benchmark (python -m nin_ext bench $(BENCH_ARGS))
#   make cuda-build-check - in .venv-cuda with a CUDA build of torch: non-editable install (compiles
#                  the CUDA sources, if any, with nvcc; nothing runs on a GPU; the C++ compiler is
#                  .ci/gxx-static-libstdcxx, which links libstdc++ statically like the GPU machine's),
#                  import it, print info, run the test suite against that build
#   make bench-ops - same setup plus matplotlib, then the per-op benchmarks (benchmarks/bench_<op>.py:
#                  every backend vs ATen over batch sizes, CSV + PNG into benchmarks/results/ops/)
#   make gpu-prebuild - nin_ext/_C built here for the GPU machine's Python and torch (GPU_PYTHON,
#                  GPU_TORCH, GPU_ARCHS; defaults: the device tool's image of 2026-11), so that a short
#                  GPU lease skips the build: carry the .so and set NIN_VALIDATE_PREBUILT=1
#   make clean   - remove build outputs and install stamps (keeps the venvs; `make distclean` drops them)
# Variables: TORCH, CUDA_TORCH, TRITON, PYTEST_ARGS, BENCH_ARGS, OPS_ARGS, PYTHON, VENV, CUDA_VENV.
# The setup is stamp-file based: it is redone when setup.py, pyproject.toml, this Makefile or
# anything under csrc/ changes, and skipped otherwise.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := test

PYTHON      ?= python3
VENV        ?= .venv
CUDA_VENV   ?= .venv-cuda
TORCH       ?= torch==2.13.0
CUDA_TORCH  ?= torch==2.14.1
# The CPU torch wheel does not pull triton; the CUDA one pulls triton 3.8.0 itself. Triton's interpreter
# runs the triton backend's tests on CPU (3.8 works with numpy 2.4; 3.6 needs numpy < 2.3).
TRITON      ?= triton==3.8.0
BUILD_DEPS  ?= ninja pybind11 pytest setuptools wheel numpy
PYTEST_ARGS ?=
BENCH_ARGS  ?=
PIP_FLAGS   ?= --progress-bar off

# Everything the compiled extension depends on (directories too, so added/removed files count).
BUILD_INPUTS := setup.py pyproject.toml Makefile $(shell find csrc 2>/dev/null)

# Stamp names carry the torch requirement, so changing TORCH reinstalls.
torch_tag = $(subst =,_,$(subst <,_,$(subst >,_,$(1))))
DEPS_STAMP       := $(VENV)/.stamp-deps-$(call torch_tag,$(TORCH))
BUILD_STAMP      := $(VENV)/.stamp-build
CUDA_DEPS_STAMP  := $(CUDA_VENV)/.stamp-deps-$(call torch_tag,$(CUDA_TORCH))

OP_BENCHES  := nin_block nin_block_max_pool nin_block_gap global_avg_pool max_pool2d conv2d_weight_grad
OPS_ARGS    ?=

.PHONY: test bench bench-ops setup cuda-build-check gpu-prebuild clean distclean

test: $(BUILD_STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(BUILD_STAMP)
	$(VENV)/bin/python -m nin_ext bench $(BENCH_ARGS)

# matplotlib draws the plots; only these benchmarks need it, so only this target installs it.
bench-ops: $(BUILD_STAMP)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) matplotlib
	for op in $(OP_BENCHES); do $(VENV)/bin/python benchmarks/bench_$$op.py $(OPS_ARGS); done

setup: $(BUILD_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): Makefile | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) "$(TORCH)" "$(TRITON)" $(BUILD_DEPS)
	rm -f $(VENV)/.stamp-deps-*  # a stamp for another TORCH no longer holds
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	@echo "== building nin_ext into $(VENV) (editable)"
	time $(VENV)/bin/python -m pip install $(PIP_FLAGS) -v --no-build-isolation --no-deps -e .
	touch $@

$(CUDA_VENV)/bin/python:
	$(PYTHON) -m venv $(CUDA_VENV)

$(CUDA_DEPS_STAMP): Makefile | $(CUDA_VENV)/bin/python
	$(CUDA_VENV)/bin/python -m pip install $(PIP_FLAGS) "$(CUDA_TORCH)" $(BUILD_DEPS)
	rm -f $(CUDA_VENV)/.stamp-deps-*
	touch $@

# Always rebuilds (non-editable install of the current tree). The import check runs from inside
# the venv folder so that the installed package, not the source tree, is imported.
cuda-build-check: $(CUDA_DEPS_STAMP)
	@echo "== building nin_ext into $(CUDA_VENV) (non-editable, $(CUDA_TORCH))"
	time CXX=$(CURDIR)/.ci/gxx-static-libstdcxx $(CUDA_VENV)/bin/python -m pip install $(PIP_FLAGS) -v \
		--no-build-isolation --no-deps --force-reinstall .
	cd $(CUDA_VENV) && ./bin/python -c 'import torch, nin_ext, nin_ext._C; print("nin_ext from", nin_ext.__file__); print("nin_ext._C from", nin_ext._C.__file__)'
	cd $(CUDA_VENV) && ./bin/python -m nin_ext info
	@echo "== test suite against the $(CUDA_TORCH) build (CPU tests; CUDA ones skip without a GPU)"
	cd $(CUDA_VENV) && NIN_EXT_EXPECT_CUDA=1 ./bin/python -m pytest -q -p no:cacheprovider $(CURDIR)/tests $(PYTEST_ARGS)

# The device tool's GPU machines (2026-11): Python 3.12, torch 2.11.0+cu130, 2 CPU cores, where
# building _C takes about 110 s of the lease. The .so is named for its Python (cpython-312), so it
# sits beside .venv's build; rebuild it for the commit that is validated.
GPU_PYTHON ?= python3.12
GPU_TORCH  ?= torch==2.11.0
GPU_ARCHS  ?= 9.0a
GPU_VENV   ?= .venv-gpu

gpu-prebuild:
	test -x $(GPU_VENV)/bin/python || $(GPU_PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install $(PIP_FLAGS) "$(GPU_TORCH)" $(BUILD_DEPS)
	TORCH_CUDA_ARCH_LIST="$(GPU_ARCHS)" $(GPU_VENV)/bin/python setup.py build_ext --inplace
	ls -l nin_ext/_C.cpython-3*-x86_64-linux-gnu.so

clean:
	rm -rf build dist *.egg-info .pytest_cache
	rm -f nin_ext/_C*.so
	find . -path ./$(VENV) -prune -o -path ./$(CUDA_VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(VENV)/.stamp-* $(CUDA_VENV)/.stamp-*

distclean: clean
	rm -rf $(VENV) $(CUDA_VENV)
