#!/usr/bin/env bash
# One command for a GPU machine (no network needed): build nin_ext with its CUDA kernels, run the
# whole test suite, compute-sanitizer memcheck and racecheck on tiny cases, then the NiN benchmark
# (batch 1 and 256; fp32 with TF32 on and off, fp16, bf16; eager, torch.compile max-autotune,
# nin_ext and its other available backends), and write OUTDIR/report.md and OUTDIR/report.json.
#
#   benchmarks/gpu_validate.sh [OUTDIR]     default OUTDIR: benchmarks/results/gpu-<card>-<commit>[-dirty]
#
# Every step has a time limit and the whole run a budget (NIN_VALIDATE_BUDGET_S, default 1140 s, so
# that it ends within 20 minutes); a failing or timed-out step is recorded and the next one runs;
# steps that no longer fit the budget are recorded as skipped.
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: this GPU's capability),
# MAX_JOBS (default: the CPU count), NIN_VALIDATE_SKIP_BUILD=1 (use the installed build),
# NIN_VALIDATE_PREBUILT=1 (use nin_ext/_C from `make gpu-prebuild` when it loads, else build),
# NIN_VALIDATE_TESTS (pytest targets, default: tests), NIN_VALIDATE_BENCH_ARGS (appended to every
# benchmark, e.g. "--no-compile --extra-backends none" where device time is short).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
# The scripts under benchmarks/ import nin_ext from this tree also when it is not pip-installed
# (NIN_VALIDATE_PREBUILT).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${NIN_VALIDATE_BUDGET_S:-1140}
START=$(date +%s)

# NIN_VALIDATE_COMMIT names the commit where the tree's git metadata is stale (the device tool copies
# the working tree with the session's first commit as HEAD); the tree is then taken as that commit.
commit=${NIN_VALIDATE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
dirty=""
if [ -z "${NIN_VALIDATE_COMMIT:-}" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  dirty="-dirty"
fi
gpu_name=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
card=$(printf '%s' "${gpu_name:-nogpu}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
OUT=${1:-benchmarks/results/gpu-${card}-${commit}${dirty}}
mkdir -p "$OUT/logs"
STEPS="$OUT/steps.tsv"
printf 'name\trc\tseconds\tlimit_s\tstatus\tcommand\n' > "$STEPS"

# step NAME LIMIT_S CMD...: runs CMD with stdout to logs/NAME.out and stderr to logs/NAME.err, under
# `timeout`, and records it. Returns CMD's exit status (124 on timeout, 125 when skipped).
step() {
  local name=$1 limit=$2
  shift 2
  local cmd
  cmd=$(printf '%s ' "$@" | tr '\t\n' '  ')
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 20 )); then
    printf '%s\t125\t0\t0\tskipped (out of time budget)\t%s\n' "$name" "$cmd" >> "$STEPS"
    echo "== $name: skipped, the time budget is spent"
    return 125
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.err" < /dev/null
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  if (( rc == 124 || rc == 137 )); then status="timed out"; elif (( rc != 0 )); then status=failed; fi
  printf '%s\t%d\t%d\t%d\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" "$status" "$cmd" >> "$STEPS"
  echo "   $status (rc $rc, ${dt}s)"
  return $rc
}

step environment 60 bash -c "nvidia-smi; echo; echo 'validated: ${commit}${dirty}'; git log -1 --format='git HEAD %H %s'; git status --short; \
  $PY -c 'import sys, torch; print(\"python\", sys.version.split()[0]); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda); print(\"gpu\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'; \
  $PY -c 'import triton; print(\"triton\", triton.__version__)'; nvcc --version | tail -n 2; \
  command -v compute-sanitizer ncu; true"

if [ "${NIN_VALIDATE_PREBUILT:-0}" = 1 ] && $PY -c 'import nin_ext._C' > /dev/null 2>&1; then
  printf 'build\t0\t0\t0\tskipped (the prebuilt nin_ext/_C loads)\t\n' >> "$STEPS"
elif [ "${NIN_VALIDATE_SKIP_BUILD:-0}" != 1 ]; then
  archs=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)}
  step build 600 env TORCH_CUDA_ARCH_LIST="${archs:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    $PY -m pip install --no-build-isolation --no-deps -v -e .
fi
step import 120 $PY -c 'import nin_ext; print(nin_ext.info()); assert nin_ext._extension.cuda_built, "no CUDA kernels in nin_ext._C"; assert "cuda" in nin_ext.available_backends(), "the cuda backend is not available"'

step pytest 480 $PY -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/junit.xml" ${NIN_VALIDATE_TESTS:-tests}

if command -v compute-sanitizer > /dev/null; then
  # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns.
  step memcheck 200 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/gpu_sanitize_cases.py
  step racecheck 200 compute-sanitizer --tool racecheck --error-exitcode 1 $PY benchmarks/gpu_sanitize_cases.py
else
  printf 'sanitizer\t127\t0\t0\tskipped (compute-sanitizer not found)\t\n' >> "$STEPS"
fi

# bench NAME LIMIT BENCH_ARGS...: one benchmark run; its table in logs/NAME.out, its data in NAME.json.
# A run with torch.compile that fails or times out is repeated without it (eager and nin_ext rows).
bench() {
  local name=$1 limit=$2
  shift 2
  set -- "$@" ${NIN_VALIDATE_BENCH_ARGS:-}
  step "$name" "$limit" $PY -m nin_ext bench --device cuda --no-stage-compile --json "$OUT/$name.json" "$@"
  local rc=$?
  if (( rc != 0 && rc != 125 )) && [[ " $* " != *" --no-compile "* ]]; then
    step "$name-nocompile" 120 $PY -m nin_ext bench --device cuda --no-compile --json "$OUT/$name-nocompile.json" "$@"
  fi
}
# The targets first (batch 256, TF32 and bf16, against max-autotune), then batch 1, then the rest.
B256="--batch 256 --repeat 10 --warmup 3"
B1="--batch 1 --repeat 30 --warmup 5 --no-compile"
bench bench-b256-fp32-tf32 240 $B256 --dtype float32 --tf32 on
bench bench-b256-bf16 240 $B256 --dtype bfloat16
bench bench-b1-fp32-tf32 90 $B1 --dtype float32 --tf32 on
bench bench-b1-fp32-exact 90 $B1 --dtype float32 --tf32 off
bench bench-b1-fp16 90 $B1 --dtype float16
bench bench-b1-bf16 90 $B1 --dtype bfloat16
bench bench-b256-fp32-exact 200 $B256 --dtype float32 --tf32 off
bench bench-b256-fp16 200 $B256 --dtype float16

# The report is written whatever happened above (outside the budget: it takes seconds).
timeout 120 $PY benchmarks/gpu_report.py "$OUT" || echo "gpu_report.py failed; the raw logs are in $OUT/logs"
echo "== done in $(( $(date +%s) - START ))s: $OUT/report.md"
