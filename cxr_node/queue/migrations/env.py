"""Alembic environment: always run on a connection handed in by cxr_node.queue.schema."""

from __future__ import annotations

from alembic import context

from cxr_node.queue.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
