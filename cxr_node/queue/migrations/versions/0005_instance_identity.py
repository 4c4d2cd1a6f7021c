"""Instances record the transfer syntax they arrived in and their identity + pixel-module header.

The receiver compares them when a known SOP Instance UID arrives again: the same instance in
another transfer syntax is acknowledged, other content is refused (cxr_node.dicom.same_instance).
Rows from before stay NULL; for them the receiver reads the stored file's header once.

<<<<<<<< HEAD:cxr_node/queue/migrations/versions/0005_instance_identity.py
Revision ID: 0005
Revises: 0004
========
Revision ID: 0004
Revises: 0003
>>>>>>>> 0ca1c0d (migration renumbered 0004 after main's 0003; CHANGELOG):cxr_node/queue/migrations/versions/0004_instance_identity.py
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

<<<<<<<< HEAD:cxr_node/queue/migrations/versions/0005_instance_identity.py
revision = "0005"
down_revision = "0004"
========
revision = "0004"
down_revision = "0003"
>>>>>>>> 0ca1c0d (migration renumbered 0004 after main's 0003; CHANGELOG):cxr_node/queue/migrations/versions/0004_instance_identity.py
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
