#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one run, for a lent device machine.
#
# The device's time is short (15 minutes a task, its start included), so this is one prepared
# command: the steps run in the order of what the throughput issue asks first, each under its own
# time limit, and a step that no longer fits the deadline is skipped (and said so). Each step's
# output goes to its own file under $OUT, the figures to $OUT/summary.txt as they come, so a run
# cut short still returns what it measured. Nothing is installed: the benchmarks need torch,
# torchvision, pytorch_lightning, torchmetrics, numpy, pillow, scikit-learn and rich, which the
# device's Python has (captum, zennit, torch-pruning, jsonargparse and wandb are imported lazily).
#
# Here, once (the code before the decoded-image store, for fit_vs_commit.py; .base/ is ignored):
#     rm -rf .base && mkdir .base && git archive 5661e2a | tar -x -C .base
# Then the device tool's run, with carry [".base"] and timeout_s 600:
#     bash benchmarks/device.sh
# A smoke run of the script itself on a CPU (tiny networks and data, a minute or two):
#     SMOKE=1 OUT=/tmp/device_out PYTHON=.venv/bin/python bash benchmarks/device.sh
#
# Environment: OUT (default benchmarks/device_out), PYTHON (default python3), DEADLINE (seconds
# for the whole run, default 420: a machine's start and a rerun of a step that failed early still fit
# in the 15 minutes), SMOKE=1 (CPU sizes).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/device_out}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-420}
DATA=${DATA:-/tmp/attrpreserve_voc}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
START=$SECONDS
SUMMARY="$OUT/summary.txt"

if [ "${SMOKE:-0}" = 1 ]; then
    NET=(--arch vgg_small --image-size 64 --batch-size 8)
    DEV=cpu ACC=cpu WORKERS=0 IMAGES=(--num-images 64 --min-side 112 --max-side 160) EVAL_IMAGES=16 REPEATS=2
    MIXED=(--precision 32-true)
else
    NET=(--arch vgg16 --image-size 227 --batch-size 64)
    DEV=cuda ACC=gpu WORKERS=8 IMAGES=(--num-images 2048 --min-side 300 --max-side 500) EVAL_IMAGES=512 REPEATS=10
    MIXED=(--precision bf16-mixed --channels-last)
fi

# step NAME LIMIT_SECONDS GREP_PATTERN ARGS...: run ARGS with $PY under LIMIT (cut to what is
# left of the deadline), the whole output to $OUT/NAME.txt, the lines matching GREP_PATTERN to
# the summary.
step() {
    local name=$1 limit=$2 pattern=$3
    shift 3
    local left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, ${left} s left of the deadline" | tee -a "$SUMMARY"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit} s): $*" | tee -a "$SUMMARY"
    local began=$SECONDS
    timeout "$limit" "$PY" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    grep -E "$pattern" "$OUT/$name.txt" | tee -a "$SUMMARY"
    echo "-- $name: exit $rc after $((SECONDS - began)) s" | tee -a "$SUMMARY"
}

{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, torchvision, pytorch_lightning as pl; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'lightning', pl.__version__, 'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$SUMMARY"

# 1. The step alone: online/cached SSWA, plain KD, Grad-CAM; fp32 (TF32 as PyTorch's default), bf16, fp16;
#    the matching overhead at each precision; the profiler table of the bf16 step.
step throughput 120 '^\||^device|overhead' benchmarks/gpu_throughput.py "${NET[@]}" --device "$DEV" \
    --repeats "$REPEATS"
# 2. End to end from JPEG files, online teacher, mixed precision and channels_last: today's JPEG path,
#    the store per item, the store in whole batches, and the same fit over batches held in memory.
step store_fit 150 'images/s|^ratio|JPEGs' benchmarks/store_speed.py --fit --online "${NET[@]}" \
    --workers "$WORKERS" --accelerator "$ACC" "${MIXED[@]}" "${IMAGES[@]}" --repeats 1 --epochs 2 --data "$DATA"
# 3. Grad-CAM evaluation, batches already on the device: ours fp32 (TF32 off) and bf16, and the reference loop.
step eval 90 'images/s|speed-up' benchmarks/eval_speed.py --device "$DEV" "${NET[@]}" \
    --num-images "$EVAL_IMAGES" --precisions bf16-mixed --preload
# 4. End to end against the code before the store (.base), fp32, from the same JPEG files.
if [ -d .base/attrpreserve ]; then
    step vs_commit 150 'median|^ratio|^base' benchmarks/fit_vs_commit.py --base-tree .base --online "${NET[@]}" \
        --accelerator "$ACC" --workers "$WORKERS" "${IMAGES[@]}" --repeats 1 --epochs 2 --data "$DATA"
else
    echo "== vs_commit: skipped, no .base/ (see the head of this script)" | tee -a "$SUMMARY"
fi
# 5. The step alone with channels_last networks and inputs.
step throughput_cl 60 '^\||overhead' benchmarks/gpu_throughput.py "${NET[@]}" --device "$DEV" \
    --repeats "$REPEATS" --channels-last --precisions fp32 bf16 --no-profile
# 6. Matching against the authors' way of getting the feature gradients (fp32).
step matching 60 'ms/step|^ratio' benchmarks/matching_overhead.py "${NET[@]}" --device "$DEV"
echo "total $((SECONDS - START)) s" | tee -a "$SUMMARY"
