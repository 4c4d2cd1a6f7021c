#!/usr/bin/env bash
# Idempotent set-up on Debian 12 with Python 3.11: a venv in .venv with cxr-node installed,
# and (with --peers) the Debian programs the tests talk to.
#   deploy/bootstrap.sh            python side only (enough for `cxr-node demo`)
#   deploy/bootstrap.sh --peers    also dcmtk, orthanc, dicom3tools, postgresql, pixelmed-apps
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# x86_64 wheels of these lie on the build machines' disk; elsewhere pip fetches them from PyPI.
TORCH_PINS=${TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}
# The exact versions the tests passed with (regenerate: `make lock`); pyproject keeps the ranges.
CONSTRAINTS=${CONSTRAINTS:-deploy/constraints.txt}
DEBIAN_PACKAGES=${DEBIAN_PACKAGES:-"libopenjp2-7 dcmtk orthanc orthanc-dicomweb orthanc-webviewer dicom3tools postgresql pixelmed-apps chromium systemd openssl"}

if [[ "${1:-}" == "--peers" ]]; then
  missing=()
  for pkg in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    # The orthanc and postgresql packages try to start system services; the tests start their own.
    echo exit 101 | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    $SUDO rm -f /usr/sbin/policy-rc.d
  fi
fi

pip_install() {
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check "$@" >"$VENV/pip.log" 2>&1; then
    grep -v "is ignored" "$VENV/pip.log" >&2; echo "bootstrap: pip install $* failed" >&2; exit 1
  fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "bootstrap: creating $VENV"
  if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null && command -v apt-get >/dev/null; then
    # Debian's own python3 ships venv/ensurepip in a separate package.
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.cxr-node-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || "$CONSTRAINTS" -nt "$stamp" ]]; then
  echo "bootstrap: installing torch ($TORCH_PINS) and cxr-node into $VENV (a few minutes the first time)"
  # One resolver pass; bytecode compiled afterwards on every core (pip compiles file by file on
  # one; 89 s instead of ~115 s on the 2-core VM, 2026-12-05). Like pip, a file that does not
  # compile under this Python (torch ships a 3.12-only test module) is left to import-time errors.
  pip_install --no-compile -c "$CONSTRAINTS" $TORCH_PINS -e ".[test,postgres,train]"
  "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >>"$VENV/pip.log" 2>&1 || true
  "$VENV/bin/python" -c "import cxr_node, torch, torchvision, highdicom, pynetdicom" 
  touch "$stamp"
fi
