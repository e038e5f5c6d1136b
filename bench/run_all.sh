#!/usr/bin/env bash
# Run every GPU benchmark of bench/ in sequence, then render their tables with bench/report.py.
#
#   bash bench/run_all.sh OUT_DIR [--smoke] [--device cpu]
#
# Each script runs on its own under a time limit (a failure or timeout does not stop the rest;
# a script rewrites its JSON after every section, so a timeout keeps what was done). OUT_DIR gets
# 10 files: bench.log (everything printed), one JSON per benchmark and PERFORMANCE.md (the tables
# of the five benchmarks report.py renders, and their goals; the others print their own tables). For a full GPU run report.py also replaces the generated blocks of
# docs/PERFORMANCE.md (between its report:begin/report:end markers) and nothing else there.
# Stdout shows the tables.
# BENCH_BUDGET_S (default 900) bounds the whole run; PYTHON picks the interpreter (default python3).
set -u
out=${1:?usage: bash bench/run_all.sh OUT_DIR [--smoke] [--device DEVICE]}
shift
smoke=0
device_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --device) device_args=(--device "$2"); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$(dirname "$here")" || exit 2
mkdir -p "$out"
py=${PYTHON:-python3}
log="$out/bench.log"
budget=${BENCH_BUDGET_S:-900}
start=$SECONDS
export PYTHONUNBUFFERED=1
: >"$log"
if command -v nvidia-smi >/dev/null 2>&1; then  # read-only: the card as found (name, driver, clocks, temperature)
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv 2>&1 | tee -a "$log"
fi

run() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  local left=$((budget - (SECONDS - start)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "=== $name: SKIPPED, ${left}s of the ${budget}s budget left" | tee -a "$log"
    return
  fi
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$log"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log" \
    | grep --line-buffered -E '^(#|\||\[|elapsed|fp32:|bf16:|cache build|device:|loader|plain NeMo|mixed, |index generation|per_)' \
    | grep --line-buffered -v '^\[NeMo'
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc$([ "$rc" = 124 ] && echo ' (TIMEOUT)'), $((SECONDS - t0)) s" | tee -a "$log"
}

common=("${device_args[@]}")
loader=()
if [ "$smoke" = 1 ]; then
  common+=(--smoke)
  loader=(--utterances 8 16 --batch-size 4 --num-workers 0 --batches 3 --warmup 1 --repeats 1 --index-samples 20000)
fi

run transfer_ctc 100 "$py" bench/bench_transfer_ctc.py "${common[@]}" --out "$out/transfer_ctc.json"
run multisoftmax 140 "$py" bench/bench_multisoftmax.py "${common[@]}" --out "$out/multisoftmax.json"
run distill 90 "$py" bench/bench_distill.py "${common[@]}" --out "$out/distill.json"
run lid_free 450 "$py" bench/bench_lid_free.py "${common[@]}" --out "$out/lid_free.json"
run mixed_loader 50 "$py" bench/bench_mixed_loader.py "${loader[@]}" --out "$out/mixed_loader.json"
run transfer_bpe 240 "$py" bench/bench_transfer_bpe.py "${common[@]}" --out "$out/transfer_bpe.json"
run forgetting 150 "$py" bench/bench_forgetting.py "${common[@]}" --out "$out/forgetting.json"
run adapters 70 "$py" bench/bench_adapters.py "${common[@]}" --out "$out/adapters.json"

echo "=== report $(date -u +%H:%M:%S), benchmarks took $((SECONDS - start)) s" | tee -a "$log"
"$py" bench/report.py "$out" 2>&1 | tee -a "$log"
rm -f "$out"/*.tmp
