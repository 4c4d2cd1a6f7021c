"""What `serve` settles before the node is built: umask, database password, a reachable database.

    os.umask(cfg.umask)                        files 0640 / directories 0750 by default
    cfg = with_db_password(cfg, os.environ)    password from node.db_password_file or CXR_NODE_DB_PASSWORD
    wait_for_database(cfg.db_url, stop, say)   retries an unreachable database with one line per try

The password never has to be on the command line (where `ps` shows it) or in the config file.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from cxr_node import validation as V
from cxr_node.config import ConfigError, NodeConfig
from cxr_node.storage import free_mb

PASSWORD_ENV = "CXR_NODE_DB_PASSWORD"


def read_password_file(path: Path) -> str:
    """First line of a file only the node's user may read; ConfigError naming node.db_password_file."""
    key = "node.db_password_file"
    V.owner_only(key, path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    if not lines or not lines[0]:
        raise ConfigError(f"{key}: {path} is empty (the password goes on the first line)")
    return lines[0]


def with_db_password(cfg: NodeConfig, environ: Mapping[str, str]) -> NodeConfig:
    """The config with the database password put into the URL, in memory only.

    Source: node.db_password_file when set, else the environment variable CXR_NODE_DB_PASSWORD.
    A URL without a password and neither source is left as it is (trust or peer authentication).
    """
    if cfg.db_password_file is not None:
        password = read_password_file(Path(cfg.db_password_file))
    elif environ.get(PASSWORD_ENV):
        password = environ[PASSWORD_ENV]
    else:
        return cfg
    if not cfg.db:
        raise ConfigError("node.db: a database password is given but node.db is empty (SQLite needs none)")
    try:
        url = make_url(cfg.db)
    except ArgumentError as exc:
        raise ConfigError(f"node.db: not a database URL: {exc}") from exc
    return replace(cfg, db=url.set(password=password).render_as_string(hide_password=False))


def check_storage(path: Path, min_free_mb: float, free_space: Callable[[Path], float] = free_mb) -> str | None:
    """The storage directory, created if missing and probed with a real write.

    Raises ConfigError (one line naming node.storage) when the node cannot keep anything there:
    a file in its place, no permission, a read-only or full file system. Returns a warning when
    free space is below receiver.min_free_mb: the node starts, the receiver answers 0xA700 and
    /readyz says why until space comes back (the dispatcher still sends what is queued)."""
    key = "node.storage"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cxr-write-probe-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        what = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"is not writable ({exc.strerror})"
        if not path.is_dir():
            what = f"cannot be created ({exc.strerror})"
        raise ConfigError(f"{key}: {path} {what}") from exc
    free = free_space(path)
    if free < min_free_mb:
        return (
            f"cxr-node: warning: {path} has {free:.0f} MB free, less than receiver.min_free_mb "
            f"({min_free_mb:g}); images are refused with 0xA700 until space comes back"
        )
    return None


def url_has_password(url: str) -> bool:
    try:
        return bool(url) and make_url(url).password is not None
    except ArgumentError:
        return False


def wait_for_database(
    url: str,
    stop: threading.Event,
    say: Callable[[str], None],
    delays_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0),
    connect: Callable[[str], None] | None = None,
) -> bool:
    """Block until the database answers (True) or `stop` is set (False); one line per failed try."""
    if url.startswith("sqlite"):  # a local file: nothing to wait for (Node.build creates it)
        return True
    connect = connect or _connect
    attempt = 0
    while not stop.is_set():
        try:
            connect(url)
            if attempt:
                say(f"cxr-node: database {_shown(url)} reachable after {attempt} failed tries")
            return True
        except SQLAlchemyError as exc:
            delay = delays_s[min(attempt, len(delays_s) - 1)]
            attempt += 1
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            say(f"cxr-node: database {_shown(url)} unreachable ({reason}); retrying in {delay:g} s")
            stop.wait(delay)
    return False


def _connect(url: str) -> None:
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


__all__ = [
    "PASSWORD_ENV",
    "check_storage",
    "read_password_file",
    "url_has_password",
    "wait_for_database",
    "with_db_password",
]
