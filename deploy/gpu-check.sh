#!/usr/bin/env bash
# The training side of cxr-node on a GPU host, measured in one time-boxed go (issue 15):
#   1. the GPU step tests: CUDA-graph and compiled training steps give the eager losses;
#   2. `cxr-node bench train` on DATA_DIR with PARALLEL processes (2 epochs of 300 images each): images/s per process and in
#      aggregate, GPU memory, projected wall time of the full protocol;
#   3. the paper's protocol (configs/train-paper.toml, scratch init: no ImageNet weights here) on
#      DATA_DIR with run.parallel = PARALLEL: all 200 epochs x 5 repetitions when the bench's
#      projection says they fit the time left, else as many epochs as fit (said in summary.txt);
#   2b. the same bench, short, with run.deterministic = false (what determinism costs);
#   4. optionally (INFERENCE=1) `cxr-node bench inference` first, as the earlier version did.
# Results land in OUT_DIR, 8 files (a device call returns at most 8): summary.txt, gpu-tests.txt,
# bench-train.json, bench-train.profile.txt, bench-train-nondeterministic.json, train-metrics.json,
# train.log, train-plots.tar.gz (report.md, plots, Grad-CAM, splits, predictions).
#
# usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS=540]
#   Runs from the repository root with $PYTHON (default python3) importing cxr-node's
#   dependencies and pytest. Knobs (environment): DEVICE (cuda), PARALLEL (10: 5 repetitions x
#   A and B at once), CONFIG (configs/train-paper.toml), INIT (scratch), EPOCHS (200: the most
#   the main run may take), BENCH_EPOCHS (2), BENCH_IMAGES (300 training images per process), TRAIN_SET / BENCH_SET ("key=value ..." overrides),
#   THREADS (decoding threads, 8), DETERMINISM (1: also bench with run.deterministic = false),
#   PROFILE (20: bench --profile steps, where one process's step time goes; 0: none),
#   FALLBACK_EPOCHS (3: main-run epochs when the bench gives no projection).
#   Fits a 15-minute device slot: the default 540 s leaves the machine's start-up the rest.
#   Dry run on a CPU (tiny, minutes):
#     DEVICE=cpu PARALLEL=2 BENCH_EPOCHS=2 EPOCHS=2 THREADS=1 \
#       TRAIN_SET="data.subset=60 data.input_size=64 run.repetitions=1 report.gradcam_examples=1" \
#       BENCH_SET="data.subset=60 data.input_size=64" deploy/gpu-check.sh DATA_DIR OUT_DIR 900
set -uo pipefail
DATA=${1:?usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS]}
OUT=${2:?usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS]}
BUDGET=${3:-540}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PARALLEL=${PARALLEL:-10}
CONFIG=${CONFIG:-configs/train-paper.toml}
INIT=${INIT:-scratch}
EPOCHS=${EPOCHS:-200}
BENCH_EPOCHS=${BENCH_EPOCHS:-2}
BENCH_IMAGES=${BENCH_IMAGES:-300}
THREADS=${THREADS:-8}
PROFILE=${PROFILE:-20}
FALLBACK_EPOCHS=${FALLBACK_EPOCHS:-3}
read -r -a train_extra <<< "${TRAIN_SET:-}"
read -r -a bench_extra <<< "${BENCH_SET:-}"
train_sets=(); for kv in "${train_extra[@]}"; do train_sets+=(--set "$kv"); done
bench_sets=(); for kv in "${bench_extra[@]}"; do bench_sets+=(--set "$kv"); done
START=$(date +%s)
WORK=$(mktemp -d /tmp/cxr-gpu-check.XXXXXX)  # checkpoints (GBs); what matters is copied to OUT
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

say "gpu-check (training): data $DATA, budget ${BUDGET}s, device $DEVICE, parallel $PARALLEL, config $CONFIG, init $INIT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  "$PY" -c 'import torch, os, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version(), "cpus", os.cpu_count())'
} | tee -a "$OUT/summary.txt"

if [[ "${INFERENCE:-0}" == 1 ]]; then
    say "bench inference, $DEVICE"
    timeout 200 "$PY" -m cxr_node.cli bench inference --device "$DEVICE" --batch-sizes 1,16,64 --studies 20 --repeats 5 \
        --out "$OUT/bench-inference.json" 2>&1 | grep -v '^\.\.\. ' | tee -a "$OUT/summary.txt"
fi

say "GPU step tests (CUDA graphs / compile vs eager)"
timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_train_fast_path.py -k "gpu_step_forms or gpu_fit" \
    > "$OUT/gpu-tests.txt" 2>&1
tail -3 "$OUT/gpu-tests.txt" | tee -a "$OUT/summary.txt"

SMI_PID=
if command -v nvidia-smi > /dev/null; then  # device utilisation and memory while the benches run, once a second
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$WORK/smi.csv" 2>/dev/null &
    SMI_PID=$!
