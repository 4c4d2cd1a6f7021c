#!/usr/bin/env bash
# The training side of cxr-node on a GPU host, measured in one time-boxed go (issue 15):
#   1. the GPU step tests: CUDA-graph and compiled steps give the eager losses, for one model
#      and for the grouped network (training.fast.grouped);
#   2. `bench train` with PARALLEL trainings (MODE grouped: one grouped network; processes: N
#      processes) on DATA_DIR, BENCH_EPOCHS epochs of BENCH_IMAGES images each, deterministic and
#      profiled (PROFILE steps), once per grouped-network VARIANT (below); the fastest again with
#      run.deterministic = false; one model alone (the baseline on this machine);
#   3. the protocol of each config in CONFIGS (default: the paper's, then the scratch recipe)
#      on DATA_DIR with run.parallel = PARALLEL, run.parallel_mode = MODE and the fastest bench's
#      variant and determinism: all of optim.epochs when the projection says they fit, else as
#      many epochs as fit the time left (the configs share it equally; said in summary.txt).
# Results land in OUT_DIR, at most 8 files (a device call returns at most 8): summary.txt,
# gpu-tests.txt, benches.tar.gz (each bench's JSON and profile table), baseline.txt,
# train-metrics.tar.gz (each run's metrics.json), train-runs.tar.gz (each run's train.log,
# report.md, plots, Grad-CAM, splits, predictions).
#
# usage: deploy/gpu-check.sh DATA_DIR OUT_DIR [SECONDS=540]
#   Runs from the repository root with $PYTHON (default python3) importing cxr-node's
#   dependencies and pytest. Knobs (environment): DEVICE (cuda), PARALLEL (10: 5 repetitions x
#   A and B at once), MODE (grouped), CONFIGS ("configs/train-paper.toml configs/train-public.toml"),
#   INIT (scratch), BENCH_EPOCHS (2), BENCH_IMAGES (160), TRAIN_SET / BENCH_SET ("key=value ..."
#   overrides), THREADS (decoding threads, 8), PROFILE (10 steps; 0: none), FALLBACK_EPOCHS (3),
#   VARIANTS ("NAME:key=value,... ..."), TESTS / DETERMINISM / BASELINE (1; 0 skips that part, e.g.
#   the tests when a probe call on the same machine ran them).
#   Fits a 15-minute device slot: 540 s for the script leaves the rest to the machine's start.
#   Dry run on a CPU (tiny, minutes):
#     DEVICE=cpu PARALLEL=2 BENCH_IMAGES=12 THREADS=1 PROFILE=1 BASELINE=0 \
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
BENCH_IMAGES=${BENCH_IMAGES:-160}
THREADS=${THREADS:-8}
PROFILE=${PROFILE:-10}
FALLBACK_EPOCHS=${FALLBACK_EPOCHS:-3}
# grouped-network variants benched (NAME:key=value,...): 1x1 convolutions as cuDNN grouped convolutions or
# batched GEMMs (run.grouped_pointwise), channels-last or NCHW memory (run.channels_last)
VARIANTS=${VARIANTS:-conv-cl: matmul-cl:run.grouped_pointwise=matmul conv-nchw:run.channels_last=false}
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
        "${bench_sets[@]}" "$@" --profile "$prof" --out "$BENCH/$name.json" > "$WORK/$name.out" 2> "$WORK/$name.err"
    local rc=$?
    tee -a "$OUT/summary.txt" < "$WORK/$name.out"
    [[ $rc == 0 ]] || { tail -20 "$WORK/$name.err" | tee -a "$OUT/summary.txt"; say "$name failed ($rc)"; }
    grep -hoE "captured in a CUDA graph|continuing eagerly.*|[A-Za-z]*Error.*" "$WORK/$name.err" | sort | uniq -c | head -6 \
        | tee -a "$OUT/summary.txt"
    (cd "$BENCH" && tar czf "$OUT/benches.tar.gz" .)  # after each bench: a later timeout keeps what was measured
}
sets_of() {  # "k=v,k=v" -> SETS=(--set k=v --set k=v)
    local kv kvs; SETS=(); IFS=, read -r -a kvs <<< "$1"
    for kv in "${kvs[@]}"; do [[ -n "$kv" ]] && SETS+=(--set "$kv"); done
}
BENCH=$WORK/benches; mkdir -p "$BENCH"
for variant in $VARIANTS; do  # NAME:key=value,key=value (deterministic, profiled)
    vname=${variant%%:*}; sets_of "${variant#*:}"
    say "bench train $vname: $PARALLEL trainings ($MODE) x $BENCH_EPOCHS epochs of $BENCH_IMAGES images, deterministic ($(left)s left)"
    bench "det-$vname" 150 "$BENCH_EPOCHS" "$BENCH_IMAGES" "$PROFILE" "${SETS[@]}"
done
# the fastest deterministic variant, by its projection of the full protocol
best=$("$PY" - "$BENCH" $VARIANTS <<'EOF'
import json, sys
from pathlib import Path
rates = []
for v in sys.argv[2:]:
    try:
        b = json.loads((Path(sys.argv[1]) / f"det-{v.split(':')[0]}.json").read_text())
        rates.append((b["projection"]["wall_seconds"], v))
    except (OSError, ValueError, KeyError):
        pass
print(min(rates)[1] if rates else sys.argv[2])
EOF
)
if [[ "${DETERMINISM:-1}" == 1 ]]; then  # what run.deterministic costs, on the fastest variant
    vname=${best%%:*}; sets_of "${best#*:}"
    say "bench train $vname with run.deterministic = false ($(left)s left)"
    bench "nondet-$vname" 150 "$BENCH_EPOCHS" "$BENCH_IMAGES" 0 "${SETS[@]}" --set run.deterministic=false
