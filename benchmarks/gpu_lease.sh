#!/usr/bin/env bash
# A short GPU lease in one command: the timings first (they are what a lease is rare for), then the
# full validation (benchmarks/gpu_validate.sh) in what is left of the budget. Everything goes to
# OUTDIR, which is packed into TARBALL every 10 seconds and at the end, so that a run cut off by the
# lease still returns what it did.
#
#   benchmarks/gpu_lease.sh OUTDIR TARBALL      e.g. /tmp/gpu-h100-<commit> $OUT/report.tgz
#
# Timings (OUTDIR/quick-*.txt and .json): the NiN at batch 256 in TF32 and bf16 and at batch 1 in
# TF32, eager against nin_ext's `auto` backend and the triton backend (NIN_LEASE_EXTRA_BACKENDS, default
# triton; `none` saves the autotuning's half minute when the Triton kernels did not change), no torch.compile.
# Environment: as gpu_validate.sh (NIN_VALIDATE_PREBUILT=1 and NIN_VALIDATE_COMMIT for a `_C` from
# `make gpu-prebuild`); NIN_LEASE_BUDGET_S (default 420) bounds the whole run. NIN_LEASE_AB_TREE, one or
# more folders (space-separated), each holding another build's nin_ext package (e.g. an earlier commit's,
# carried to the machine), adds their batch-256 TF32 and bf16 and batch-1 TF32 timings
# (quick-<folder>-*), run alternately with this tree's. Then, when `ncu` is on the PATH or in
# /usr/local/cuda/bin and NIN_LEASE_NCU is not 0, Nsight Compute's main sections for the CUDA kernel
# of blocks 2, 3 and 1 (benchmarks/ncu_blocks.py, about 30 s) into OUTDIR/ncu-blocks.txt.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUTDIR=$(realpath -m "${1:?usage: gpu_lease.sh OUTDIR TARBALL}")
TARBALL=$(realpath -m "${2:?usage: gpu_lease.sh OUTDIR TARBALL}")
PY=${PYTHON:-python3}
# a relative path must work from the A/B tree too (absolute, but not resolved: a venv's python is a link)
[[ "$PY" == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
BUDGET=${NIN_LEASE_BUDGET_S:-420}
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUTDIR"
parent=$(dirname "$OUTDIR")
name=$(basename "$OUTDIR")

pack() { tar czf "$TARBALL.tmp" -C "$parent" "$name" 2> /dev/null && mv "$TARBALL.tmp" "$TARBALL"; }
(while sleep 10; do pack; done) &
packer=$!

# quick NAME ARGS...: one benchmark run with a time limit; its table is printed and kept. With
# QUICK_TREE set, nin_ext is imported from that folder instead of this tree.
quick() {
  local name=$1
  shift
  echo "== quick-$name"
  # `python -m` puts the working directory first on sys.path: run from the tree that is timed.
  (cd "${QUICK_TREE:-.}" && timeout -k 10 90 $PY -m nin_ext bench --device cuda --no-compile --no-stage-compile \
    --quiet --json "$OUTDIR/quick-$name.json" "$@" > "$OUTDIR/quick-$name.txt" 2>&1)
  echo "   rc $?"
  sed -n '/^stage/,/^images/p' "$OUTDIR/quick-$name.txt"
}
B256_TF32="--batch 256 --repeat 10 --warmup 3 --dtype float32 --tf32 on"
B256_BF16="--batch 256 --repeat 10 --warmup 3 --dtype bfloat16"
B1_TF32="--batch 1 --repeat 30 --warmup 5 --dtype float32 --tf32 on"
EXTRA=${NIN_LEASE_EXTRA_BACKENDS:-triton}
read -r -a AB_TREES <<< "${NIN_LEASE_AB_TREE:-}"
# ab NAME ARGS...: the same run in each A/B tree, named after its folder
ab() {
  local name=$1 tree
  shift
  for tree in "${AB_TREES[@]}"; do QUICK_TREE=$tree quick "$(basename "$tree")-$name" "$@" --extra-backends none; done
}
quick b256-tf32 $B256_TF32 --extra-backends "$EXTRA"
if (( ${#AB_TREES[@]} )); then
  ab b256-tf32 $B256_TF32
  quick b256-tf32-again $B256_TF32 --extra-backends none
  ab b256-bf16 $B256_BF16
fi
quick b256-bf16 $B256_BF16 --extra-backends "$EXTRA"
quick b1-tf32 $B1_TF32 --extra-backends "$EXTRA"
(( ${#AB_TREES[@]} )) && ab b1-tf32 $B1_TF32

NCU=$( ((${NIN_LEASE_NCU:-1})) && { command -v ncu || ls /usr/local/cuda/bin/ncu; } 2> /dev/null)
if [ -n "$NCU" ]; then
  echo "== ncu: blocks 2, 3 and 1"
  # (by name: the weight packing's small kernel runs before each block's)
  timeout -k 10 90 "$NCU" --profile-from-start off --kernel-name regex:nin_block_kernel -c 3 --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section InstructionStats --section SourceCounters \
    $PY benchmarks/ncu_blocks.py > "$OUTDIR/ncu-blocks.txt" 2>&1
  echo "   rc $?"
  grep -E "^  [a-z_ ]*void|Duration|Executed Instructions  |Issue Slots Busy" "$OUTDIR/ncu-blocks.txt"
fi

left=$(( BUDGET - ($(date +%s) - START) - 30 ))
if (( left > 60 )); then
  NIN_VALIDATE_BUDGET_S=$left bash benchmarks/gpu_validate.sh "$OUTDIR/validate" > "$OUTDIR/validate.log" 2>&1
  sed -n '/^## Steps/,/^## Build/p; /^## Tests/,/^```$/p' "$OUTDIR/validate/report.md"
else
  echo "== validation skipped: ${left}s left of the budget"
fi
kill "$packer" 2> /dev/null
wait "$packer" 2> /dev/null
pack
echo "== done in $(( $(date +%s) - START ))s: $TARBALL"
