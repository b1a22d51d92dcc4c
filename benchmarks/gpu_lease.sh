#!/usr/bin/env bash
# A short GPU lease in one command: the timings first (they are what a lease is rare for), then the
# full validation (benchmarks/gpu_validate.sh) in what is left of the budget. Everything goes to
# OUTDIR, which is packed into TARBALL every 10 seconds and at the end, so that a run cut off by the
# lease still returns what it did.
#
#   benchmarks/gpu_lease.sh OUTDIR TARBALL      e.g. /tmp/gpu-h100-<commit> $OUT/report.tgz
#
# Timings (OUTDIR/quick-*.txt and .json): the NiN at batch 256 in TF32 and bf16 and at batch 1 in
# TF32, eager against nin_ext's `auto` backend and the triton backend, no torch.compile.
# Environment: as gpu_validate.sh (NIN_VALIDATE_PREBUILT=1 and NIN_VALIDATE_COMMIT for a `_C` from
# `make gpu-prebuild`); NIN_LEASE_BUDGET_S (default 420) bounds the whole run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUTDIR=${1:?usage: gpu_lease.sh OUTDIR TARBALL}
TARBALL=${2:?usage: gpu_lease.sh OUTDIR TARBALL}
PY=${PYTHON:-python3}
BUDGET=${NIN_LEASE_BUDGET_S:-420}
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUTDIR"
parent=$(dirname "$OUTDIR")
name=$(basename "$OUTDIR")

pack() { tar czf "$TARBALL.tmp" -C "$parent" "$name" 2> /dev/null && mv "$TARBALL.tmp" "$TARBALL"; }
(while sleep 10; do pack; done) &
packer=$!

# quick NAME ARGS...: one benchmark run with a time limit; its table is printed and kept.
quick() {
  local name=$1
  shift
  echo "== quick-$name"
  timeout -k 10 90 $PY -m nin_ext bench --device cuda --no-compile --no-stage-compile --quiet \
    --json "$OUTDIR/quick-$name.json" "$@" > "$OUTDIR/quick-$name.txt" 2>&1
  echo "   rc $?"
  sed -n '/^stage/,/^images/p' "$OUTDIR/quick-$name.txt"
}
quick b256-tf32 --batch 256 --repeat 10 --warmup 3 --dtype float32 --tf32 on --extra-backends triton
quick b256-bf16 --batch 256 --repeat 10 --warmup 3 --dtype bfloat16 --extra-backends triton
quick b1-tf32 --batch 1 --repeat 30 --warmup 5 --dtype float32 --tf32 on --extra-backends triton

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
