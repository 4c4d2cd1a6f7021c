"""Redo the pictures in docs/img/ for docs/results.md, with real peers and headless Chromium.

    .venv/bin/python docs/make_screenshot.py    # needs Debian orthanc, orthanc-webviewer, dcmtk, chromium

Builds the SR and SC for the real radiograph RG1 (untrained model, synthetic Grad-CAM so
the picture is reproducible), then:
  sr-dsr2html.png          the SR as DCMTK's dsr2html renders it
  orthanc-webviewer-sc.png the SC in the Orthanc Web Viewer (plugin loaded into a throw-away Orthanc)
  orthanc-study.png        Orthanc Explorer's study page (the CR, SC and SR series)
  orthanc-sc-preview.png   Orthanc's own rendering of the SC (/preview)
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
    "--hide-scrollbars",
]


def program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not installed: apt-get install -y {package}")
    return path


def shoot(url: str, png: Path, size: str, wait_ms: int = 8000) -> None:
    chromium = shutil.which("chromium") or program("chromium-browser", "chromium")
    with tempfile.TemporaryDirectory(prefix="cxr-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--virtual-time-budget={wait_ms}", f"--user-data-dir={profile}",
                        f"--screenshot={png}", f"--window-size={size}", url], check=True, capture_output=True, timeout=180)


def lookup(orthanc: peers.Orthanc, uid: str) -> dict:
    """Orthanc's resource for a DICOM UID (/tools/lookup takes the bare UID as body)."""
    req = urllib.request.Request(orthanc.url + "/tools/lookup", data=uid.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())[0]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cxr-screenshot-"))
    source_path = Path(get_testdata_file("RG1_UNCR.dcm"))
    try:
        source, files = make_results(source_path, work / "results", "covid-disagree", model=UNTRAINED)
        # The SR as DCMTK renders it.
        html = work / "sr.html"
        subprocess.run([program("dsr2html", "dcmtk"), str(files.sr_path), str(html)], check=True, timeout=60)
        shoot(html.as_uri(), OUT / "sr-dsr2html.png", "1000,1500", wait_ms=2000)
        plugin = peers.orthanc_plugin("libOrthancWebViewer", "orthanc-webviewer")
        orthanc = peers.start_orthanc(work / "orthanc", plugins=(plugin,))
        try:
            outcomes = Sender("CXR_NODE").send_files(
                Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
                [str(source_path), str(files.sc_path), str(files.sr_path)],
            )
            assert all(status_ok(o.status) for o in outcomes), outcomes
            study = lookup(orthanc, source.StudyInstanceUID)["ID"]
            sc = lookup(orthanc, files.sc_uid)["ID"]
            sc_series = orthanc.get_json(f"/instances/{sc}")["ParentSeries"]
            shoot(f"{orthanc.url}/web-viewer/app/viewer.html?series={sc_series}", OUT / "orthanc-webviewer-sc.png",
                  "1200,900", wait_ms=15000)
            shoot(f"{orthanc.url}/app/explorer.html#study?uuid={study}", OUT / "orthanc-study.png", "1100,620")
            (OUT / "orthanc-sc-preview.png").write_bytes(orthanc.get(f"/instances/{sc}/preview"))
        finally:
            peers.stop_process(orthanc.process)
        for png in ("sr-dsr2html.png", "orthanc-webviewer-sc.png", "orthanc-study.png", "orthanc-sc-preview.png"):
            print(f"docs/img/{png}  {(OUT / png).stat().st_size // 1024} KB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
