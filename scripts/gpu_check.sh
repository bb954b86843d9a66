#!/usr/bin/env bash
# The GPU checks of shared/GPU.md, in its order, each section under its own time limit, in about 13 minutes on one
# H100/H200 with every section (the 2c/2d step-as-run sections added ~5); SKIP="3a 3b" (section numbers) leaves
# sections out to fit a shorter lease. Everything it measures goes under $OUT (default results/gpu-DATE/):
# gpu_check.log (environment, every section's output and exit status) and bench_*.json (merge them into
# BENCHMARKS.md with `python scripts/bench.py --merge $OUT/bench_*.json`).
#
#   bash scripts/gpu_check.sh                  # on a machine with one CUDA GPU and the project's dependencies
#   PYTHON=python3 OUT=/tmp/out bash scripts/gpu_check.sh
#
# 1. correctness on CUDA: pytest -m gpu (augmentation CUDA = CPU, bf16 vs fp32 losses and gradients, 20-step cvrl.py
#    and lss.py runs eager and --compile, eval_linear.py on each, NCCL with 2 GPUs)
# 2. model step: bench.py --only model at the largest bf16 batch, bf16 eager and the whole ladder (bf16 +
#    channels_last_3d + torch.compile + fused optimizer); the rows between are left out to fit the lease
#    (`python scripts/bench.py --preset gpu` runs them all). Then the step as run (bench.py section 1b): cvrl.train_step
#    and lss.train_step compiled, bf16, from a uint8 batch in pinned memory, with their graph-break counts, beside
#    section 2's compiled rows; and the CVRL step fed by the real loader on `reencode`'s default format, workers =
#    cores - 2: clips/s and the data-wait fraction (the eager rows too: `--asrun-modes both`)
# 3. the augmentation on CUDA against the torchvision per-clip loop; the input pipeline on 340x256 H.264 with a
#    keyframe every 16 frames and x264's fastdecode tuning (what `python data.py reencode` writes), 16 workers, and
#    the data-wait fraction of a real R3D-50 loop
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu-$(date -u +%F)}
WORKERS=${WORKERS:-16}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # no progress bars in the log
: > "$LOG"

section() {  # section NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  case " ${SKIP:-} " in *" ${name%%.*} "*) echo "=== $name: skipped (SKIP)" | tee -a "$LOG"; return;; esac
  echo "=== $name (limit ${limit} s, $(date -u +%FT%TZ))" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc$([ "$rc" = 124 ] && echo ' (time limit)') after $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  echo "cpu cores: $(nproc)"
  $PY -c "import sys, torch, av; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '| av', av.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')" 2>&1
} | tee -a "$LOG"

section "1. pytest -m gpu" 210 $PY -m pytest -m gpu -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_data.py
section "2a. model step, CVRL R3D-50 16x224" 140 $PY scripts/bench.py --preset gpu --only model --model-kind cvrl \
  --variants "bf16 autocast;bf16 + channels_last_3d + torch.compile + fused SGD" \
  --steps 2 3 3 --out-json "$OUT/bench_cvrl.json" --out-md /tmp/gpu_check_bench.md
section "2b. model step, LSS ViT-B/16 8x224" 110 $PY scripts/bench.py --preset gpu --only model --model-kind lss \
  --variants "bf16 autocast;bf16 + torch.compile + fused AdamW" \
  --steps 3 3 5 --out-json "$OUT/bench_lss.json" --out-md /tmp/gpu_check_bench.md
section "2c. step as run, CVRL R3D-50 16x224 compiled, + loader row" 180 $PY scripts/bench.py --preset gpu --only asrun \
  --model-kind cvrl --asrun-modes compiled --steps 2 3 3 --video-cache /tmp/gpu_check_videos \
  --out-json "$OUT/bench_asrun_cvrl.json" --out-md /tmp/gpu_check_bench.md
section "2d. step as run, LSS ViT-B/16 8x224 compiled" 120 $PY scripts/bench.py --preset gpu --only asrun --model-kind lss \
  --asrun-modes compiled --steps 3 3 5 --out-json "$OUT/bench_asrun_lss.json" --out-md /tmp/gpu_check_bench.md
section "3a. augmentation on CUDA vs torchvision" 25 $PY scripts/bench.py --preset gpu --only augment --augment-cpu no \
  --out-json "$OUT/bench_augment.json" --out-md /tmp/gpu_check_bench.md
section "3b. input pipeline, H.264 340x256 GOP 16 fastdecode, $WORKERS workers" 70 $PY scripts/bench.py --preset gpu --only pipeline \
  --formats "340x256 GOP 16 fastdecode" --workers "$WORKERS" --video-cache /tmp/gpu_check_videos --out-json "$OUT/bench_pipeline.json" \
  --out-md /tmp/gpu_check_bench.md
echo "done in $SECONDS s; results in $OUT" | tee -a "$LOG"
