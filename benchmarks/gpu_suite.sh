#!/usr/bin/env bash
# The GPU check of semask in one call of the device machine (under 10 minutes):
#   setup     install the package on top of the machine's torch/Triton (no network)
#   build     build the CUDA extension (python -m semask.ops.build_cuda)
#   tests     GPU tests of both backends (pytest -m gpu)
#   memcheck  compute-sanitizer --tool memcheck python benchmarks/cuda_memcheck.py
#   bench     op and end-to-end benchmarks (benchmarks/run.py --device cuda --isolate)
#   sweep     launch-configuration sweep of the Triton kernels (benchmarks/sweep.py); not
#             in the default stages: `bash benchmarks/gpu_suite.sh setup sweep`
#   profile   where a SeMask-T training step spends its GPU time, reference and triton
#             (benchmarks/profile_step.py); not in the default stages either
#   graphs    the model cases (training steps and inference forwards) replayed as CUDA graphs
#             (benchmarks/run.py --cuda-graphs), results in graphs/ of the output folder; not
#             a default stage
#   host      host time per call of each fused op and its reference, and where it goes
#             (benchmarks/host_time.py --profile, host_time.md); not a default stage
#   trainer   img/s of the whole training loop (semask-train: data loader workers, pinned
#             batches copied ahead, optimizer, logging) for SeMask-T at 512x512 crops, batch
#             16, on synthetic images, eager and CUDA-graphed (trainer_*/metrics.jsonl; the
#             runs themselves go to $TMPDIR); compare with the bench stage's training step;
#             not a default stage
# Every stage has a hard time limit and its failure is recorded; the later stages still run.
#
# Usage, from the repository root:
#   SEMASK_COMMIT=<commit> bash benchmarks/gpu_suite.sh                         # all stages
# (give the commit of the checkout that was sent, computed where it was made, e.g.
# `git describe --always --dirty --abbrev=40`: the device machine's copy of .git can be
# stale or missing, and the results record SEMASK_COMMIT as given; unset, it is HEAD with
# "-dirty" when `git status --porcelain` lists anything, untracked files included)
#   bash benchmarks/gpu_suite.sh setup bench                                    # some stages
# Environment: OUT (results go to $OUT/<device>-<date>/, default benchmarks/results/),
#   SUITE_BUDGET (seconds for the whole suite, default 560), TESTS (pytest arguments that
#   pick a subset of the GPU tests, e.g. "tests/models/test_fused_model.py -k accuracy";
#   default: every test file with GPU tests, one process each), BENCH_ARGS (extra run.py
#   arguments, e.g. "--cases window/swin_t-512"), SWEEP_ARGS (extra sweep.py arguments),
#   PROFILE_ARGS (extra profile_step.py arguments, e.g. "--fused reference,triton,cuda"),
#   GRAPHS_ARGS (run.py arguments of the graphs stage, default "--providers
#   reference,triton --cases model/semask_swin_tiny"), TRAINER_WORKERS (the trainer stage's
#   data-loader workers, default 12),
#   PYTHON (default python3).
# Output folder: suite.log (all output), suite_summary.txt (one line per stage), and the
# benchmark's results.json, results.md, speedup.png, memory.png; the sweep's sweep.json, sweep.md;
# the profile's profile.md; the host stage's host_time.md.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${SUITE_BUDGET:-560}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(setup build tests memcheck bench)
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
unset TRITON_INTERPRET
if [ -z "${SEMASK_COMMIT:-}" ]; then
  SEMASK_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [ "$SEMASK_COMMIT" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    SEMASK_COMMIT="$SEMASK_COMMIT-dirty"
  fi
fi
export SEMASK_COMMIT

# planned seconds per stage; a stage gets min(plan, what is left after the minimum of the
# stages still to come), so a fast early stage leaves more time to the benchmarks
declare -A PLAN=([setup]=90 [build]=200 [tests]=240 [memcheck]=90 [bench]=600 [sweep]=600 [profile]=300
                 [graphs]=200 [host]=120 [trainer]=180)
declare -A MIN=([setup]=20 [build]=30 [tests]=30 [memcheck]=20 [bench]=120 [sweep]=60 [profile]=40
                [graphs]=90 [host]=40 [trainer]=60)

slug=$(timeout 60 "$PY" -c "from benchmarks.measure import device_slug; print(device_slug('cuda'))" 2>/dev/null | tail -n 1)
[ -n "$slug" ] || slug=gpu
RES="${OUT:-$ROOT/benchmarks/results}/${slug}-$(date -u +%Y-%m-%d)"
mkdir -p "$RES"
LOG="$RES/suite.log"
SUMMARY="$RES/suite_summary.txt"
: >"$LOG"
{
  echo "semask GPU suite: commit $SEMASK_COMMIT, started $(date -u +%FT%TZ), budget ${BUDGET}s, stages: ${STAGES[*]}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | head -n 3
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  df -h /dev/shm | tail -n 1  # data-loader workers hand their batches over in shared memory
} | tee "$SUMMARY" | tee -a "$LOG"
FAILED=0

later_minimum() {  # sum of MIN over the stages after $1
  local seen=0 sum=0 s
  for s in "${STAGES[@]}"; do
    if [ $seen -eq 1 ]; then sum=$((sum + ${MIN[$s]:-0})); fi
    [ "$s" = "$1" ] && seen=1
  done
  echo $sum
}

run_stage() {  # run_stage NAME: stage_NAME LIMIT, time-limited; output to the log, outcome to the summary
  local name=$1
  local now left limit rc t0 before shown
  now=$(date +%s)
  left=$((START + BUDGET - now - $(later_minimum "$name")))
  limit=${PLAN[$name]}
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "$name: SKIPPED (no time left in the ${BUDGET}s budget)" | tee -a "$SUMMARY" "$LOG"
    FAILED=1
    return 1
  fi
  echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
  before=$(wc -l <"$LOG")
  t0=$(date +%s)
  # straight into the log (kept if the whole call is cut short); timeout signals the
  # whole process group, so the stage's children go with it
  timeout -k 15 "$limit" bash -c "stage_$name \"\$1\"" _ "$limit" >>"$LOG" 2>&1
  rc=$?
  if [ "$name" = bench ]; then shown=110; else shown=30; fi
  tail -n +"$((before + 1))" "$LOG" | tail -n "$shown"
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${limit}s"; FAILED=1
  elif [ $rc -ne 0 ]; then status="FAILED (exit $rc)"; FAILED=1; fi
  echo "$name: $status, $(( $(date +%s) - t0 ))s" | tee -a "$SUMMARY" "$LOG"
  return $rc
}

# The machine's python has torch, Triton and every dependency; install ours on top without
# network or build isolation (editable, so csrc/ and kernels/ are used in place).
stage_setup() {
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -q -e . &&
    "$PY" -c "import semask, semask.kernels, semask.ops.flops; print('semask', semask.__version__, 'from', semask.__file__)"
}

stage_build() {
  if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('semask.ops.build_cuda') is None)"; then
    echo "semask.ops.build_cuda does not exist yet (issue 5): nothing to build"
    return 3
  fi
  "$PY" -m semask.ops.build_cuda
}

