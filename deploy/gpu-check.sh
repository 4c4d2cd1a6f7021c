#!/usr/bin/env bash
# What a GPU server does for cxr-node, measured in one time-boxed go:
#   1. `cxr-node bench inference` on the GPU (autocast, batch 1/16/64, with the CPU fp32
#      agreement check), then the same in fp32 for comparison;
#   2. the paper's training protocol (configs/train-paper.toml) on DATA_DIR with as many
#      epochs as fit the time left: a 2-epoch probe run times an epoch of A and of B, then the
#      main run gets   epochs = (time left - fixed costs) / (repetitions x (epoch A + epoch B)).
# Results land in OUT_DIR: bench-*.json, train-probe.json, train-report.md, train-metrics.json,
# train.log, train-plots.tar.gz, summary.txt.
#
# usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS=540] [IMAGE.dcm]
#   Runs from the repository root with $PYTHON (default python3), which must import
#   cxr-node's dependencies (an installed venv, or PYTHONPATH). No ImageNet weights are assumed:
#   set INIT=imagenet with $TORCH_HOME holding densenet161-8d451a50.pth to use them.
#   REPS (default 5) is lowered to 3, then 1, when fewer than MIN_EPOCHS (default 15) would fit.
#   A dry run on a CPU: DEVICE=cpu BATCHES=1,2 TRAIN_SET="data.subset=40 data.input_size=64" deploy/gpu-check.sh ...
set -uo pipefail
DATA=${1:?usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS] [IMAGE.dcm]}
OUT=${2:?usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS] [IMAGE.dcm]}
BUDGET=${3:-540}
IMAGE=${4:-}
PY=${PYTHON:-python3}
INIT=${INIT:-scratch}
REPS=${REPS:-5}
MIN_EPOCHS=${MIN_EPOCHS:-15}
DEVICE=${DEVICE:-cuda}
BATCHES=${BATCHES:-1,16,64}
read -r -a extra <<< "${TRAIN_SET:-}"
sets=()
for kv in "${extra[@]}"; do sets+=(--set "$kv"); done
START=$(date +%s)
WORK=$(mktemp -d /tmp/cxr-gpu-check.XXXXXX)  # checkpoints (~1 GB); what matters is copied to OUT
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

say "gpu-check: data $DATA, budget ${BUDGET}s, device $DEVICE, init $INIT ${TRAIN_SET:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  "$PY" -c 'import torch, os, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version(), "cpus", os.cpu_count())'
} | tee -a "$OUT/summary.txt"

img_opt=()
[[ -n "$IMAGE" ]] && img_opt=(--image "$IMAGE")
say "bench inference, $DEVICE, auto precision"
timeout 200 "$PY" -m cxr_node.cli bench inference --device "$DEVICE" --batch-sizes "$BATCHES" --studies 20 --repeats 5 \
    "${img_opt[@]}" --out "$OUT/bench-cuda.json" 2>&1 | grep -v '^\.\.\. ' | tee -a "$OUT/summary.txt"
say "bench inference, $DEVICE, fp32"
timeout 90 "$PY" -m cxr_node.cli bench inference --device "$DEVICE" --precision fp32 --batch-sizes "1,${BATCHES##*,}" --studies 5 \
    --repeats 5 --no-naive --no-overlap --no-rss-probe "${img_opt[@]}" --out "$OUT/bench-cuda-fp32.json" 2>&1 \
    | grep -v '^\.\.\. ' | tee -a "$OUT/summary.txt"

train() {  # train SECONDS OUT_SUBDIR EPOCHS REPS
    timeout "$1" "$PY" -m training train --config configs/train-paper.toml --data "$DATA" --out "$WORK/$2" \
        --set "model.init=$INIT" --set "optim.epochs=$3" --set "run.repetitions=$4" --set "run.device=$DEVICE" \
        "${sets[@]}"
}
say "training probe: 2 epochs, 1 repetition ($(left)s left)"
train $(( $(left) - 30 )) probe 2 1 > "$WORK/probe.log" 2>&1 || { tail -20 "$WORK/probe.log" | tee -a "$OUT/summary.txt"; say "probe failed"; exit 1; }
cp "$WORK/probe/metrics.json" "$OUT/train-probe.json"
plan=$("$PY" - "$WORK/probe/metrics.json" "$(left)" "$REPS" "$MIN_EPOCHS" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); left = float(sys.argv[2]); reps = int(sys.argv[3]); min_epochs = int(sys.argv[4])
rep = m["repetitions"][0]
# the slower of the two epochs (epoch 1 holds the cuDNN/allocator warm-up, but later epochs
# ran up to 40 % slower than the probe's on an H200)
ea, eb = (max(h["epoch_seconds"] for h in rep[k]["history"]) for k in "AB")
epochs_total = sum(h["epoch_seconds"] for k in "AB" for h in rep[k]["history"])
fixed = m["elapsed_seconds"] - epochs_total          # start-up, data, test, report: once per run
per_rep = 0.5 * fixed                                 # guess: half of it recurs per repetition
usable = 0.75 * left - 30                             # margin: estimates ran 20-30 % short
for r in (reps, 3, 1):
    if r > reps:
        continue
    epochs = int((usable - fixed - (r - 1) * per_rep) / (r * (ea + eb)))
    if epochs >= min_epochs or r == 1:
        break
print(max(1, min(200, epochs)), r, f"{ea:.2f}", f"{eb:.2f}", f"{fixed:.1f}")
EOF
)
read -r EPOCHS RUN_REPS EA EB FIXED <<< "$plan"
[[ -n "${FIXED:-}" ]] || { say "could not plan the main run from the probe's metrics"; exit 1; }
say "probe: epoch A ${EA}s, epoch B ${EB}s, fixed ${FIXED}s -> main run ${EPOCHS} epochs x ${RUN_REPS} repetitions"
say "paper protocol run ($(left)s left)"
train $(( $(left) - 20 )) main "$EPOCHS" "$RUN_REPS" > "$WORK/main.log" 2>&1
rc=$?
say "paper protocol run exit $rc"
cp "$WORK/main/train.log" "$OUT/train.log" 2>/dev/null || tail -50 "$WORK/main.log" > "$OUT/train.log"
cp "$WORK/main/metrics.json" "$OUT/train-metrics.json" 2>/dev/null
cp "$WORK/main/report.md" "$OUT/train-report.md" 2>/dev/null
(cd "$WORK/main" 2>/dev/null && tar czf "$OUT/train-plots.tar.gz" plots gradcam splits 2>/dev/null)
grep -E "test:|done in|kept epoch" "$OUT/train.log" | tee -a "$OUT/summary.txt"
say "gpu-check done"
exit $rc
