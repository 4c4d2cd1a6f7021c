"""`cxr-node db upgrade|current` and `serve` on a database behind the code, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import create_engine

from cxr_node.queue import schema
from tests import legacy_schema_010 as legacy

CLI = [sys.executable, "-m", "cxr_node.cli"]


def _run(*args, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.peers  # a cxr-node serve process
@pytest.mark.slow
def test_serve_refuses_a_010_database_until_db_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    legacy.metadata.create_all(engine)
    engine.dispose()

    current = _run("db", "current", "--db", url)
    assert current.returncode == 1 and "0001" in current.stdout and "cxr-node db upgrade" in current.stdout

    (tmp_path / "empty.toml").write_text("")
    serve = _run(
        "serve",
        "--config",
        str(tmp_path / "empty.toml"),
        "--storage",
        str(tmp_path / "s"),
        "--db",
        url,
        "--port",
        "0",
        "--allow-untrained",
        "--role",
        "receiver",
    )
    assert serve.returncode != 0
    (line,) = [ln for ln in serve.stderr.splitlines() if ln.strip()]  # one line, no traceback
    assert "behind" in line and "cxr-node db upgrade --db" in line

    up = _run("db", "upgrade", "--db", url)
    head = schema.head_revision()
    assert up.returncode == 0 and f"0001 -> {head}" in up.stdout, up.stderr
    again = _run("db", "upgrade", "--db", url)
    assert again.returncode == 0 and f"already at {head}" in again.stdout
    assert _run("db", "current", "--db", url).returncode == 0
