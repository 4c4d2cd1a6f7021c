"""`cxr-node db upgrade|current`: bring the database schema to this release, or say where it is."""

from __future__ import annotations

import click

from cxr_node.commands.common import db_options, one_line, resolve_db_url
from cxr_node.config import ConfigError


@click.group("db")
def command() -> None:
    """Database schema: upgrade to this release, show the current revision."""


@command.command("upgrade")
@db_options
def upgrade(db, config) -> None:
    """Create or upgrade the schema to this release (safe to run again)."""
    from cxr_node.queue.schema import redact_url
    from cxr_node.queue.schema import upgrade as run_upgrade
    from cxr_node.queue.tables import make_engine

    try:
        url = resolve_db_url(db, config)
        engine = make_engine(url)
        before, after = run_upgrade(engine)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # unreachable server, bad URL, permissions: one line, no traceback
        raise click.ClickException(f"db upgrade: {one_line(exc)}") from exc
    where = redact_url(url)
    if before == after:
        click.echo(f"{where}: already at {after}")
    else:
        click.echo(f"{where}: upgraded {before or '(empty)'} -> {after}")


@command.command("current")
@db_options
def current(db, config) -> None:
    """Print the schema revision of the database and of this release; exit 1 when they differ."""
    from cxr_node.queue.schema import current_revision, head_revision, redact_url
    from cxr_node.queue.tables import make_engine

    try:
        url = resolve_db_url(db, config)
        now = current_revision(make_engine(url))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(f"db current: {one_line(exc)}") from exc
    head = head_revision()
    state = "up to date" if now == head else "behind: run `cxr-node db upgrade`" if now else "empty"
    click.echo(f"{redact_url(url)}: {now or '-'} (this release: {head}; {state})")
    if now != head:
        raise SystemExit(1)
