"""Status page, /metrics, /healthz, /readyz and the token, on a real database (SQLite; PostgreSQL for /readyz)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from starlette.testclient import TestClient

from cxr_node.metrics import NodeMetrics
from cxr_node.queue.reports import Reports
from cxr_node.queue.schema import open_database
from cxr_node.queue.tables import exports, instances, jobs, results
from cxr_node.results.identity import ModelIdentity
from cxr_node.web.app import create_app
from cxr_node.web.health import Readiness
from cxr_node.web.page import NodeInfo, read_patient
from tests import peers

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TOKEN = "s3cret-token-0123456789"
MODEL = ModelIdentity("cxr-densenet", "1.2", "a" * 64, "b" * 64, True)
SKIPPED_HEADER = {
    "accession_number": "ACC-77",
    "modality": "CR",
    "study_description": "RX TORAX PORTATIL",
    "series_description": "Thorax lat",
}


def _fill(engine, image_path: str) -> None:
    """Rows as the receiver and worker write them: one done (sent + pending export), one failed, one skipped."""
    with engine.begin() as c:
        for i, state in ((1, "done"), (2, "failed"), (3, "skipped")):
            c.execute(
                insert(instances).values(
                    id=i,
                    sop_instance_uid=f"1.2.826.0.1.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                    study_instance_uid="1.2.826.0.9",
                    calling_aet="MOBILE_DR",
                    path=image_path,
                    received_at=NOW,
                    **(SKIPPED_HEADER if state == "skipped" else {}),
                )
            )
            c.execute(
                insert(jobs).values(
                    id=i,
                    instance_id=i,
                    study_instance_uid="1.2.826.0.9",
                    state=state,
                    attempts=1,
                    created_at=NOW,
                    updated_at=NOW + timedelta(seconds=3),
                    error=f"{image_path}: pixel data: JPEG 2000 codestream truncated\n  at byte 5"
                    if state == "failed"
                    else None,
                    rule="lateral-view" if state == "skipped" else None,
                    reason="ViewPosition LL is not AP/PA" if state == "skipped" else None,
                )
            )
        c.execute(
            insert(results).values(
                id=1,
                job_id=1,
                study_instance_uid="1.2.826.0.9",
                sop_instance_uid="1.2.826.0.1.1",
                label="COVID-19",
                p_abnormal=0.81,
                p_covid=0.67,
                models_disagree=False,
                model=MODEL.label,
                trained=True,
                timings={
                    "decode": 0.41,
                    "preprocess": 0.05,
                    "model_a": 0.33,
                    "model_b": 0.31,
                    "cams": 0.01,
                    "sr_sc_build": 0.2,
                },
                created_at=NOW + timedelta(seconds=2),
            )
        )
        c.execute(
            insert(exports).values(
                result_id=1,
                kind="sc",
                path="/r/sc",
                sop_instance_uid="1.2.826.0.7.1",
                destination="pacs",
                state="sent",
                attempts=1,
                next_try_at=NOW,
                sent_at=NOW,
            )
        )
        c.execute(
            insert(exports).values(
                result_id=1,
                kind="sr",
                path="/r/sr",
                sop_instance_uid="1.2.826.0.7.2",
                destination="pacs",
                state="pending",
                attempts=2,
                next_try_at=NOW,
                last_error="association with ORTHANC@127.0.0.1:4242 rejected",
            )
        )


@pytest.fixture
def node_db(tmp_path, rg1_uncr):
    engine = open_database(f"sqlite:///{tmp_path / 'node.db'}")
    yield engine, Reports(engine), str(rg1_uncr)
    engine.dispose()


def _client(reports, tmp_path, token="", show_patient=False, min_free_mb=0.0, metrics=None):
    info = NodeInfo(
        "CXR_NODE",
        ("receiver", "worker"),
        NOW - timedelta(hours=2, minutes=5),
        MODEL,
        "2026-10-01",
        ("pacs", "archive"),
        show_patient,
        read_patient,
    )
    app = create_app(
        reports,
        metrics or NodeMetrics(reports, MODEL),
        Readiness(reports, tmp_path, min_free_mb),
        info,
        lambda: NOW + timedelta(seconds=30),
        token,
    )
    return TestClient(app)


def test_status_page_shows_queue_images_failures_skips_destinations_model(node_db, tmp_path):
    engine, reports, image = node_db
    _fill(engine, image)
    page = _client(reports, tmp_path).get("/").text
    assert "up 2h 5m" in page
    assert "COVID-19" in page and "0.810" in page and "0.670" in page
    assert "0.41" in page and "2.00" in page  # decode seconds; received -> result seconds
    # One line, without the image's own path in front.
    assert '<td><span class="error">pixel data: JPEG 2000 codestream truncated at byte 5</span>' in page
    assert "lateral-view" in page and "ViewPosition LL is not AP/PA" in page
    # What an operator recognises a skipped image by (issue 20).
    assert "<td>ACC-77</td><td>CR</td><td>RX TORAX PORTATIL / Thorax lat</td><td>lateral-view</td>" in page
    assert "association with ORTHANC@127.0.0.1:4242 rejected" in page
    assert ">archive<" in page  # configured destination with nothing sent yet still listed
    assert "a" * 64 in page and "2026-10-01" in page and "cxr-densenet" in page
    assert "<script" not in page


def test_no_patient_name_or_id_unless_configured(node_db, tmp_path):
    engine, reports, image = node_db
    _fill(engine, image)
    name, pid = read_patient(image)
    assert name and pid
    hidden = _client(reports, tmp_path).get("/").text
    assert name not in hidden and pid not in hidden
    shown = _client(reports, tmp_path, show_patient=True).get("/").text
    assert name in shown and pid in shown


def test_values_from_the_database_are_escaped(node_db, tmp_path):
    engine, reports, image = node_db
    with engine.begin() as c:
        c.execute(
            insert(instances).values(
                id=9,
                sop_instance_uid="1.9",
                sop_class_uid="1.2",
                study_instance_uid="1.9",
                calling_aet="<b>EVIL</b>",
                path=image,
                received_at=NOW,
            )
        )
        c.execute(
            insert(jobs).values(
                id=9,
                instance_id=9,
                study_instance_uid="1.9",
                state="failed",
                attempts=1,
                error="<script>alert(1)</script>",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    page = _client(reports, tmp_path).get("/").text
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>EVIL</b>" not in page


def test_metrics(node_db, tmp_path):
    engine, reports, image = node_db
    metrics = NodeMetrics(reports, MODEL)  # before the result: the histograms count it at the next scrape
    _fill(engine, image)
    text = _client(reports, tmp_path, metrics=metrics).get("/metrics").text
    for line in (
        "cxr_node_images_received_total 3.0",
        "cxr_node_images_analysed_total 1.0",
        "cxr_node_images_failed_total 1.0",
        "cxr_node_images_skipped_total 1.0",
        'cxr_node_images_skipped_by_rule_total{rule="lateral-view"} 1.0',
        'cxr_node_results_exported_total{destination="pacs"} 1.0',
        'cxr_node_queue_jobs{state="failed"} 1.0',
        'cxr_node_queue_exports{state="pending"} 1.0',
        'cxr_node_stage_seconds_count{stage="decode"} 1.0',
        'cxr_node_stage_seconds_sum{stage="decode"} 0.41',
        "cxr_node_received_to_result_seconds_sum 2.0",
        'cxr_node_model_info{name="cxr-densenet",sha256_a="' + "a" * 64,
    ):
        assert line in text, line
    assert "cxr_node_gpu_memory_bytes" not in text  # this test process uses no GPU
    again = _client(reports, tmp_path, metrics=metrics).get("/metrics").text
    assert 'cxr_node_stage_seconds_count{stage="decode"} 1.0' in again  # a result is observed once


def test_gpu_memory_when_present(node_db):
    _, reports, _ = node_db
    metrics = NodeMetrics(reports, gpu_memory=lambda: {"cuda:0/allocated": 1.5e9, "cuda:0/reserved": 2e9})
    assert 'cxr_node_gpu_memory_bytes{device="cuda:0",kind="allocated"} 1.5e+09' in metrics.render().decode()


def test_two_nodes_in_one_process_have_separate_registries(node_db):
    _, reports, _ = node_db
    NodeMetrics(reports, MODEL)
    NodeMetrics(reports, MODEL)  # a global registry would raise "Duplicated timeseries"


def test_healthz_and_readyz(node_db, tmp_path):
    _, reports, _ = node_db
    client = _client(reports, tmp_path)
    assert client.get("/healthz").text == "ok\n"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_readyz_fails_when_the_watermark_is_crossed(node_db, tmp_path):
    _, reports, _ = node_db
    # Above the real free space of the test file system: the watermark is crossed.
    import shutil

    above = shutil.disk_usage(tmp_path).free / 2**20 + 1024
    resp = _client(reports, tmp_path, min_free_mb=above).get("/readyz")
    assert resp.status_code == 503
    storage = resp.json()["checks"]["storage"]
    assert storage["ok"] is False and "below receiver.min_free_mb" in storage["detail"]


def test_readyz_fails_when_storage_is_not_writable(node_db, tmp_path):
    _, reports, _ = node_db
    missing = tmp_path / "gone"
    resp = _client(reports, missing).get("/readyz")
    assert resp.status_code == 503 and "not writable" in resp.json()["checks"]["storage"]["detail"]


@pytest.mark.peers
def test_readyz_fails_when_postgres_is_stopped(tmp_path):
    pg = peers.start_postgres()  # its own server: this test stops it
    stopped = False
    try:
        engine = open_database(pg.url)
        client = _client(Reports(engine), tmp_path)
        assert client.get("/readyz").status_code == 200
        peers.stop_postgres(pg)
        stopped = True
        resp = client.get("/readyz")
        assert resp.status_code == 503
        db = resp.json()["checks"]["database"]
        assert db["ok"] is False and db["detail"].startswith("unreachable")
        engine.dispose()
    finally:
        if not stopped:
            peers.stop_postgres(pg)


def test_token_required_for_everything_but_healthz(node_db, tmp_path):
    _, reports, _ = node_db
    client = _client(reports, tmp_path, token=TOKEN)
    for path in ("/", "/metrics", "/readyz"):
        resp = client.get(path)
        assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Basic")
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-0123456"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert client.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_only_get_routes(node_db, tmp_path):
    _, reports, _ = node_db
    client = _client(reports, tmp_path)
    for path in ("/", "/metrics", "/readyz"):
        assert client.post(path).status_code == 405


def test_read_patient_of_an_unreadable_file(tmp_path):
    bad = Path(tmp_path / "x.dcm")
    bad.write_bytes(b"not dicom")
    assert read_patient(str(bad)) == ("?", "?")
