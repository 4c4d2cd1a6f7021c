"""The 0.1.0 schema exactly as that release created it (create_all), to test upgrades from it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
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
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("instances.id"), nullable=False, unique=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    # queued -> running -> done | failed | skipped (study already reported)
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
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
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("label", String(32), nullable=False),
    Column("p_abnormal", Float, nullable=False),
    Column("p_covid", Float, nullable=False),
    Column("models_disagree", Boolean, nullable=False),
    Column("model", String(128), nullable=False),
    Column("trained", Boolean, nullable=False),
    Column("timings", JSON),  # seconds per stage, for the demo and operators
    Column("created_at", DateTime(timezone=True), nullable=False),
)

exports = Table(
    "exports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("kind", String(8), nullable=False),  # "sr" or "sc"
    Column("path", Text, nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("destination", String(128)),  # AET@HOST:PORT, NULL = keep on disk only
    # pending -> sent | local (no destination)
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("sent_at", DateTime(timezone=True)),
    UniqueConstraint("result_id", "kind", name="uq_export_result_kind"),
)
