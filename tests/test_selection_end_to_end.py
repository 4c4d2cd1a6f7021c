"""Right image in, right result out, with real peers: DCMTK dcmsend -> `cxr-node serve` -> real Orthanc.

Real public chest radiographs (public-cxr-plus) wrapped in the CR/DX headers a portable unit
sends: AP, PA, empty view, a first exposure and its repeat, a lateral, an abdomen, a DX For
Processing image and an unlisted manufacturer with the allow-list switched on, all in one
study and one association. Exactly the eligible images come back, one SR + SC each, each
computed from and referencing its own image; the rest are recorded as skipped with their rule;
the database holds exactly the SOP Instance UIDs the PACS holds.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import cv2
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from tests import peers
from tests.dicom_factory import make_radiograph
from tests.test_end_to_end import CLI, ServeProcess, results_at

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

# name -> (SOP class, header attributes, rule expected to decide)
CASES = {
    "ap": (CR, {"ViewPosition": "AP"}, "default"),
    "pa": (DX_PRESENTATION, {"ViewPosition": "PA", "Modality": "DX"}, "default"),
    "empty-view": (CR, {"ViewPosition": "", "BodyPartExamined": ""}, "default"),
    "first": (CR, {"ViewPosition": "AP", "InstanceNumber": 1}, "default"),
    "repeat": (CR, {"ViewPosition": "AP", "InstanceNumber": 2}, "default"),
    "lateral": (CR, {"ViewPosition": "LATERAL"}, "lateral-view"),
    "abdomen": (CR, {"ViewPosition": "AP", "BodyPartExamined": "ABDOMEN"}, "not-chest"),
    "for-processing": (DX_PROCESSING, {"ViewPosition": "AP", "Modality": "DX",
                                       "PresentationIntentType": "FOR PROCESSING"}, "for-processing-class"),
    "acme": (CR, {"ViewPosition": "AP", "Manufacturer": "Acme Imaging"}, "manufacturer-not-allowed"),
}
ELIGIBLE = [name for name, (_, _, rule) in CASES.items() if rule == "default"]


def _nih_images(root: Path, n: int) -> list[Path]:
    with open(root / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if "nih-" in r["image"]]
    return [(root / r["image"]).resolve() for r in rows[:n]]


def build_cases(root: Path, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    files = {}
    for (name, (sop_class, attrs, _)), png in zip(CASES.items(), _nih_images(root, len(CASES))):
        grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        assert grey is not None, png
        header = {"Manufacturer": "Agfa", "ManufacturerModelName": "DR 100E", "SeriesNumber": 1, **attrs}
        ds = make_radiograph(grey, bits_stored=8, sop_class=sop_class, study_uid=study, **header)
        files[name] = out / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    return files


def _referenced_uids(ds) -> set[str]:
    found = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            found.add(str(elem.value))
    return found


def test_only_eligible_images_get_one_result_each(tmp_path, orthanc, public_cxr_plus):
    files = build_cases(public_cxr_plus, tmp_path / "in")
    uid = {name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for name, p in files.items()}
    study = str(pydicom.dcmread(files["ap"], stop_before_pixels=True).StudyInstanceUID)

    # The shipped config with the manufacturer allow-list switched on (its one line).
    shipped = (Path(__file__).resolve().parents[1] / "configs" / "node.toml").read_text()
    cfg = tmp_path / "node.toml"
    cfg.write_text(shipped.replace('enabled = false\nreason = "the modality\'s manufacturer',
                                   'enabled = true\nreason = "the modality\'s manufacturer'))

    # `rules test` on the same files says what the node will do.
    tested = subprocess.run([*CLI, "rules", "test", "--config", str(cfg), "--json", *map(str, files.values())],
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stderr
    verdicts = {Path(d["file"]).stem: d["rule"] for d in map(json.loads, tested.stdout.splitlines())}
    assert verdicts == {name: rule for name, (_, _, rule) in CASES.items()}

    node = ServeProcess(tmp_path, orthanc, extra=["--config", str(cfg)]).start()
    try:
        sent = subprocess.run(
            [peers.find_program("dcmsend"), "-aet", "MOBILE_DR", "-aec", node.ae_title, "127.0.0.1", str(node.port),
             *map(str, files.values())], capture_output=True, text=True, timeout=180)
        assert sent.returncode == 0, sent.stdout + sent.stderr  # every image acknowledged, skipped ones too

        found = results_at(orthanc, study, 2 * len(ELIGIBLE))
        db = create_engine(f"sqlite:///{node.storage / 'cxr-node.db'}")
        peers.wait_until(lambda: _exports_settled(db), 60, "exports sent")
        assert node.stop() == 0, node.log()
    finally:
        if node.proc.poll() is None:
            node.stop()

    # Nothing else reached the PACS: one SR and one SC per eligible image.
    found = orthanc.instances_in_study(study)
    assert sorted(i["Tags"]["Modality"] for i in found) == sorted(["SR", "OT"] * len(ELIGIBLE))
    by_source: dict[str, list[str]] = {}
    for item in found:
        ds = pydicom.dcmread(__import__("io").BytesIO(orthanc.get(f"/instances/{item['ID']}/file")))
        refs = _referenced_uids(ds) & set(uid.values())
        assert len(refs) == 1, f"{ds.Modality} references {refs}: must name exactly its own source image"
        (source,) = refs
        by_source.setdefault(source, []).append(ds.Modality)
        if ds.Modality == "SR" and source == uid["empty-view"]:
            words = " ".join(str(e.value) for e in ds.iterall() if e.keyword in ("TextValue", "CodeMeaning"))
            assert "view not stated" in words.lower(), words
    assert {s: sorted(m) for s, m in by_source.items()} == {uid[n]: ["OT", "SR"] for n in ELIGIBLE}

    with db.connect() as conn:
        jobs = dict(conn.execute(text(
            "select i.sop_instance_uid, j.state || ':' || coalesce(j.rule, '') from jobs j "
            "join instances i on i.id = j.instance_id")).all())
        results = dict(conn.execute(text("select sop_instance_uid, id from results")).all())
        exported = set(conn.execute(text("select sop_instance_uid from exports where state = 'sent'")).scalars())
        reasons = dict(conn.execute(text(
            "select i.sop_instance_uid, j.reason from jobs j join instances i on i.id = j.instance_id "
            "where j.state = 'skipped'")).all())
    assert jobs == {uid[n]: ("done:default" if r == "default" else f"skipped:{r}") for n, (_, _, r) in CASES.items()}
    assert set(results) == {uid[n] for n in ELIGIBLE}
    assert "LATERAL" in reasons[uid["lateral"]] and "ABDOMEN" in reasons[uid["abdomen"]]
    # What the database says was sent is exactly what the PACS holds.
    assert exported == {i["Tags"]["SOPInstanceUID"] for i in found}


def _exports_settled(engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from exports where state = 'pending'")).scalar() == 0