fi
if [[ -n "$SMI_PID" ]]; then
    kill "$SMI_PID" 2>/dev/null
    awk -F', *' '$1 ~ /^[0-9]+$/ { n++; u += $1; if ($1 > 0) busy++; if ($2 > m) m = $2 }
        END { if (n) printf "nvidia-smi during the benches: %d samples, utilisation mean %.0f %%, non-zero in %d, memory used max %d MiB\n", n, u / n, busy, m }' \
        "$WORK/smi.csv" | tee -a "$OUT/summary.txt"
fi
if [[ "${BASELINE:-1}" == 1 ]]; then
    say "baseline: one model alone on this machine, deterministic then not ($(left)s left)"
    timeout 90 "$PY" - "${configs[0]}" "$DEVICE" > "$OUT/baseline.txt" 2> "$WORK/baseline.err" <<'EOF'
import dataclasses, sys
from training.fast.bench import profile_steps
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
fi

# Variant, determinism and epochs for the protocol runs: the fastest bench's projection.
plan=$("$PY" - "$BENCH" "$(left)" "${#configs[@]}" $VARIANTS <<'EOF'
import json, sys
from pathlib import Path
runs = []
for v in sys.argv[4:]:
    name, sets = v.split(":", 1)
    for prefix, det in (("det", "true"), ("nondet", "false")):
        try:
            b = json.loads((Path(sys.argv[1]) / f"{prefix}-{name}.json").read_text())
        except (OSError, ValueError):
            continue
        p = b["projection"]
        runs.append((p["wall_seconds"] / p["epochs"], det, p["wall_seconds"] / 60, p["epochs"], b["decode_seconds"], name, sets))
if not runs:
    sys.exit(0)
per_epoch, det, full_min, most, decode, name, sets = min(runs)
left, n = float(sys.argv[2]), int(sys.argv[3])
fixed = decode + 75.0                  # decode, model build + upload + capture, test scoring, Grad-CAM, report
share = (0.85 * left - 15) / n         # each config's share of the time left
print(max(0, min(most, int((share - fixed) / per_epoch))), f"{per_epoch:.2f}", f"{full_min:.1f}", det, name, sets or ",")
EOF
)
read -r RUN_EPOCHS PER_EPOCH FULL_MIN DET VNAME VSETS <<< "$plan"
if [[ -z "${FULL_MIN:-}" ]]; then
    RUN_EPOCHS=$FALLBACK_EPOCHS DET=true VNAME=default VSETS=,
    say "no projection from the benches: protocol runs of $RUN_EPOCHS epochs, deterministic"
else
    say "fastest bench: $VNAME, deterministic $DET, ${PER_EPOCH}s per protocol epoch, full protocol projected at ${FULL_MIN} min -> $RUN_EPOCHS epochs per config"
fi
sets_of "$VSETS"; variant_sets=("${SETS[@]}")

for config in "${configs[@]}"; do
    name=$(basename "$config" .toml)
    if [[ "$RUN_EPOCHS" -lt 1 ]]; then
        say "protocol run $name skipped: not even one epoch fits the $(left)s left"
        continue
    fi
    say "protocol run: $config, run.parallel $PARALLEL ($MODE, $VNAME), $RUN_EPOCHS epochs, deterministic $DET ($(left)s left)"
    warmup=()  # the recipe's warm-up (5 of 100 epochs) shrinks with its epochs; the paper has none
    [[ "$name" == train-public ]] && warmup=(--set "optim.warmup_epochs=$(( RUN_EPOCHS / 20 ))")
    T0=$(date +%s)
    limit=$(( $(left) - 10 )); [[ "$config" == "${configs[-1]}" ]] || limit=$(( limit / 2 + 30 ))
    timeout "$limit" "$PY" -m training train --config "$config" --data "$DATA" --out "$WORK/$name" \
        --set "model.init=$INIT" --set "optim.epochs=$RUN_EPOCHS" --set "run.device=$DEVICE" \
        --set "run.parallel=$PARALLEL" --set "run.parallel_mode=$MODE" --set "run.num_workers=$THREADS" \
        --set "run.deterministic=$DET" --set "run.checkpoint_every=100000" "${variant_sets[@]}" \
        "${warmup[@]}" "${train_sets[@]}" > "$WORK/$name.log" 2>&1
    rc=$?
    say "protocol run $name exit $rc after $(( $(date +%s) - T0 ))s"
    [[ $rc == 0 ]] || tail -20 "$WORK/$name.log" | tee -a "$OUT/summary.txt"
    grep -E "grouped|left out|test:|done in" "$WORK/$name/train.log" 2>/dev/null | head -12 | tee -a "$OUT/summary.txt"
done
(cd "$WORK" && tar czf "$OUT/train-metrics.tar.gz" ./*/metrics.json 2>/dev/null)
(cd "$WORK" && tar czf "$OUT/train-runs.tar.gz" ./*/train.log ./*/report.md ./*/plots ./*/gradcam ./*/splits ./*/predictions 2>/dev/null)
say "gpu-check done"
