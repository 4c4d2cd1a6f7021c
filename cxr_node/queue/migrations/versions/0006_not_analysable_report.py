"""Export rows for the short report of a not-analysable image ([results] not_analysable_report).

Such an image has no results row (no class anywhere), so its report's export rows name the job:
exports.result_id becomes nullable, exports.job_id (FK jobs, unique with kind and destination)
is new, and exports.created_at records when the object was made (the dispatcher's give-up clock
for rows without a result). Existing rows keep their result_id; their created_at stays NULL
(their result's created_at is used, as before).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # SQLite changes a column's nullability by copying the table
        with op.batch_alter_table("exports", recreate="always") as batch:
            batch.alter_column("result_id", existing_type=sa.Integer, nullable=True)
            batch.add_column(sa.Column("job_id", sa.Integer))
            batch.add_column(sa.Column("created_at", sa.DateTime(timezone=True)))
            batch.create_foreign_key("fk_exports_job_id_jobs", "jobs", ["job_id"], ["id"])
            batch.create_index("ix_exports_job_id", ["job_id"])
            batch.create_unique_constraint("uq_export_job_kind_destination", ["job_id", "kind", "destination"])
        return
    op.alter_column("exports", "result_id", existing_type=sa.Integer, nullable=True)
    op.add_column("exports", sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id")))
    op.add_column("exports", sa.Column("created_at", sa.DateTime(timezone=True)))
    op.create_index("ix_exports_job_id", "exports", ["job_id"])
    op.create_unique_constraint("uq_export_job_kind_destination", "exports", ["job_id", "kind", "destination"])


def downgrade() -> None:
    # Reports of not-analysable images have no result row to hang on: they go with the columns.
    op.execute("DELETE FROM exports WHERE result_id IS NULL")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("exports", recreate="always") as batch:
            batch.drop_constraint("uq_export_job_kind_destination", type_="unique")
            batch.drop_index("ix_exports_job_id")
            batch.drop_constraint("fk_exports_job_id_jobs", type_="foreignkey")
            batch.drop_column("created_at")
            batch.drop_column("job_id")
            batch.alter_column("result_id", existing_type=sa.Integer, nullable=False)
        return
    op.drop_constraint("uq_export_job_kind_destination", "exports", type_="unique")
    op.drop_index("ix_exports_job_id", "exports")
    op.drop_column("exports", "created_at")
    op.drop_column("exports", "job_id")
    op.alter_column("exports", "result_id", existing_type=sa.Integer, nullable=False)
