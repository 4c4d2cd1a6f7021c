#!/usr/bin/env bash
# The training side of cxr-node on a GPU host, measured in one time-boxed go (issue 15):
#   1. the GPU step tests: CUDA-graph and compiled steps give the eager losses, for one model
#      and for the grouped network (training.grouped);
#   2. `bench train` with PARALLEL trainings (MODE grouped: one grouped network; processes: N
#      processes) on DATA_DIR, 2 epochs of BENCH_IMAGES images each, deterministic, with a
#      profile of PROFILE grouped steps; the same bench, short, with run.deterministic = false;
#      one model alone (the baseline on this machine, uninstrumented and profiled);
#   3. the protocol of each config in CONFIGS (default: the paper's, then the scratch recipe)
#      on DATA_DIR with run.parallel = PARALLEL, run.parallel_mode = MODE: all of optim.epochs
#      when the bench's projection says they fit, else as many epochs as fit the time left (the
#      configs share it equally; said in summary.txt), with the faster determinism setting of
#      step 2 (said too).
# Results land in OUT_DIR, at most 8 files (a device call returns at most 8): summary.txt,
# gpu-tests.txt, bench-train.json, bench-train.profile.txt, bench-train-nondeterministic.json,
# baseline.txt, train-metrics.tar.gz (each run's metrics.json), train-runs.tar.gz (each run's
# train.log, report.md, plots, Grad-CAM, splits, predictions).
#
# usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS=540]
#   Runs from the repository root with $PYTHON (default python3) importing cxr-node's
#   dependencies and pytest. Knobs (environment): DEVICE (cuda), PARALLEL (10: 5 repetitions x
#   A and B at once), MODE (grouped), CONFIGS ("configs/train-paper.toml configs/train-public.toml"),
#   INIT (scratch), BENCH_EPOCHS (2), BENCH_IMAGES (300), TRAIN_SET / BENCH_SET ("key=value ..."
#   overrides), THREADS (decoding threads, 8), PROFILE (10 steps; 0: none), FALLBACK_EPOCHS (3),
#   TESTS (1; 0 skips step 1, e.g. when a probe call on the same machine ran it).
#   Fits a 15-minute device slot: 540 s for the script leaves the rest to the machine's start.
#   Dry run on a CPU (tiny, minutes):
#     DEVICE=cpu PARALLEL=2 BENCH_IMAGES=12 THREADS=1 PROFILE=1 \
#       TRAIN_SET="data.subset=60 data.input_size=64 run.repetitions=1 report.gradcam_examples=1" \
#       BENCH_SET="data.subset=60 data.input_size=64" deploy/gpu-check.sh DATA_DIR OUT_DIR 900
set -uo pipefail
DATA=${1:?usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS]}
OUT=${2:?usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS]}
BUDGET=${3:-540}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PARALLEL=${PARALLEL:-10}
MODE=${MODE:-grouped}
CONFIGS=${CONFIGS:-configs/train-paper.toml configs/train-public.toml}
INIT=${INIT:-scratch}
BENCH_EPOCHS=${BENCH_EPOCHS:-2}
BENCH_IMAGES=${BENCH_IMAGES:-300}
THREADS=${THREADS:-8}
PROFILE=${PROFILE:-10}
FALLBACK_EPOCHS=${FALLBACK_EPOCHS:-3}
read -r -a train_extra <<< "${TRAIN_SET:-}"
read -r -a bench_extra <<< "${BENCH_SET:-}"
read -r -a configs <<< "$CONFIGS"
train_sets=(); for kv in "${train_extra[@]}"; do train_sets+=(--set "$kv"); done
bench_sets=(); for kv in "${bench_extra[@]}"; do bench_sets+=(--set "$kv"); done
START=$(date +%s)
WORK=$(mktemp -d /tmp/cxr-gpu-check.XXXXXX)  # checkpoints (GBs); what matters is copied to OUT
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

say "gpu-check (training): data $DATA, budget ${BUDGET}s, device $DEVICE, parallel $PARALLEL ($MODE), configs ${configs[*]}, init $INIT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  "$PY" -c 'import torch, os, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version(), "cpus", os.cpu_count())'
} | tee -a "$OUT/summary.txt"

if [[ "${TESTS:-1}" == 1 ]]; then
    say "GPU step tests (CUDA graphs / compile vs eager; grouped network)"
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_train_fast_path.py tests/test_train_grouped.py \
        -k "gpu" > "$OUT/gpu-tests.txt" 2>&1
    tail -3 "$OUT/gpu-tests.txt" | tee -a "$OUT/summary.txt"
fi

SMI_PID=
if command -v nvidia-smi > /dev/null; then  # device utilisation and memory while the benches run, once a second
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$WORK/smi.csv" 2>/dev/null &
    SMI_PID=$!
