"""Instances: accession number, modality, study and series description, read at receipt.

The jobs list and the status page show them beside each image (skipped ones above all), so an
operator recognises an image without opening its file. Rows received before this migration
keep NULL there (shown as "-").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = ("accession_number", "modality", "study_description", "series_description")


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
