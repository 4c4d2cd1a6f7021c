#!/usr/bin/env bash
# Stage a shared data set inside the checkout so that a lent GPU machine receives it:
# `../shared` beside the checkout does not travel with a device call, a folder of the
# checkout that git ignores does when the call names it in `carry`.
#
# usage: deploy/gpu-data.sh [SHARED_DATASETS=../shared/datasets] [NAME=public-cxr-plus]
# Copies NAME and every data set its manifest points into (public-cxr-plus -> ../public-cxr)
# to .gpu-data/<name>/ (relative paths kept), adds /.gpu-data/ to .git/info/exclude and prints
# the folders with their sizes. One call carries at most 64 MiB with the checkout: public-cxr
# (45 MB) and public-cxr-plus (23 MB) travel in two calls on the same warm machine (ignored
# files a call left there stay for the next one):
#   1. carry [".gpu-data/public-cxr", ...wheels]      command: ls .gpu-data/public-cxr/images | wc -l
#   2. carry [".gpu-data/public-cxr-plus", ...]       command: deploy/gpu-check.sh .gpu-data/public-cxr-plus "$OUT/gpu" 500
# MAX_SIDE=N (environment) instead shrinks every copied image so that its longest side is at
# most N px (area interpolation; PNG stays lossless PNG, JPEG is re-encoded at quality 95), file
# names and manifest unchanged, so that everything travels in ONE call: MAX_SIDE=320 makes
# public-cxr + public-cxr-plus about 30 MB. The model sees 224 px letterboxed squares either way,
# but pixel values differ slightly from letterboxing the full-resolution files: say so with results.
set -euo pipefail
SRC=${1:-../shared/datasets}
NAME=${2:-public-cxr-plus}
cd "$(dirname "$0")/.."
[[ -f "$SRC/$NAME/manifest.csv" ]] || { echo "gpu-data: $SRC/$NAME/manifest.csv not found" >&2; exit 1; }
grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
mkdir -p .gpu-data
# the data sets the manifest reaches through ../<set>/ (first path component after ../)
deps=$(cut -d, -f1 "$SRC/$NAME/manifest.csv" | sed -n 's#^\.\./\([^/]*\)/.*#\1#p' | sort -u)
for set in "$NAME" $deps; do
    rm -rf ".gpu-data/$set"
    cp -r "$SRC/$set" ".gpu-data/$set"
    chmod -R u+w ".gpu-data/$set"
    if [[ -n "${MAX_SIDE:-}" ]]; then
        "${PYTHON:-python3}" - ".gpu-data/$set" "$MAX_SIDE" <<'EOF'
import sys
from pathlib import Path

import cv2

folder, most = Path(sys.argv[1]), int(sys.argv[2])
shrunk = 0
for path in sorted(folder.rglob("*")):
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        continue
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        sys.exit(f"gpu-data: {path}: unreadable image")
    h, w = img.shape[:2]
    if max(h, w) <= most:
        continue
    scale = most / max(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if path.suffix.lower() == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 95]
    if not cv2.imwrite(str(path), small, params):
        sys.exit(f"gpu-data: {path}: could not write the shrunk copy")
    shrunk += 1
print(f"gpu-data: {folder}: {shrunk} image(s) shrunk to a longest side of {most} px")
EOF
    fi
    echo "$(du -sb ".gpu-data/$set" | cut -f1) bytes  .gpu-data/$set"
done
