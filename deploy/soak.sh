#!/usr/bin/env bash
# Soak test of the node (issue 11): load, kill -9 rounds, PACS outage, disk full, PostgreSQL restart,
# hostile connections and malformed images; prints a Markdown table acknowledged / delivered / lost /
# duplicated per scenario (lost and duplicated must be 0) and exits 1 when any is not.
#
# usage: deploy/soak.sh [--senders 4] [--studies 25] [--kill-rounds 5] [--per-round 8] [--outage 20]
#                       [--wait 900] [--only SCENARIO]... [--keep]
#   Runs from the repository root with .venv (or $PYTHON). Needs the Debian peers (dcmtk, orthanc,
#   postgresql); disk_full mounts a 64 MiB tmpfs and so needs root (otherwise it says NOT RUN).
#   hostile_pixels runs the node in a 4 GiB memory cgroup (v2, else v1, else systemd-run --scope;
#   tests/memlimit.py) and says in its notes which one, or that none was available.
#   The full default run analyses ~170 images on the CPU with untrained models: about 30-60 min on
#   2 cores. A small run: deploy/soak.sh --studies 5 --kill-rounds 3 --per-round 4 --outage 10
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" deploy/soak.py "$@"
