"""Redo the pictures in docs/img/ for docs/results.md, with real peers and headless Chromium.

    .venv/bin/python docs/make_screenshot.py    # needs Debian orthanc, orthanc-webviewer, dcmtk, chromium

Builds the SR and SC for the real radiograph RG1 (untrained model, synthetic Grad-CAM so
the picture is reproducible), one study per class (COVID-19 with the models disagreeing,
Pathological, Normal), then:
  sr-dsr2html.png          the COVID-19 SR as DCMTK's dsr2html renders it
  orthanc-webviewer-sc.png the COVID-19 SC in the Orthanc Web Viewer (plugin loaded into a
                           throw-away Orthanc); -pathological.png and -normal.png the others
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

import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from cxr_node.config import Destination  # noqa: E402
from cxr_node.dicom.sender import Sender  # noqa: E402
from cxr_node.dicom.status import status_ok  # noqa: E402
from cxr_node.results.identity import derived_uid  # noqa: E402
from tests import peers  # noqa: E402
from tests.test_results_support import UNTRAINED, make_results, source_copy  # noqa: E402

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


# One study per class (RG1 copied under new UIDs for the second and third), untrained model and
# synthetic maps, so the pictures are reproducible; RG1 states no PatientAge, hence the note.
CASES = ("covid-disagree", "pathological", "normal")
NOTES = ["patient age not stated"]


def case_source(source_path: Path, case: str, work: Path) -> Path:
    if case == CASES[0]:
        return source_path
    ds = source_copy(source_path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, derived_uid("screenshot", case, keyword))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = f"DOC-{case[:4].upper()}"
    path = work / f"{case}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cxr-screenshot-"))
    rg1 = Path(get_testdata_file("RG1_UNCR.dcm"))
    try:
        made = {}
        for case in CASES:
            path = case_source(rg1, case, work)
            source = pydicom.dcmread(path)
            made[case] = (path, *make_results(rg1, work / case, case, model=UNTRAINED, source=source, notes=NOTES))
        _, source, files = made[CASES[0]]
        # The SR as DCMTK renders it.
        html = work / "sr.html"
        subprocess.run([program("dsr2html", "dcmtk"), str(files.sr_path), str(html)], check=True, timeout=60)
        shoot(html.as_uri(), OUT / "sr-dsr2html.png", "1000,1500", wait_ms=2000)
        plugin = peers.orthanc_plugin("libOrthancWebViewer", "orthanc-webviewer")
        orthanc = peers.start_orthanc(work / "orthanc", plugins=(plugin,))
        try:
            for path, _, files in made.values():
                outcomes = Sender("CXR_NODE").send_files(
                    Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port),
                    [str(path), str(files.sc_path), str(files.sr_path)],
                )
                assert all(status_ok(o.status) for o in outcomes), outcomes
            for case, (_, _, files) in made.items():
                sc = lookup(orthanc, files.sc_uid)["ID"]
                sc_series = orthanc.get_json(f"/instances/{sc}")["ParentSeries"]
                name = "orthanc-webviewer-sc.png" if case == CASES[0] else f"orthanc-webviewer-sc-{case}.png"
                # 1600 x 900: a 16:9 reading screen's viewport, where the radiograph is shown at full height.
                shoot(f"{orthanc.url}/web-viewer/app/viewer.html?series={sc_series}", OUT / name, "1600,900",
                      wait_ms=15000)
            study = lookup(orthanc, source.StudyInstanceUID)["ID"]
            sc = lookup(orthanc, files.sc_uid)["ID"]
            shoot(f"{orthanc.url}/app/explorer.html#study?uuid={study}", OUT / "orthanc-study.png", "1100,620")
            (OUT / "orthanc-sc-preview.png").write_bytes(orthanc.get(f"/instances/{sc}/preview"))
        finally:
            peers.stop_process(orthanc.process)
        pictures = ["sr-dsr2html.png", "orthanc-webviewer-sc.png", "orthanc-study.png", "orthanc-sc-preview.png"]
        pictures += [f"orthanc-webviewer-sc-{case}.png" for case in CASES[1:]]
        for png in pictures:
            print(f"docs/img/{png}  {(OUT / png).stat().st_size // 1024} KB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
