"""Database tables: received instances, analysis jobs, results, and exports to destinations.

This is the schema at the newest migration (cxr_node/queue/migrations); the database is
created and changed only through those migrations, never with create_all.

The constraints carry the guarantees:
  instances.sop_instance_uid unique  -> a re-sent image is stored once
  jobs.instance_id unique            -> one analysis job per image
  results.job_id unique, results.sop_instance_uid unique
                                     -> an image is reported at most once, and its result
                                        names the image it was computed from
  exports (result_id, kind, destination) unique
                                     -> each result object goes to each destination through one row
  exports (job_id, kind, destination) unique
                                     -> the short report of a not-analysable image ([results]
                                        not_analysable_report) likewise; it has no results row
                                        (no class anywhere), so its rows name the job instead
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    Column("calling_aet", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # sha256 of the stored file: a later instance with the same SOP Instance UID but other bytes
    # is told apart from a plain re-send, and never replaces what was analysed.
    Column("content_sha256", String(64)),
    # What operators recognise the image by in the jobs list and on the status page.
    Column("accession_number", String(64)),
    Column("modality", String(64)),
    Column("study_description", String(64)),
    Column("series_description", String(64)),
    # The transfer syntax it arrived in and its identity + Image Pixel module header
    # (cxr_node.dicom.same_instance): the same instance re-sent in another syntax is told
    # apart from other content under the same UID without reading the stored file.
    Column("transfer_syntax_uid", String(64)),
    Column("identity", JSON),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("instances.id"), nullable=False, unique=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    # JobState: queued -> running -> done | failed | not_analysable; skipped when a selection rule said so
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("rule", String(64)),  # the selection rule that decided (analyse or skip)
    Column("reason", Text),  # why it was skipped or not analysable, in words
    # not_analysable: which check decided, short and stable ("too-small", "no-contrast", ...): a metric label
    Column("reason_code", String(32)),
    # Not claimable before this time: back-off after a resource failure (disk, database).
    Column("next_try_at", DateTime(timezone=True)),
    Column("deferrals", Integer, nullable=False, default=0),  # resource failures in a row (back-off)
    Column("lease_until", DateTime(timezone=True)),
    Column("worker", String(128)),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, unique=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    # The analysed image: the SR references it, and the result's UIDs derive from it.
    Column("sop_instance_uid", String(64), nullable=False),
    Column("label", String(32), nullable=False),
    Column("p_abnormal", Float, nullable=False),
    Column("p_covid", Float, nullable=False),
    Column("models_disagree", Boolean, nullable=False),
    Column("model", String(128), nullable=False),
    Column("trained", Boolean, nullable=False),
    Column("timings", JSON),  # seconds per stage, for the demo and operators
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("sop_instance_uid", name="uq_results_sop_instance_uid"),
)

exports = Table(
    "exports",
    metadata,
    Column("id", Integer, primary_key=True),
    # The result the object belongs to; NULL for the report of a not-analysable image, whose
    # rows name its job instead (job_id): exactly one of the two is set.
    Column("result_id", Integer, ForeignKey("results.id")),
    Column("job_id", Integer, ForeignKey("jobs.id"), index=True),
    Column("kind", String(8), nullable=False),  # states.ExportKind: "sc", "sr" or "notice"
    Column("path", Text, nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("destination", String(128)),  # destination name (or AET@HOST:PORT), NULL = keep on disk only
    # ExportState: pending -> sent | failed; local when there is no destination
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("sent_at", DateTime(timezone=True)),
    # When the object was made (NULL in rows from before 0006: their result's created_at says it).
    Column("created_at", DateTime(timezone=True)),
    UniqueConstraint("result_id", "kind", "destination", name="uq_export_result_kind_destination"),
    UniqueConstraint("job_id", "kind", "destination", name="uq_export_job_kind_destination"),
)


SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite statement waits for another writer's lock


def make_engine(url: str) -> Engine:
    """Engine with settings that make a commit durable (SQLite: WAL + synchronous FULL).

    Creates no tables: `cxr_node.queue.schema.open_database` creates or checks the schema.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so an acknowledged image survives power loss.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine
