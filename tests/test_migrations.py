"""Schema migrations on SQLite and a real PostgreSQL: fresh databases, upgrades of a 0.1.0
database with rows in it, idempotence, and serve's refusal of a database behind the code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, select

from cxr_node.queue import schema
from cxr_node.queue.jobs import JobQueue, ReceivedInstance
from cxr_node.queue.tables import exports, jobs, metadata, results
from tests import legacy_schema_010 as legacy
from tests.dbutil import drop_database, fresh_url

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def db_url(request, tmp_path):
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    url = fresh_url(request.param, tmp_path, pg)
    yield url
    drop_database(url)


def _fill_legacy(url: str) -> None:
    """A 0.1.0 database as that release left it: one study reported (SR + SC sent), a second
    image of that study skipped as 'study already reported', one image still queued."""
    engine = create_engine(url)
    legacy.metadata.create_all(engine)
    with engine.begin() as conn:
        # Ids come from the database (PostgreSQL's sequences must advance past these rows).
        for i, (study, state) in enumerate([("1.2.1", "done"), ("1.2.1", "skipped"), ("1.2.2", "queued")], start=1):
            conn.execute(
                insert(legacy.instances).values(
                    sop_instance_uid=f"1.3.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                    study_instance_uid=study,
                    calling_aet="MOD",
                    path=f"/s/{i}.dcm",
                    received_at=T0,
                )
            )
            conn.execute(
                insert(legacy.jobs).values(
                    instance_id=i,
                    study_instance_uid=study,
                    state=state,
                    attempts=1 if state != "queued" else 0,
                    error="study already reported" if state == "skipped" else None,
                    created_at=T0,
                    updated_at=T0,
                )
            )
        conn.execute(
            insert(legacy.results).values(
                job_id=1,
                study_instance_uid="1.2.1",
                label="Normal",
                p_abnormal=0.2,
                p_covid=0.1,
                models_disagree=False,
                model="m 1",
                trained=True,
                timings={"decode": 0.5},
                created_at=T0,
            )
        )
        for kind in ("sc", "sr"):
            conn.execute(
                insert(legacy.exports).values(
                    result_id=1,
                    kind=kind,
                    path=f"/r/{kind}.dcm",
                    sop_instance_uid=f"2.25.{len(kind)}{kind == 'sr':d}",
                    destination="PACS@127.0.0.1:4242",
                    state="sent",
                    attempts=1,
                    next_try_at=T0,
                    sent_at=T0,
                )
            )
    engine.dispose()


def _diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    return diff


def test_fresh_database_is_created_at_head_and_matches_the_tables(db_url):
    engine = schema.open_database(db_url)
    assert schema.current_revision(engine) == schema.head_revision()
    engine.dispose()
    assert _diff(db_url) == []


def test_upgrade_of_a_010_database_keeps_its_rows_and_is_idempotent(db_url):
    _fill_legacy(db_url)
    engine = schema.make_engine(db_url)
    assert schema.current_revision(engine) == schema.BASELINE
    with pytest.raises(schema.SchemaError, match="run `cxr-node db upgrade"):
        schema.check_current(engine)

    assert schema.upgrade(engine) == (schema.BASELINE, schema.head_revision())
    assert schema.upgrade(engine) == (schema.head_revision(), schema.head_revision())  # idempotent
    schema.check_current(engine)
    engine.dispose()
    assert _diff(db_url) == []

    engine = schema.open_database(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.id, jobs.c.state).order_by(jobs.c.id)).all() == [
            (1, "done"),
            (2, "skipped"),
            (3, "queued"),
        ]
        result = conn.execute(select(results)).one()
        # The result now names the image it was computed from.
        assert (result.sop_instance_uid, result.study_instance_uid, result.timings) == (
            "1.3.1",
            "1.2.1",
            {"decode": 0.5},
        )
        assert sorted(conn.execute(select(exports.c.kind, exports.c.state)).all()) == [("sc", "sent"), ("sr", "sent")]
    # The queued image of 0.1.0 is still claimable after the upgrade, and a new image of the
    # reported study gets a job of its own (per-image results).
    queue = JobQueue(engine, lambda: T0)
    assert [j.sop_instance_uid for j in queue.claim("w", 60, limit=5)] == ["1.3.3"]
    assert queue.enqueue(ReceivedInstance("1.3.9", "1.2.840.10008.5.1.4.1.1.1", "1.2.1", "MOD", "/s/9.dcm"))
    engine.dispose()


def test_open_database_refuses_a_database_behind_the_code(db_url):
    _fill_legacy(db_url)
    with pytest.raises(schema.SchemaError) as info:
        schema.open_database(db_url)
    message = str(info.value)
    assert "behind" in message and "cxr-node db upgrade --db" in message
    assert "\n" not in message
