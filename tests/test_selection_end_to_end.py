"""Right image in, right result out, with real peers: DCMTK dcmsend -> `cxr-node serve` -> real Orthanc.

Real public chest radiographs (public-cxr-plus) wrapped in the CR/DX headers portable units
send at English-, Spanish-, Portuguese-, Italian-, French- and German-speaking sites: AP, PA,
empty view, a first exposure and its repeat, chest written TORAX / TÓRAX / TORACE or only in
the descriptions, laterals coded and in words ("Thorax lat", PERFIL, LATERALE, profil), a rib
oblique coded CHEST, a KUB and a portable abdomen without a body part, a PA coded view with
"lat" in words, children by PatientAge in practice forms and by birth date only, an adult
whose age nothing states, a DX For Processing image and an unlisted manufacturer with the
allow-list switched on - all in one study and one association. Exactly the eligible images
come back, one SR + SC each, each computed from and referencing its own image; the rest are
recorded as skipped with their rule and the header bits an operator recognises them by; the
database holds exactly the SOP Instance UIDs the PACS holds.
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

NO_BODY_PART_OR_VIEW = {"BodyPartExamined": None, "ViewPosition": None}

# name -> (SOP class, header attributes (None: removed), rule expected to decide)
CASES = {
    "ap": (CR, {"ViewPosition": "AP"}, "default"),
    "pa": (DX_PRESENTATION, {"ViewPosition": "PA", "Modality": "DX"}, "default"),
    "empty-view": (CR, {"ViewPosition": "", "BodyPartExamined": ""}, "default"),
    "first": (CR, {"ViewPosition": "AP", "InstanceNumber": 1}, "default"),
    "repeat": (CR, {"ViewPosition": "AP", "InstanceNumber": 2}, "default"),
    "lateral": (CR, {"ViewPosition": "LATERAL"}, "lateral-view"),
    "abdomen": (CR, {"ViewPosition": "AP", "BodyPartExamined": "ABDOMEN"}, "not-chest"),
    "for-processing": (
        DX_PROCESSING,
        {"ViewPosition": "AP", "Modality": "DX", "PresentationIntentType": "FOR PROCESSING"},
        "for-processing-class",
    ),
    "acme": (CR, {"ViewPosition": "AP", "Manufacturer": "Acme Imaging"}, "manufacturer-not-allowed"),
    # issue 20: the words of real sites
    "es-torax": (CR, {"BodyPartExamined": "TORAX", "ViewPosition": "AP", "PatientAge": "067Y"}, "default"),
    "es-portatil-words": (
        CR,
        {
            "BodyPartExamined": "TÓRAX",
            "ViewPosition": "",
            "StudyDescription": "RX TORAX PORTATIL",
            "SeriesDescription": "TÓRAX AP",
        },
        "default",
    ),
    "pt-torax-pa": (DX_PRESENTATION, {"Modality": "DX", "BodyPartExamined": "TÓRAX", "ViewPosition": "PA"}, "default"),
    "it-torace": (CR, {"BodyPartExamined": "TORACE", "ViewPosition": "AP"}, "default"),
    "de-words-only": (CR, {**NO_BODY_PART_OR_VIEW, "ProtocolName": "Thorax p.a."}, "default"),
    "no-age": (CR, {"BodyPartExamined": "", "StudyDescription": "PORT CHEST", "PatientBirthDate": None}, "default"),
    "de-thorax-lat": (CR, {**NO_BODY_PART_OR_VIEW, "SeriesDescription": "Thorax lat"}, "lateral-view"),
    "es-perfil": (
        CR,
        {"BodyPartExamined": "TORAX", "ViewPosition": "", "ProtocolName": "TORAX PERFIL"},
        "lateral-view",
    ),
    "it-laterale": (CR, {"BodyPartExamined": "TORACE", "SeriesDescription": "TORACE LATERALE"}, "lateral-view"),
    "fr-profil": (CR, {"BodyPartExamined": "THORAX", "SeriesDescription": "Thorax profil"}, "lateral-view"),
    "es-costillas": (
        CR,
        {"BodyPartExamined": "CHEST", "ViewPosition": "", "SeriesDescription": "Costillas oblicua"},
        "body-part-conflict",
    ),
    "en-kub": (CR, {**NO_BODY_PART_OR_VIEW, "StudyDescription": "KUB"}, "not-chest"),
    "es-abdomen-portatil": (
        CR,
        {"BodyPartExamined": "", "ViewPosition": "", "ProtocolName": "ABDOMEN PORTATIL"},
        "not-chest",
    ),
    "pa-but-lat": (CR, {"ViewPosition": "PA", "SeriesDescription": "lat"}, "view-conflict"),
    "child-17Y": (CR, {"BodyPartExamined": "TORAX", "PatientAge": "17Y"}, "paediatric"),
    "child-017": (CR, {"BodyPartExamined": "TORAX", "PatientAge": "017"}, "paediatric"),
    "child-birth-date": (CR, {"BodyPartExamined": "TORAX", "PatientBirthDate": "20150301"}, "paediatric"),
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
    for (name, (sop_class, attrs, _)), png in zip(CASES.items(), _nih_images(root, len(CASES)), strict=True):
        grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        assert grey is not None, png
        header = {
            "Manufacturer": "Agfa",
            "ManufacturerModelName": "DR 100E",
            "SeriesNumber": 1,
            "AccessionNumber": f"ACC-{len(files)}",
            **attrs,
        }
        ds = make_radiograph(
            grey,
            bits_stored=8,
            sop_class=sop_class,
            study_uid=study,
            **{k: v for k, v in header.items() if v is not None},
        )
        for keyword in [k for k, v in header.items() if v is None and k in ds]:
            delattr(ds, keyword)
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
    cfg.write_text(
        shipped.replace(
            "enabled = false\nreason = \"the modality's manufacturer",
            "enabled = true\nreason = \"the modality's manufacturer",
        )
    )

    # `rules test` on the same files says what the node will do.
    tested = subprocess.run(
        [*CLI, "rules", "test", "--config", str(cfg), "--json", *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stderr
    verdicts = {Path(d["file"]).stem: d["rule"] for d in map(json.loads, tested.stdout.splitlines())}
    assert verdicts == {name: rule for name, (_, _, rule) in CASES.items()}

    node = ServeProcess(tmp_path, orthanc, extra=["--config", str(cfg)]).start()
    try:
        sent = subprocess.run(
            # -ma: every image in one association, as a modality sends a study
            [
                peers.find_program("dcmsend"),
                "-ma",
                "-aet",
                "MOBILE_DR",
                "-aec",
                node.ae_title,
                "127.0.0.1",
                str(node.port),
                *map(str, files.values()),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr  # every image acknowledged, skipped ones too

        found = results_at(orthanc, study, 2 * len(ELIGIBLE), timeout_s=900)
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
        words = " ".join(str(e.value) for e in ds.iterall() if e.keyword in ("TextValue", "CodeMeaning")).lower()
        if ds.Modality == "SR" and source == uid["empty-view"]:
            assert "view not stated" in words, words
        if ds.Modality == "SR":  # the age note only where nothing states the age
            assert ("age not stated" in words) == (source == uid["no-age"]), words
    assert {s: sorted(m) for s, m in by_source.items()} == {uid[n]: ["OT", "SR"] for n in ELIGIBLE}

    with db.connect() as conn:
        jobs = dict(
            conn.execute(
                text(
                    "select i.sop_instance_uid, j.state || ':' || coalesce(j.rule, '') from jobs j "
                    "join instances i on i.id = j.instance_id"
                )
            ).all()
        )
        results = dict(conn.execute(text("select sop_instance_uid, id from results")).all())
        exported = set(conn.execute(text("select sop_instance_uid from exports where state = 'sent'")).scalars())
        reasons = dict(
            conn.execute(
                text(
                    "select i.sop_instance_uid, j.reason from jobs j join instances i on i.id = j.instance_id "
                    "where j.state = 'skipped'"
                )
            ).all()
        )
        seen = {
            row[0]: tuple(row[1:])
            for row in conn.execute(
                text(
                    "select sop_instance_uid, accession_number, modality, study_description, series_description "
                    "from instances"
                )
            ).all()
        }
    assert jobs == {uid[n]: ("done:default" if r == "default" else f"skipped:{r}") for n, (_, _, r) in CASES.items()}
    assert set(results) == {uid[n] for n in ELIGIBLE}
    assert "LATERAL" in reasons[uid["lateral"]] and "ABDOMEN" in reasons[uid["abdomen"]]
    # The deciding attribute is named; a conflict names both.
    assert "SeriesDescription 'Thorax lat'" in reasons[uid["de-thorax-lat"]]
    assert "BodyPartExamined 'CHEST'" in reasons[uid["es-costillas"]]
    assert "SeriesDescription 'Costillas oblicua'" in reasons[uid["es-costillas"]]
    assert "PatientBirthDate 20150301" in reasons[uid["child-birth-date"]]
    # What an operator recognises each image by, recorded at receipt.
    names = list(CASES)
    assert seen[uid["en-kub"]] == (f"ACC-{names.index('en-kub')}", "CR", "KUB", None)
    assert seen[uid["de-thorax-lat"]][1:] == ("CR", None, "Thorax lat")
    # What the database says was sent is exactly what the PACS holds.
    assert exported == {i["Tags"]["SOPInstanceUID"] for i in found}


def _exports_settled(engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from exports where state = 'pending'")).scalar() == 0
