"""[results] not_analysable_report for real: storescu -> `cxr-node serve` -> real Orthanc.

A flat image (every pixel the same grey) is acknowledged and recorded `not_analysable`. With the
option on, Orthanc receives exactly one object for it, the short SR that says the AI gave no
result and why, with no class and no finding; sent again, the image brings no second one. With
the option off (the default), Orthanc receives nothing for it.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest
from sqlalchemy import create_engine

from cxr_node.queue.reports import Reports
from cxr_node.results.no_result_sr import FILE_NAME
from cxr_node.results.wording import NOT_FOR_DIAGNOSIS
from tests import peers
from tests.dicom_factory import make_radiograph
from tests.test_end_to_end import ServeProcess, results_at, storescu
from tests.test_pixel_information_end_to_end import texts

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _flat(tmp_path, name: str):
    ds = make_radiograph(np.full((256, 256), 1000))
    path = tmp_path / "send" / f"{name}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds, path


def _settled(node: ServeProcess, sop: str):
    reports = Reports(create_engine(f"sqlite:///{node.storage / 'cxr-node.db'}"))

    def ended():
        row = reports.find_job(sop)
        return row if row is not None and row.state not in ("queued", "running") else None

    return reports, peers.wait_until(ended, 300, "the flat image's job to end", interval_s=0.5)


def _serve(tmp_path, orthanc, report: bool) -> ServeProcess:
    run = tmp_path / ("on" if report else "off")
    run.mkdir()
    config = run / "node.toml"
    config.write_text(f"[results]\nnot_analysable_report = {'true' if report else 'false'}\n")
    return ServeProcess(run, orthanc, extra=["--config", str(config)]).start()


def test_flat_image_gets_one_no_result_sr_with_the_option_and_none_without(orthanc, tmp_path):
    on_ds, on_path = _flat(tmp_path, "flat-on")
    off_ds, off_path = _flat(tmp_path, "flat-off")

    node = _serve(tmp_path, orthanc, report=True)
    try:
        sent = storescu(node.port, node.ae_title, on_path)
        assert sent.returncode == 0, sent.stderr
        reports, row = _settled(node, on_ds.SOPInstanceUID)
        assert (row.state, row.reason_code, row.label) == ("not_analysable", "no-contrast", None), node.log()
        (found,) = results_at(orthanc, on_ds.StudyInstanceUID, 1)
        sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{found['ID']}/file")))
        assert sr.Modality == "SR" and sr.SeriesDescription.startswith("AI UNTRAINED: no result")
        words = " | ".join(texts(sr))
        assert row.reason in words and NOT_FOR_DIAGNOSIS in words, words
        assert not any(  # no Finding (DCM 121071) anywhere, so no class
            c.CodeValue == "121071" for i in sr.iterall() if i.keyword == "ConceptNameCodeSequence" for c in i.value
        )
        # Orthanc holds the SR a moment before the dispatcher, told success, records the row as sent
        (export,) = peers.wait_until(
            lambda: (lambda rows: rows if rows and rows[0].state == "sent" else None)(
                reports.list_exports(job_id=row.id)
            ),
            60,
            "the export row to be recorded as sent",
        )
        assert (export.state, export.sop_instance_uid, export.result_id) == ("sent", sr.SOPInstanceUID, None)
        assert export.path.endswith(FILE_NAME)

        # The modality sends it again: acknowledged, and the PACS still holds one object for it.
        again = storescu(node.port, node.ae_title, on_path)
        assert again.returncode == 0, again.stderr
        time.sleep(3)  # a second object, were one made, would be on its way by now (poll 1 s)
        assert len(orthanc.instances_in_study(on_ds.StudyInstanceUID)) == 1
        assert len(reports.list_exports(job_id=row.id)) == 1
        assert node.stop() == 0, node.log()
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()

    node = _serve(tmp_path, orthanc, report=False)
    try:
        sent = storescu(node.port, node.ae_title, off_path)
        assert sent.returncode == 0, sent.stderr
        reports, row = _settled(node, off_ds.SOPInstanceUID)
        assert (row.state, row.reason_code) == ("not_analysable", "no-contrast"), node.log()
        assert reports.list_exports(job_id=row.id) == []
        time.sleep(3)
        assert orthanc.instances_in_study(off_ds.StudyInstanceUID) == []
        assert node.stop() == 0, node.log()
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
