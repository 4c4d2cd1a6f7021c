"""Instances record the transfer syntax they arrived in and their identity + pixel-module header.

The receiver compares them when a known SOP Instance UID arrives again: the same instance in
another transfer syntax is acknowledged, other content is refused (cxr_node.dicom.same_instance).
Rows from before stay NULL; for them the receiver reads the stored file's header once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("transfer_syntax_uid", sa.String(64)))
        batch.add_column(sa.Column("identity", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("identity")
        batch.drop_column("transfer_syntax_uid")
