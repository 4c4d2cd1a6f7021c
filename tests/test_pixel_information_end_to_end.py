"""Images without information and odd headers, sent for real: pynetdicom -> `cxr-node serve`
-> real Orthanc, every image in one association and each in its own study.

Flat, 1 x 1, 3 x 4000 and RescaleSlope 0 images are acknowledged, recorded `not_analysable`
with a plain reason, and nothing about them reaches the PACS (no class anywhere); a 3 x 40000
sliver is refused at receipt (0xA900 naming Columns and the decoding budget). Broken VOI
LUT, WindowWidth 0, a non-numeric WindowCenter and a NaN RescaleSlope are decided, not failed:
they are analysed with the node's robust window and their SR says so. A good image in the same
association gets its result as usual.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from sqlalchemy import create_engine

from cxr_node.queue.reports import Reports
from tests import peers
from tests.dicom_factory import make_radiograph
from tests.test_end_to_end import CLI, ServeProcess, results_at

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def real_radiograph(rg1_uncr: Path, **attrs) -> Dataset:
    """pydicom-data's chest CR at a quarter of its size (real anatomy, light to analyse), own study."""
    src = pydicom.dcmread(rg1_uncr)
    return make_radiograph(
        src.pixel_array[::4, ::4],
        bits_stored=15,
        photometric="MONOCHROME1",
        **{"WindowCenter": 15000, "WindowWidth": 30000, **attrs},
    )


def with_raw(ds: Dataset, **raw: str) -> Dataset:
    """DS attributes holding text as a modality may send it (pydicom would refuse to set it)."""
    for keyword, text in raw.items():
        setattr(ds, keyword, "0")
        ds[keyword]._value = text
    return ds


def texts(ds: Dataset) -> list[str]:
    """Every TextValue in an SR's content tree."""
    out = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out.extend(texts(item))
    return out


def test_images_without_information_get_no_class_and_odd_headers_are_decided(rg1_uncr, orthanc, tmp_path):
    no_lut = Dataset()  # a VOI LUT item without LUTDescriptor / LUTData
    images = {
        "good": (real_radiograph(rg1_uncr), "done", None),
        "flat": (make_radiograph(np.full((256, 256), 1000)), "not_analysable", "every pixel shows the same grey"),
        "one-pixel": (make_radiograph(np.full((1, 1), 7)), "not_analysable", "image 1 x 1 pixels"),
        "sliver": (
            make_radiograph(np.random.default_rng(3).integers(0, 4096, (3, 4000))),
            "not_analysable",
            "image 3 x 4000 pixels",
        ),
        "long-sliver": (  # over the decoding budget: refused before it is acknowledged
            make_radiograph(np.random.default_rng(4).integers(0, 4096, (3, 40000))),
            "refused",
            "Columns 40000",
        ),
        "slope-zero": (
            real_radiograph(rg1_uncr, RescaleSlope=0, RescaleIntercept=0),
            "not_analysable",
            "RescaleSlope is 0",
        ),
        "broken-voi": (
            real_radiograph(rg1_uncr, VOILUTSequence=Sequence([no_lut])),
            "done",
            "window: the image's WindowCenter 15000 / WindowWidth 30000 LINEAR "
            "(VOI LUT (VOILUTSequence) ignored: it has no LUTDescriptor)",
        ),
        "width-zero": (
            real_radiograph(rg1_uncr, WindowWidth=0),
            "done",
            "window: node's robust window (WindowWidth 0 ignored)",
        ),
        "centre-text": (
            with_raw(real_radiograph(rg1_uncr), WindowCenter="abc"),
            "done",
            "window: node's robust window (WindowCenter 'abc' ignored)",
        ),
        "slope-nan": (
            with_raw(real_radiograph(rg1_uncr), RescaleSlope="NaN", RescaleIntercept="0"),
            "done",
            "RescaleSlope nan ignored",
        ),
    }
    files = []
    for name, (ds, _, _) in images.items():
        path = tmp_path / "send" / f"{name}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)

    node = ServeProcess(tmp_path, orthanc).start()
    try:
        # One association, as a modality's batch; the files as written (raw values stay raw).
        ae = AE(ae_title="MOBILE_DR")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        try:
            statuses = {
                name: assoc.send_c_store(pydicom.dcmread(path)) for name, path in zip(images, files, strict=True)
            }
        finally:
            assoc.release()
        for name, (_, state, words) in images.items():
            status = statuses[name]
            if state == "refused":
                assert status.Status == 0xA900 and words in status.ErrorComment, (name, status)
            else:
                assert status.Status == 0x0000, (name, status)
        analysed = {k: v for k, v in images.items() if v[1] != "refused"}
        reports = Reports(create_engine(f"sqlite:///{node.storage / 'cxr-node.db'}"))

        def settled():
            rows = reports.list_jobs(limit=100)
            done = all(r.state not in ("queued", "running") for r in rows)
            return rows if len(rows) == len(analysed) and done else None

        rows = {r.sop_instance_uid: r for r in peers.wait_until(settled, 300, "every job to end", interval_s=0.5)}
        for name, (ds, state, words) in analysed.items():
            row = rows[ds.SOPInstanceUID]
            assert row.state == state, (name, row.state, row.why, node.log())
            if state == "not_analysable":
                assert words in row.reason and row.label is None and row.attempts == 1, (name, row)
                assert "Traceback" not in row.reason and "object has no attribute" not in row.reason

        # Results of the analysed images reach the PACS; each SR says which window was used.
        for name, (ds, state, words) in analysed.items():
            if state != "done":
                continue
            found = results_at(orthanc, ds.StudyInstanceUID, 2)
            (sr_item,) = [i for i in found if i["Tags"]["Modality"] == "SR"]
            sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{sr_item['ID']}/file")))
            notes = " | ".join(texts(sr))
            if words is None:
                assert "ignored" not in notes, (name, notes)
            else:
                assert words in notes, (name, notes)
        # ... and nothing at all for the images without information: no SR, no SC, no class.
        for name, (ds, state, _) in images.items():
            if state in ("not_analysable", "refused"):
                assert orthanc.instances_in_study(ds.StudyInstanceUID) == [], name

        listed = subprocess.run(
            [*CLI, "jobs", "list", "--state", "not_analysable", "--json", "--db", str(reports.engine.url)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        codes = sorted(r["reason_code"] for r in json.loads(listed.stdout))
        assert codes == ["no-contrast", "rescale-slope-zero", "too-small", "too-small"], codes
        assert node.stop() == 0, node.log()
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
