"""Opening the node's database for the operator commands (jobs, exports): never creates anything."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from cxr_node.commands.common import load_node_config, one_line
from cxr_node.config import ConfigError, with_overrides


def open_existing(db: str | None, config: Path | None):
    """(JobQueue, Reports) on the configured database, which must exist at this release's schema."""
    from cxr_node.queue.jobs import JobQueue
    from cxr_node.queue.reports import Reports
    from cxr_node.queue.schema import SchemaError, open_database

    try:
        from cxr_node.startup import with_db_password

        # The same database serve would use, with the password from CXR_NODE_DB_PASSWORD or node.db_password_file.
        url = with_db_password(with_overrides(load_node_config(config), db=db), os.environ).db_url
        parsed = make_url(url)
        if parsed.drivername.startswith("sqlite") and parsed.database and not Path(parsed.database).is_file():
            # SQLite would create an empty file; an operator command must not.
            raise click.ClickException(f"node.db: no database at {parsed.database} (is --db or --config right?)")
        engine = open_database(url, create=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    except click.ClickException:
        raise
    except Exception as exc:  # unreachable server, bad URL: one line
        raise click.ClickException(f"node.db: {one_line(exc)}") from exc
    return JobQueue(engine), Reports(engine)


_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime) -> datetime:
    """`24h`, `30m`, `7d`, `90s`, `2w`, or an ISO date/time (UTC unless it says otherwise)."""
    m = _SPAN.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use a span like 24h, 30m, 7d or an ISO time like 2026-11-27T08:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns; the last column is not padded (it holds the long reason)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"
