#!/usr/bin/env bash
# One pass over a lent GPU machine, in under 8 minutes:
#   nvidia-smi -> build with CUDA -> python -m fastshap.info -> a CUDA device check -> host_path.py ->
#   GPU benchmarks (JSON) -> training benchmarks on the GPU (JSON) -> GPU tests -> report; on request
#   (GPU_CHECK_ONLY=sanitize), the kernels under compute-sanitizer.
# Every step runs under `timeout` within a total time budget; a failing step does not stop the others;
# the exit status is non-zero when any step failed or was skipped. Everything goes flat into $OUT:
#   summary.txt  env.txt  build.log  tests.log  bench.log  bench.json  fastshap_train.json  report.md
# (eight files: the most a lent machine's $OUT hands back). The summary and the report are printed last.
#
#   OUT=/some/dir bash bench/gpu_check.sh         # default OUT: bench/results/gpu-<UTC date>-<time>
#
# Knobs: PYTHON (default: python, else python3), GPU_CHECK_BUDGET (total seconds, default 470),
# TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default: all cores), GPU_CHECK_SKIP_BUILD=1 (keep the
# installed build), GPU_CHECK_ONLY=bench,training (run only these steps; env and report always run). No package index is needed: pip runs with --no-index --no-deps --no-build-isolation
# against the torch / Triton / CUDA already on the machine. Without pytest-benchmark the benchmarks run
# through bench/gpu_cases.py, which writes the same JSON.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT="${OUT:-bench/results/gpu-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" || exit 2
PY="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET="${GPU_CHECK_BUDGET:-470}"
RESERVE=20 # seconds kept back for the report
START=$(date +%s)
FAILED=0
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

log() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
# asked NAME: whether GPU_CHECK_ONLY (unset: everything) asks for step NAME; env, the CUDA device check and
# the report always run.
asked() { [[ -z ${GPU_CHECK_ONLY:-} || ",$GPU_CHECK_ONLY,env,cuda,report," == *",$1,"* ]]; }

# run_step NAME LIMIT LOGFILE COMMAND...: COMMAND under `timeout`, its output appended to LOGFILE.
run_step() {
  local name=$1 limit=$2 logfile=$3
  shift 3
  local t0 left rc status
  if ! asked "$name"; then
    log "$(printf '%-8s %-26s' "$name" 'not asked for (GPU_CHECK_ONLY)')"
    return
  fi
  t0=$(date +%s)
  left=$((BUDGET - (t0 - START)))
  [[ $name == report ]] || left=$((left - RESERVE))
  if ((left < 5)); then
    log "$(printf '%-8s %-26s' "$name" 'SKIPPED (budget spent)')"
    FAILED=1
    return
  fi
  ((limit > left)) && limit=$left
  printf '### %s (limit %ss, %s): %s\n' "$name" "$limit" "$(date -u +%FT%TZ)" "$*" >>"$logfile"
  timeout -k 10 "$limit" "$@" >>"$logfile" 2>&1
  rc=$?
  if ((rc == 124 || rc == 137)); then
    status="TIMEOUT after ${limit}s"
  elif ((rc != 0)); then
    status="FAILED (exit $rc)"
  else
    status=ok
  fi
  ((rc != 0)) && FAILED=1
  log "$(printf '%-8s %-26s %4ss  %s' "$name" "$status" "$(($(date +%s) - t0))" "$(basename "$logfile")")"
}

log "fastshap gpu_check: $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), python: $PY, out: $OUT"

# shellcheck disable=SC2016  # expanded by the inner bash, on purpose
run_step env 20 "$OUT/env.txt" bash -c '
  rc=0
  nvidia-smi || rc=1
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv || rc=1
  echo; uname -a; echo "cores: $(nproc)"; free -g
  echo; command -v nvcc && nvcc --version
  exit $rc'

if [[ ${GPU_CHECK_SKIP_BUILD:-0} == 1 ]]; then
  log "build    skipped (GPU_CHECK_SKIP_BUILD=1)"
else
  run_step build 200 "$OUT/build.log" env FASTSHAP_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install --no-index --no-deps --no-build-isolation -v -e .
fi

run_step info 30 "$OUT/env.txt" "$PY" -m fastshap.info
# Without a device torch can use, every GPU test would skip and the pytest steps would still say ok.
run_step cuda 30 "$OUT/env.txt" "$PY" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device: the GPU steps below prove nothing")'

