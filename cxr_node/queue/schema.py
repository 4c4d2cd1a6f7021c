"""Create, upgrade and check the database schema with Alembic (cxr_node/queue/migrations).

A new, empty database is created at the newest revision. A database behind the code is
never changed behind the operator's back: `serve` refuses it, naming `cxr-node db upgrade`.
A database made by 0.1.0 (create_all, no alembic_version table) counts as revision 0001.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from cxr_node.queue.tables import make_engine

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"


class SchemaError(RuntimeError):
    """The database schema does not match the code; the message says which command fixes it."""


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None  # the package always ships its migrations
    return head


def _is_legacy(connection: Connection) -> bool:
    """Tables of 0.1.0 without Alembic's bookkeeping."""
    names = set(inspect(connection).get_table_names())
    return "alembic_version" not in names and "instances" in names


def _is_empty(connection: Connection) -> bool:
    return not inspect(connection).get_table_names()


def current_revision(engine: Engine) -> str | None:
    """The database's revision; BASELINE for a 0.1.0 database; None for an empty one."""
    with engine.connect() as conn:
        if _is_legacy(conn):
            return BASELINE
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the newest revision (idempotent); returns (before, after)."""
    before = current_revision(engine)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # SQLite copies tables to change them; foreign keys must be off for the copy
            # (the pragma is ignored inside a transaction, so it is set before one starts).
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        cfg = _config(conn)
        if _is_legacy(conn):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")
        conn.commit()
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    return before, head_revision()


def check_current(engine: Engine, db_label: str = "") -> None:
    """Raise SchemaError unless the database is at the code's revision."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    where = f" --db {db_label}" if db_label else ""
    if current is None:
        raise SchemaError(f"database has no cxr-node schema: run `cxr-node db upgrade{where}`")
    known = {rev.revision for rev in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if current not in known:
        raise SchemaError(f"database schema {current} is newer than this cxr-node ({head}): upgrade cxr-node")
    raise SchemaError(f"database schema {current} is behind this cxr-node ({head}): run `cxr-node db upgrade{where}`")


def open_database(url: str, create: bool = True) -> Engine:
    """An engine on a database at the newest schema.

    An empty database is created (create=True); one behind the code raises SchemaError.
    """
    engine = make_engine(url)
    with engine.connect() as conn:
        empty = _is_empty(conn)
    if empty and create:
        try:
            upgrade(engine)
        except Exception:
            # Another process (a second role starting at the same moment) created it first.
            if current_revision(engine) != head_revision():
                raise
    check_current(engine, redact_url(url))
    return engine


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


__all__ = [
    "SchemaError",
    "check_current",
    "current_revision",
    "head_revision",
    "open_database",
    "redact_url",
    "upgrade",
]
