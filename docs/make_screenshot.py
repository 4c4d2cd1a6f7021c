"""Redo docs/img/orthanc-*.png: RG1 + its SR and SC in a real Orthanc, shot with headless Chromium.

    .venv/bin/python docs/make_screenshot.py            # needs Debian orthanc and chromium

Starts a throw-away Orthanc on free loopback ports, builds the SR and SC for the real
radiograph RG1 (untrained model, synthetic Grad-CAM so the picture is reproducible),
sends all three by C-STORE, then screenshots Orthanc Explorer's study page (which lists
the CR, SC and SR series) and saves Orthanc's own rendering of the SC (/preview).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.data import get_testdata_file  # noqa: E402

from cxr_node.config import Destination  # noqa: E402
from cxr_node.dicom.sender import Sender, status_ok  # noqa: E402
from tests import peers  # noqa: E402
from tests.test_results_support import UNTRAINED, make_results  # noqa: E402

OUT = REPO / "docs" / "img"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=8000",
]


def shoot(url: str, png: Path, size: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not installed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="cxr-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size={size}", url], check=True, capture_output=True, timeout=120)


def lookup(orthanc: peers.Orthanc, uid: str) -> str:
    """Orthanc's resource ID for a DICOM UID (/tools/lookup takes the bare UID as body)."""
    req = urllib.request.Request(orthanc.url + "/tools/lookup", data=uid.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())[0]["ID"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cxr-screenshot-"))
    source_path = Path(get_testdata_file("RG1_UNCR.dcm"))
    orthanc = peers.start_orthanc(work / "orthanc")
    try:
        source, files = make_results(source_path, work / "results", "covid-disagree", model=UNTRAINED)
        outcomes = Sender("CXR_NODE").send_files(
            Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
            [str(source_path), str(files.sc_path), str(files.sr_path)],
        )
        assert all(status_ok(o.status) for o in outcomes), outcomes
        study = lookup(orthanc, source.StudyInstanceUID)
        sc = lookup(orthanc, files.sc_uid)
        shoot(f"{orthanc.url}/app/explorer.html#study?uuid={study}", OUT / "orthanc-study.png", "1100,620")
        # The SC as Orthanc renders it (what a viewer without SR support shows).
        (OUT / "orthanc-sc-preview.png").write_bytes(orthanc.get(f"/instances/{sc}/preview"))
        for png in sorted(OUT.glob("orthanc-*.png")):
            print(f"{png.relative_to(REPO)}  {png.stat().st_size // 1024} KB")
    finally:
        peers.stop_process(orthanc.process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
