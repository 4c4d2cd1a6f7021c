"""Baseline: the schema of cxr-node 0.1.0 (created then with create_all).

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out as 0.1.0 created it, unnamed constraints included, so that a database made
    # by create_all and one made by this migration are the same to every later migration.
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("calling_aet", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("worker", sa.String(128)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("p_abnormal", sa.Float, nullable=False),
        sa.Column("p_covid", sa.Float, nullable=False),
        sa.Column("models_disagree", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("trained", sa.Boolean, nullable=False),
        sa.Column("timings", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("destination", sa.String(128)),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("result_id", "kind", name="uq_export_result_kind"),
    )


def downgrade() -> None:
    for table in ("exports", "results", "jobs", "instances"):
        op.drop_table(table)
