"""`cxr-node exports list|resend`: the result objects on their way to destinations."""

from __future__ import annotations

import json

import click

from cxr_node.commands.admin_db import open_existing, table, when
from cxr_node.commands.common import db_options
from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.states import ExportState


@click.group("exports")
def command() -> None:
    """List result objects (SR, SC) per destination, and send one again."""


@command.command("list")
@db_options
@click.option("--pending", "only", flag_value=ExportState.PENDING.value, help="Only those still to be sent.")
@click.option("--failed", "only", flag_value=ExportState.FAILED.value, help="Only those given up on.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True)
def list_exports(db, config, only, limit, as_json) -> None:
    """Newest first, with the destination, state, attempts and the last error in one line."""
    _, reports = open_existing(db, config)
    rows = reports.list_exports(states=[only] if only else [], limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=1))
        return
    if not rows:
        click.echo(f"no {only} exports" if only else "no exports")
        return
    click.echo(
        table(
            ["ID", "JOB", "KIND", "DESTINATION", "STATE", "TRIES", "SENT (UTC)", "SOP INSTANCE UID", "LAST ERROR"],
            [
                [
                    str(r.id),
                    str(r.job_id),
                    r.kind.upper(),
                    r.destination or "(disk only)",
                    r.state,
                    str(r.attempts),
                    when(r.sent_at),
                    r.sop_instance_uid,
                    r.last_error,
                ]
                for r in rows
            ],
        )
    )


@command.command("resend")
@db_options
@click.argument("export_id", type=int)
def resend(db, config, export_id) -> None:
    """Send a sent or failed object again: same file, same SOP Instance UID (the dispatcher sends it)."""
    queue, reports = open_existing(db, config)
    before = ExportQueue(queue.engine).resend(export_id)
    if before is None:
        raise click.ClickException(f"export {export_id}: no such export")
    if before == ExportState.PENDING:
        raise click.ClickException(f"export {export_id}: already pending (the dispatcher will send it)")
    if before == ExportState.LOCAL:
        raise click.ClickException(f"export {export_id}: kept on disk only, it has no destination")
    row = reports.find_export(export_id)
    click.echo(
        f"export {export_id}: {row.kind.upper()} {row.sop_instance_uid} to {row.destination} queued again (was {before})"
    )
