"""`cxr-node jobs list|show|retry`: what the node did with each image, and a second chance for failed ones."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from cxr_node.commands.admin_db import open_existing, parse_since, table, when
from cxr_node.commands.common import db_options
from cxr_node.queue.states import JobState

STATES = [s.value for s in JobState]


@click.group("jobs")
def command() -> None:
    """List, inspect and retry analysis jobs (one per received image)."""


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@command.command("list")
@db_options
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only jobs in this state (repeatable)."
)
@click.option("--since", default=None, help="Only jobs changed within this span (24h, 30m, 7d) or since an ISO time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_jobs(db, config, states, since, limit, as_json) -> None:
    """Newest first: state, class, both probabilities and, for failed, skipped or not analysable jobs, why."""
    _, reports = open_existing(db, config)
    since_at = parse_since(since, datetime.now(UTC)) if since else None
    rows = reports.list_jobs(states=states, since=since_at, limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=1))
        return
    if not rows:
        click.echo(
            "no jobs" + (f" in state {', '.join(states)}" if states else "") + (f" since {since}" if since else "")
        )
        return
    click.echo(
        table(
            [
                "ID",
                "STATE",
                "UPDATED (UTC)",
                "FROM",
                "ACCESSION",
                "MOD",
                "DESCRIPTION",
                "CLASS",
                "P(ABN)",
                "P(COVID)",
                "SOP INSTANCE UID",
                "WHY",
            ],
            [
                [
                    str(r.id),
                    r.state,
                    when(r.updated_at),
                    r.calling_aet,
                    r.accession_number or "-",
                    r.modality or "-",
                    r.described or "-",
                    r.label or "-",
                    _p(r.p_abnormal),
                    _p(r.p_covid),
                    r.sop_instance_uid,
                    r.why or "",
                ]
                for r in rows
            ],
        )
    )


@command.command("show")
@db_options
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
def show(db, config, key, as_json) -> None:
    """One job by ID or by the image's SOP Instance UID: timings, attempts, error, exports."""
    _, reports = open_existing(db, config)
    job = reports.find_job(key)
    if job is None:
        raise click.ClickException(f"no job with id or SOP Instance UID {key}")
    exports = reports.list_exports(job_id=job.id, limit=1000)
    if as_json:
        click.echo(json.dumps({**job.as_json(), "exports": [e.as_json() for e in exports]}, indent=1))
        return
    lines = [
        f"job {job.id}: {job.state}",
        f"  image          {job.sop_instance_uid}",
        f"  accession      {job.accession_number or '-'} ({job.modality or '-'}) {job.described}".rstrip(),
        f"  study          {job.study_instance_uid}",
        f"  from           {job.calling_aet}, received {when(job.received_at)} UTC",
        f"  file           {job.path}",
        f"  attempts       {job.attempts}" + (f" (last by {job.worker})" if job.worker else ""),
        f"  updated        {when(job.updated_at)} UTC",
    ]
    if job.state == JobState.NOT_ANALYSABLE:
        lines.append(f"  not analysable [{job.reason_code or '-'}] {job.reason or ''}")
        if job.rule:
            lines.append(f"  rule           {job.rule}")
    elif job.rule or job.reason:
        lines.append(f"  rule           {job.rule or '-'}: {job.reason or ''}")
    if job.error:
        lines.append(f"  error          {job.error}")
    if job.label is not None:
        flags = ("" if job.trained else " [UNTRAINED MODEL]") + (" [models disagree]" if job.models_disagree else "")
        lines.append(
            f"  result         {job.label} (P(abnormal) {job.p_abnormal:.3f}, P(COVID-19) {job.p_covid:.3f}){flags}"
        )
        lines.append(f"  model          {job.model}")
        if job.result_at and job.received_at:
            lines.append(f"  received->result {(job.result_at - job.received_at).total_seconds():.2f} s")
    if job.timings:
        lines.append(
            "  seconds        "
            + ", ".join(f"{k} {v:.3f}" for k, v in job.timings.items() if isinstance(v, (int, float)))
        )
    for e in exports:
        state = e.state + (f" {when(e.sent_at)} UTC" if e.sent_at else "")
        error = f" - {e.last_error}" if e.last_error else ""
        lines.append(
            f"  export {e.id:<6} {e.kind.upper():<3} {e.sop_instance_uid} -> {e.destination or '(disk only)'}: "
            f"{state}, {e.attempts} attempt(s){error}"
        )
    click.echo("\n".join(lines))


@command.command("retry")
@db_options
@click.argument("job_id", required=False, type=int)
@click.option("--all-failed", is_flag=True, help="Retry every failed job.")
def retry(db, config, job_id, all_failed) -> None:
    """Queue a failed or not analysable job again (after fixing its cause or changing [image_check])."""
    if (job_id is None) == (not all_failed):
        raise click.UsageError("give a job ID or --all-failed (not both)")
    queue, reports = open_existing(db, config)
    ids = reports.failed_job_ids() if all_failed else [job_id]
    if all_failed and not ids:
        click.echo("no failed jobs")
        return
    refused = 0
    for i in ids:
        before = queue.retry_job(i)
        if before is None:
            click.echo(f"job {i}: no such job", err=True)
            refused += 1
        elif before not in (JobState.FAILED, JobState.NOT_ANALYSABLE):
            click.echo(f"job {i}: is {before}, not failed or not analysable: nothing to retry", err=True)
            refused += 1
        else:
            click.echo(f"job {i}: queued again")
    if refused:
        raise SystemExit(1)
