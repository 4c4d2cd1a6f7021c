#!/usr/bin/env bash
# End-to-end studies/s on a GPU host (issue 22), measured in one time-boxed go:
#   1. `cxr-node bench decode` on RG1_J2KR: decode full vs reduced (wall and CPU s), CPU s per
#      study on the GPU (decode + analysis + SR/SC), and THROUGHPUT studies end to end through
#      the worker's path (decode pool of WORKERS processes -> process_batch in batches of BATCH:
#      analysis on DEVICE, SR/SC built and written), full and reduced decoding side by side;
#   2. the same on a unit-sized JPEG 2000 image (RG1 enlarged 2 x: 3910 x 3682, lossless, made
#      here), which the 960 px SC lets the node decode at 1/2 (RG1_J2KR itself, 1955 px, too:
#      its 1/2 level is 978 px);
#   3. the same throughput with fewer decode processes (WORKERS_SWEEP), to see where it bends.
# Results land in OUT_DIR: summary.txt (the text reports, machine, load), decode-*.json.
#
# usage: deploy/gpu-decode-bench.sh OUT_DIR [SECONDS=480]
#   Runs from the repository root with $PYTHON (default python3) importing cxr-node. Knobs
#   (environment): DEVICE (cuda), THROUGHPUT (studies per variant, 200), BATCH (16), WORKERS
#   (CPUs - 1), WORKERS_SWEEP ("4 8"; empty: none), MODELS (a bundle dir; default untrained
#   weights, same cost), STUDIES (per-study rounds, 5).
#   Needs libopenjp2 (Debian libopenjp2-7) for reduced JPEG 2000 decoding; without it the
#   "serving" figures are full decodes and summary.txt says so.
#   Dry run on a CPU (minutes): DEVICE=cpu THROUGHPUT=4 BATCH=2 WORKERS=1 WORKERS_SWEEP= STUDIES=1 \
#     deploy/gpu-decode-bench.sh /tmp/gpu-decode-dry 900
set -uo pipefail
OUT=${1:?usage: deploy/gpu-decode-bench.sh OUT_DIR [SECONDS]}
BUDGET=${2:-480}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
THROUGHPUT=${THROUGHPUT:-200}
BATCH=${BATCH:-16}
CPUS=$(nproc)
WORKERS=${WORKERS:-$(( CPUS > 1 ? CPUS - 1 : 1 ))}
WORKERS_SWEEP=${WORKERS_SWEEP-4 8}
STUDIES=${STUDIES:-5}
models=(); [[ -n "${MODELS:-}" ]] && models=(--models "$MODELS")
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

say "gpu-decode-bench: device $DEVICE, $CPUS CPUs, throughput $THROUGHPUT studies, batch $BATCH, $WORKERS decode processes"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())'
  "$PY" -c 'from cxr_node.decoding import openjp2; print("libopenjp2", openjp2.version() if openjp2.available() else "NOT FOUND: reduced JPEG 2000 decoding falls back to full")'
  lscpu | grep -E "^Model name|^CPU\(s\)"
  echo "loadavg $(cat /proc/loadavg)"
} 2>&1 | tee -a "$OUT/summary.txt"

WORK=$(mktemp -d /tmp/cxr-gpu-decode.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
BIG="$WORK/rg1-x2-j2k.dcm"
"$PY" - "$BIG" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import sys
import cv2, numpy as np, pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, generate_uid
ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
a = ds.pixel_array.astype(np.float32)
big = cv2.resize(a, (a.shape[1] * 2, a.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
big = np.clip(np.rint(big), 0, 2 ** int(ds.BitsStored) - 1).astype(np.uint16)
ds.Rows, ds.Columns = big.shape
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
ds.PixelData = big.tobytes()
ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
ds.save_as(sys.argv[1], enforce_file_format=True)
print(f"made {sys.argv[1]}: {ds.Rows} x {ds.Columns}, JPEG 2000 lossless")
PYEOF

run() {  # run NAME WORKERS THROUGHPUT STUDIES [IMAGE]
    local name=$1 workers=$2 n=$3 studies=$4 image=${5:-} limit
    local img=(); [[ -n "$image" ]] && img=(--image "$image")
    limit=$(left)
    if (( limit < 30 )); then say "$name: skipped, ${limit}s left"; return; fi
    say "$name: bench decode --throughput $n --workers $workers --studies $studies (timeout ${limit}s)"
    timeout "$limit" "$PY" -m cxr_node.cli bench decode --device "$DEVICE" "${models[@]}" "${img[@]}" --repeats 5 \
        --studies "$studies" --throughput "$n" --batch "$BATCH" --workers "$workers" --cores "$CPUS" \
        --out "$OUT/decode-$name.json" >> "$OUT/summary.txt" 2>&1 || say "$name: exit $?"
    echo "loadavg $(cat /proc/loadavg)" >> "$OUT/summary.txt"
}

run "rg1-w$WORKERS" "$WORKERS" "$THROUGHPUT" "$STUDIES"
[[ -f "$BIG" ]] && run "big-w$WORKERS" "$WORKERS" "$THROUGHPUT" "$STUDIES" "$BIG"
for w in $WORKERS_SWEEP; do
    (( w < WORKERS )) && [[ -f "$BIG" ]] && run "big-w$w" "$w" "$THROUGHPUT" 0 "$BIG"
done
say "done"
