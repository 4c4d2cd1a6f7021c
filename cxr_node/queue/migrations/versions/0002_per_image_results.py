"""Per-image results, selection rules, resource back-off, several destinations.

- results: one per analysed image (new sop_instance_uid, unique) instead of one per study
  (the unique constraint on study_instance_uid goes; an index stays);
- jobs: rule and reason (the selection rule that decided, why skipped), next_try_at and
  deferrals (back-off after resource failures, which are retried, never final);
- instances: content_sha256 (same SOP Instance UID with other bytes is told apart);
- exports: one row per object and destination (unique result/kind/destination; the SOP
  Instance UID is no longer unique on its own); destinations are named, and 0.1.0's single
  destination (stored as AET@HOST:PORT) is the one now named "pacs".

Jobs that 0.1.0 skipped as "study already reported" keep their state: re-queue them with
`cxr-node jobs retry` if those images should get a result of their own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Gives the unnamed constraints of 0001 names when SQLite's tables are reflected for a batch copy.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("content_sha256", sa.String(64)))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rule", sa.String(64)))
        batch.add_column(sa.Column("reason", sa.Text))
        batch.add_column(sa.Column("next_try_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("deferrals", sa.Integer, nullable=False, server_default="0"))

    op.execute("UPDATE exports SET destination = 'pacs' WHERE destination IS NOT NULL")

    op.add_column("results", sa.Column("sop_instance_uid", sa.String(64)))
    # The image each existing result was computed from: its job's instance.
    op.execute(
        "UPDATE results SET sop_instance_uid = (SELECT instances.sop_instance_uid FROM jobs "
        "JOIN instances ON instances.id = jobs.instance_id WHERE jobs.id = results.job_id)"
    )
    if _sqlite():
        with op.batch_alter_table("results", recreate="always", naming_convention=NAMING) as batch:
            batch.drop_constraint("uq_results_study_instance_uid", type_="unique")
            batch.alter_column("sop_instance_uid", existing_type=sa.String(64), nullable=False)
            batch.create_unique_constraint("uq_results_sop_instance_uid", ["sop_instance_uid"])
            batch.create_index("ix_results_study_instance_uid", ["study_instance_uid"])
        with op.batch_alter_table("exports", recreate="always", naming_convention=NAMING) as batch:
            batch.drop_constraint("uq_exports_sop_instance_uid", type_="unique")
            batch.drop_constraint("uq_export_result_kind", type_="unique")
            batch.create_unique_constraint("uq_export_result_kind_destination", ["result_id", "kind", "destination"])
            batch.create_index("ix_exports_sop_instance_uid", ["sop_instance_uid"])
    else:  # PostgreSQL named the unnamed constraints <table>_<column>_key
        op.drop_constraint("results_study_instance_uid_key", "results", type_="unique")
        op.alter_column("results", "sop_instance_uid", nullable=False)
        op.create_unique_constraint("uq_results_sop_instance_uid", "results", ["sop_instance_uid"])
        op.create_index("ix_results_study_instance_uid", "results", ["study_instance_uid"])
        op.drop_constraint("exports_sop_instance_uid_key", "exports", type_="unique")
        op.drop_constraint("uq_export_result_kind", "exports", type_="unique")
        op.create_unique_constraint(
            "uq_export_result_kind_destination", "exports", ["result_id", "kind", "destination"]
        )
        op.create_index("ix_exports_sop_instance_uid", "exports", ["sop_instance_uid"])


def downgrade() -> None:
    raise RuntimeError(
        "0002 cannot be undone: per-image results may hold several results per study, "
        "which the 0.1.0 schema cannot store. Restore the pre-upgrade backup instead."
    )