fi
say "bench train: $PARALLEL process(es) x $BENCH_EPOCHS epochs ($(left)s left)"
# the bench is what this script is for: it gets 45 % of what is left (start-up of PARALLEL processes)
timeout $(( $(left) * 45 / 100 )) "$PY" -m training bench train --device "$DEVICE" --parallel "$PARALLEL" \
    --epochs "$BENCH_EPOCHS" --images "$BENCH_IMAGES" --data "$DATA" --config "$CONFIG" --set "run.num_workers=$THREADS" "${bench_sets[@]}" \
    --profile "$PROFILE" --out "$OUT/bench-train.json" > "$WORK/bench.out" 2> "$WORK/bench.err"
rc=$?
cat "$WORK/bench.out" | tee -a "$OUT/summary.txt"
[[ $rc == 0 ]] || { tail -30 "$WORK/bench.err" | tee -a "$OUT/summary.txt"; say "bench train failed ($rc)"; }
grep -hoE "captured in a CUDA graph|continuing eagerly.*|[A-Za-z]*Error.*" "$WORK/bench.err" | sort | uniq -c | head -8 \
    | tee -a "$OUT/summary.txt"

if [[ "${DETERMINISM:-1}" == 1 ]]; then  # what run.deterministic costs: the same bench, short, with it off
    say "bench train with run.deterministic = false (2 epochs, 160 images per process)"
    timeout 100 "$PY" -m training bench train --device "$DEVICE" --parallel "$PARALLEL" --epochs 2 --images 160 \
        --data "$DATA" --config "$CONFIG" --set "run.num_workers=$THREADS" --set run.deterministic=false "${bench_sets[@]}" \
        --out "$OUT/bench-train-nondeterministic.json" > "$WORK/nondet.out" 2> "$WORK/nondet.err"
    rc=$?
    grep -E "aggregate|process 1:" "$WORK/nondet.out" | tee -a "$OUT/summary.txt"
    [[ $rc == 0 ]] || { tail -10 "$WORK/nondet.err" | tee -a "$OUT/summary.txt"; say "nondeterministic bench failed ($rc)"; }
fi

if [[ -n "$SMI_PID" ]]; then
    kill "$SMI_PID" 2>/dev/null
    awk -F', *' '$1 ~ /^[0-9]+$/ { n++; u += $1; if ($1 > 0) busy++; if ($2 > m) m = $2 }
        END { if (n) printf "nvidia-smi during the benches: %d samples, utilisation mean %.0f %%, non-zero in %d, memory used max %d MiB\n", n, u / n, busy, m }' \
        "$WORK/smi.csv" | tee -a "$OUT/summary.txt"
fi

# Epochs for the main run: the projection per epoch, plus start-up/decode/test/report costs once.
plan=$("$PY" - "$OUT/bench-train.json" "$(left)" "$EPOCHS" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1])); left = float(sys.argv[2]); most = int(sys.argv[3])
p = b["projection"]
per_epoch = p["wall_seconds"] / p["epochs"]        # all trainings side by side, per epoch of the protocol
fixed = b["decode_seconds"] + 60.0                   # decode, spawn + warm-up, test scoring, bundle, report
usable = 0.85 * left - 20                            # margin: the projection packs the tail on the slow side
print(max(0, min(most, int((usable - fixed) / per_epoch))), f"{per_epoch:.2f}", f"{p['wall_seconds'] / 60:.1f}")
EOF
)
read -r RUN_EPOCHS PER_EPOCH FULL_MIN <<< "$plan"
[[ -n "${FULL_MIN:-}" ]] || { RUN_EPOCHS=$FALLBACK_EPOCHS; say "no projection from the bench: main run $RUN_EPOCHS epochs"; }
[[ -n "${FULL_MIN:-}" ]] && say "bench projects the full protocol at ${FULL_MIN} min (${PER_EPOCH}s per protocol epoch) -> main run ${RUN_EPOCHS} epochs"

if [[ "$RUN_EPOCHS" -lt 1 ]]; then
    say "protocol run skipped: not even one epoch fits the $(left)s left"
    say "gpu-check done"
    exit 0
fi
say "protocol run: $CONFIG, run.parallel $PARALLEL, $RUN_EPOCHS epochs ($(left)s left)"
T0=$(date +%s)
timeout $(( $(left) - 15 )) "$PY" -m training train --config "$CONFIG" --data "$DATA" --out "$WORK/main" \
    --set "model.init=$INIT" --set "optim.epochs=$RUN_EPOCHS" --set "run.device=$DEVICE" \
    --set "run.parallel=$PARALLEL" --set "run.num_workers=$THREADS" "${train_sets[@]}" > "$WORK/main.log" 2>&1
rc=$?
say "protocol run exit $rc after $(( $(date +%s) - T0 ))s"
cp "$WORK/main/train.log" "$OUT/train.log" 2>/dev/null || tail -60 "$WORK/main.log" > "$OUT/train.log"
[[ $rc == 0 ]] || tail -30 "$WORK/main.log" | tee -a "$OUT/summary.txt"
cp "$WORK/main/metrics.json" "$OUT/train-metrics.json" 2>/dev/null
(cd "$WORK/main" 2>/dev/null && tar czf "$OUT/train-plots.tar.gz" report.md plots gradcam splits predictions 2>/dev/null)
grep -E "run.parallel|test:|done in" "$OUT/train.log" | tee -a "$OUT/summary.txt"
say "gpu-check done"
exit $rc
