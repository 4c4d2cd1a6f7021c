"""Test databases: a fresh one per test on SQLite or on the session's real PostgreSQL."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url


def fresh_url(kind: str, tmp_path, postgres=None) -> str:
    """URL of a new, empty database (PostgreSQL: a new database in the session's cluster)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(postgres.url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, engine: Engine | None = None) -> None:
    if engine is not None:
        engine.dispose()
    if url.startswith("sqlite"):
        return
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="cxrnode"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()