stage_tests() {  # one process per test file: a crash (a segfault in an extension) loses one file
  local rc=0 f
  if [ -n "${TESTS:-}" ]; then  # a chosen subset, one process
    # shellcheck disable=SC2086
    "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider $TESTS
    return $?
  fi
  for f in $(grep -rl --include='test_*.py' "pytest.mark.gpu" tests | sort); do
    echo "--- $f"
    "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider "$f" || rc=1
  done
  return $rc
}

stage_memcheck() {
  if [ ! -f benchmarks/cuda_memcheck.py ]; then
    echo "benchmarks/cuda_memcheck.py does not exist yet (issue 5)"
    return 3
  fi
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer is not on PATH"
    return 3
  fi
  compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 "$PY" benchmarks/cuda_memcheck.py
}

stage_bench() {  # $1: the stage's time limit
  local budget=$(($1 - 75))  # room for the last measurement, model FLOPs, report
  [ "$budget" -lt 30 ] && budget=30
  # shellcheck disable=SC2086
  "$PY" benchmarks/run.py --device cuda --isolate --time-budget "$budget" --out "$RES" ${BENCH_ARGS:-}
}

stage_sweep() {  # $1: the stage's time limit
  local budget=$(($1 - 30))
  [ "$budget" -lt 20 ] && budget=20
  # shellcheck disable=SC2086
  "$PY" benchmarks/sweep.py --device cuda --time-budget "$budget" --out "$RES" ${SWEEP_ARGS:-}
}

stage_profile() {
  # shellcheck disable=SC2086
  "$PY" benchmarks/profile_step.py --device cuda --out "$RES" ${PROFILE_ARGS:-}
}

stage_graphs() {  # $1: the stage's time limit
  local budget=$(($1 - 60))
  [ "$budget" -lt 30 ] && budget=30
  # shellcheck disable=SC2086
  "$PY" benchmarks/run.py --device cuda --isolate --cuda-graphs --time-budget "$budget" \
    --out "$RES/graphs" ${GRAPHS_ARGS:---providers reference,triton --cases model/semask_swin_tiny}
}

stage_host() {
  "$PY" benchmarks/host_time.py --device cuda --profile 20 --out "$RES/host_time.md"
}

stage_trainer() {  # 80 iterations; the intervals after the first (warm-up, capture) are steady
  # 16 training images: each worker renders them once (~0.1 s each), then only augments, so
  # the loader is not what is timed; the runs' checkpoints (~0.7 GB) stay out of $OUT
  local rc=0 graphs run
  for graphs in false true; do
    echo "--- cuda_graphs $graphs"
    run="${TMPDIR:-/tmp}/semask_trainer_graphs_$graphs"
    rm -rf "$run"
    "$PY" -m semask.train ade20k_semask_tiny_fpn --dataset synthetic --num-classes 6 --pretrained none \
      --synthetic-size 512,683 --synthetic-train-size 16 --synthetic-val-size 2 --batch-size 16 \
      --iters 80 --log-interval 20 --eval-interval 0 --ckpt-interval 0 --progress false \
      --num-workers "${TRAINER_WORKERS:-12}" --cuda-graphs "$graphs" --out-dir "$run" \
      >"$RES/trainer_graphs_$graphs.log" 2>&1 || { rc=1; tail -n 20 "$RES/trainer_graphs_$graphs.log"; }
    mkdir -p "$RES/trainer_graphs_$graphs"
    cp "$run"/metrics.jsonl "$run"/eval.json "$RES/trainer_graphs_$graphs/" 2>/dev/null
    grep img_per_s "$run/metrics.jsonl"
  done
  return $rc
}

export PY RES
export -f stage_setup stage_build stage_tests stage_memcheck stage_bench stage_sweep stage_profile \
  stage_graphs stage_host stage_trainer
for s in "${STAGES[@]}"; do
  case "$s" in
    setup|build|tests|memcheck|bench|sweep|profile|graphs|host|trainer) run_stage "$s" ;;
    *) echo "unknown stage $s (setup build tests memcheck bench sweep profile graphs host trainer)" | tee -a "$SUMMARY"; FAILED=1 ;;
  esac
done
echo "total $(( $(date +%s) - START ))s; results in $RES" | tee -a "$SUMMARY" "$LOG"
cat "$SUMMARY"
exit $FAILED
