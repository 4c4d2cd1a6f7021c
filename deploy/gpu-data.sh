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
    echo "$(du -sb ".gpu-data/$set" | cut -f1) bytes  .gpu-data/$set"
done