# This host's cost of fastshap's Python per call (launch stubbed, CPU tensors): the share of "host time /
# call" in the report that is not Triton's launcher or CUDA launches.
run_step host 40 "$OUT/env.txt" env -u TRITON_INTERPRET "$PY" bench/host_path.py

if "$PY" -c 'import pytest_benchmark' 2>/dev/null; then
  run_step bench 240 "$OUT/bench.log" "$PY" -m pytest bench/test_bench_gpu.py -q -rs --benchmark-only \
    --benchmark-json "$OUT/bench.json" -p no:cacheprovider
else
  echo "pytest-benchmark is not installed: running bench/gpu_cases.py" >>"$OUT/bench.log"
  run_step bench 240 "$OUT/bench.log" "$PY" bench/gpu_cases.py --json "$OUT/bench.json"
fi

# Valuation inside training on this GPU (online overhead, epoch-mode pass against an eval forward), at a
# size where the GPU has work to do: 64x64 inputs, 1,024 samples, batches of 64.
if "$PY" -c 'import pytest_benchmark' 2>/dev/null; then
  run_step training 120 "$OUT/bench.log" env BENCH_TRAIN_SAMPLES="${BENCH_TRAIN_SAMPLES:-1024}" \
    BENCH_TRAIN_SIZE="${BENCH_TRAIN_SIZE:-64}" BENCH_TRAIN_BATCH="${BENCH_TRAIN_BATCH:-64}" \
    BENCH_TRAIN_ROUNDS="${BENCH_TRAIN_ROUNDS:-7}" BENCH_TRAIN_THREADS="${BENCH_TRAIN_THREADS:-0}" \
    "$PY" -m pytest bench/test_bench_training.py -q -rs --benchmark-only --benchmark-json "$OUT/fastshap_train.json" \
    -p no:cacheprovider
elif asked training; then
  log "training SKIPPED (its benchmarks need pytest-benchmark)"
  FAILED=1
fi

# Tests last: their parallel workers load every core, which would disturb the timings above.
# Tests in parallel processes when pytest-xdist is there: most of their time is Triton compiling kernels.
XDIST=()
"$PY" -c 'import xdist' 2>/dev/null && XDIST=(-n "${GPU_CHECK_TEST_WORKERS:-8}")
run_step tests 150 "$OUT/tests.log" "$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider "${XDIST[@]}" \
  --durations=15

# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over the CUDA and Triton kernels on small
# cases: the barriers, cp.async waits and mma fragments that the CPU emulation only models. Opt-in, outside
# the 8-minute default, and in a call of its own on the machine a full run built on (the tools take up to
# 200 + 80 + 60 + 80 s; time unmeasured): GPU_CHECK_SKIP_BUILD=1 GPU_CHECK_ONLY=sanitize. Exit 2 in its log: the
# check cannot run there (no CUDA build, no compute-sanitizer, or it refuses the device: gVisor machines).
if [[ ,${GPU_CHECK_ONLY:-}, == *,sanitize,* ]]; then
  run_step sanitize 440 "$OUT/tests.log" "$PY" tools/gpu_sanitize_check.py
else
  log "$(printf '%-8s %-26s' sanitize 'opt-in (GPU_CHECK_ONLY=sanitize)')"
fi

RESULTS=()
for f in "$OUT/bench.json" "$OUT/fastshap_train.json"; do [[ -f $f ]] && RESULTS+=("$f"); done
if ((${#RESULTS[@]})); then
  run_step report 20 "$OUT/bench.log" "$PY" bench/report.py "${RESULTS[@]}" -o "$OUT/report.md"
elif asked bench || asked training; then  # report.py with no file would render an old committed run
  log "report   SKIPPED (this run wrote no result file)"
  FAILED=1
fi

# What a caller sees first: the report, the tests' failures and skips, then the summary.
[[ -f $OUT/report.md ]] && cat "$OUT/report.md"
grep -E '^(FAILED|ERROR|SKIPPED|VALUE FAILED)|passed|failed|^(memcheck|racecheck|synccheck|initcheck): ' \
  "$OUT/tests.log" 2>/dev/null | tail -40
cat "$SUMMARY"
if ((FAILED)); then
  log "total $(($(date +%s) - START))s: SOME STEPS FAILED (logs in $OUT)"
else
  log "total $(($(date +%s) - START))s: all steps passed"
fi
exit "$FAILED"