fi
bench() {  # bench NAME TIMEOUT EPOCHS IMAGES PROFILE_STEPS [--set k=v ...]
    local name=$1 limit=$2 epochs=$3 images=$4 prof=$5; shift 5
    timeout "$limit" "$PY" -m training bench train --device "$DEVICE" --parallel "$PARALLEL" --mode "$MODE" \
        --epochs "$epochs" --images "$images" --data "$DATA" --config "${configs[0]}" --set "run.num_workers=$THREADS" \
        "${bench_sets[@]}" "$@" --profile "$prof" --out "$OUT/$name.json" > "$WORK/$name.out" 2> "$WORK/$name.err"
    local rc=$?
    tee -a "$OUT/summary.txt" < "$WORK/$name.out"
    [[ $rc == 0 ]] || { tail -20 "$WORK/$name.err" | tee -a "$OUT/summary.txt"; say "$name failed ($rc)"; }
    grep -hoE "captured in a CUDA graph|continuing eagerly.*|[A-Za-z]*Error.*" "$WORK/$name.err" | sort | uniq -c | head -6 \
        | tee -a "$OUT/summary.txt"
}
say "bench train: $PARALLEL trainings ($MODE) x $BENCH_EPOCHS epochs of $BENCH_IMAGES images, deterministic ($(left)s left)"
bench bench-train 150 "$BENCH_EPOCHS" "$BENCH_IMAGES" "$PROFILE"
say "bench train with run.deterministic = false ($(left)s left)"
bench bench-train-nondeterministic 120 "$BENCH_EPOCHS" "$BENCH_IMAGES" 0 --set run.deterministic=false
if [[ -n "$SMI_PID" ]]; then
    kill "$SMI_PID" 2>/dev/null
    awk -F', *' '$1 ~ /^[0-9]+$/ { n++; u += $1; if ($1 > 0) busy++; if ($2 > m) m = $2 }
        END { if (n) printf "nvidia-smi during the benches: %d samples, utilisation mean %.0f %%, non-zero in %d, memory used max %d MiB\n", n, u / n, busy, m }' \
        "$WORK/smi.csv" | tee -a "$OUT/summary.txt"
fi
say "baseline: one model alone on this machine, deterministic then not ($(left)s left)"
timeout 90 "$PY" - "${configs[0]}" "$DEVICE" > "$OUT/baseline.txt" 2> "$WORK/baseline.err" <<'EOF'
import dataclasses, sys
from training.bench import profile_steps
from training.config import load_config
cfg = load_config(sys.argv[1])
for det in (True, False):
    c = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, deterministic=det))
    r, table = profile_steps(c, sys.argv[2], 20, 1)
    print(f"one model, deterministic {det}: {r}")
    if not det:
        print(table)
EOF
grep "^one model" "$OUT/baseline.txt" | tee -a "$OUT/summary.txt" || tail -5 "$WORK/baseline.err" | tee -a "$OUT/summary.txt"

# Epochs and determinism for the protocol runs, from the benches' projections.
plan=$("$PY" - "$OUT/bench-train.json" "$OUT/bench-train-nondeterministic.json" "$(left)" "${#configs[@]}" <<'EOF'
import json, sys
runs = []
for path, det in ((sys.argv[1], "true"), (sys.argv[2], "false")):
    try:
        b = json.load(open(path))
    except (OSError, ValueError):
        continue
    p = b["projection"]
    runs.append((p["wall_seconds"] / p["epochs"], det, p["wall_seconds"] / 60, p["epochs"], b["decode_seconds"]))
if not runs:
    sys.exit(0)
per_epoch, det, full_min, most, decode = min(runs)
left, n = float(sys.argv[3]), int(sys.argv[4])
fixed = decode + 75.0                  # decode, model build + upload + capture, test scoring, Grad-CAM, report
share = (0.85 * left - 15) / n         # each config's share of the time left
print(max(0, min(most, int((share - fixed) / per_epoch))), f"{per_epoch:.2f}", f"{full_min:.1f}", det)
EOF
)
read -r RUN_EPOCHS PER_EPOCH FULL_MIN DET <<< "$plan"
if [[ -z "${FULL_MIN:-}" ]]; then
    RUN_EPOCHS=$FALLBACK_EPOCHS DET=true
    say "no projection from the benches: protocol runs of $RUN_EPOCHS epochs, deterministic"
else
    say "fastest bench: deterministic $DET, ${PER_EPOCH}s per protocol epoch, full protocol projected at ${FULL_MIN} min -> $RUN_EPOCHS epochs per config"
fi

for config in "${configs[@]}"; do
    name=$(basename "$config" .toml)
    if [[ "$RUN_EPOCHS" -lt 1 ]]; then
        say "protocol run $name skipped: not even one epoch fits the $(left)s left"
        continue
    fi
    say "protocol run: $config, run.parallel $PARALLEL ($MODE), $RUN_EPOCHS epochs, deterministic $DET ($(left)s left)"
    warmup=()  # the recipe's warm-up (5 of 100 epochs) shrinks with its epochs; the paper has none
    [[ "$name" == train-public ]] && warmup=(--set "optim.warmup_epochs=$(( RUN_EPOCHS / 20 ))")
    T0=$(date +%s)
    limit=$(( $(left) - 10 )); [[ "$config" == "${configs[-1]}" ]] || limit=$(( limit / 2 + 30 ))
    timeout "$limit" "$PY" -m training train --config "$config" --data "$DATA" --out "$WORK/$name" \
        --set "model.init=$INIT" --set "optim.epochs=$RUN_EPOCHS" --set "run.device=$DEVICE" \
        --set "run.parallel=$PARALLEL" --set "run.parallel_mode=$MODE" --set "run.num_workers=$THREADS" \
        --set "run.deterministic=$DET" --set "run.checkpoint_every=100000" \
        "${warmup[@]}" "${train_sets[@]}" > "$WORK/$name.log" 2>&1
    rc=$?
    say "protocol run $name exit $rc after $(( $(date +%s) - T0 ))s"
    [[ $rc == 0 ]] || tail -20 "$WORK/$name.log" | tee -a "$OUT/summary.txt"
    grep -E "grouped|left out|test:|done in" "$WORK/$name/train.log" 2>/dev/null | head -12 | tee -a "$OUT/summary.txt"
done
(cd "$WORK" && tar czf "$OUT/train-metrics.tar.gz" ./*/metrics.json 2>/dev/null)
(cd "$WORK" && tar czf "$OUT/train-runs.tar.gz" ./*/train.log ./*/report.md ./*/plots ./*/gradcam ./*/splits ./*/predictions 2>/dev/null)
say "gpu-check done"
