"""The status page: server-rendered HTML from the queue's read-only views (no JavaScript).

Every value from the database or a DICOM header is escaped. Patient name and ID appear
only when `web.show_patient` is on; otherwise images are named by job id and SOP Instance UID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape

from cxr_node import __version__
from cxr_node.queue.reports import DestinationRow, JobRow, Reports
from cxr_node.queue.states import JobState
from cxr_node.results.identity import ModelIdentity
from cxr_node.results.wording import NOT_FOR_DIAGNOSIS, UNTRAINED_MODEL_TEXT

REFRESH_S = 10
# As the worker records them (models A and B run at the same time, so they overlap).
STAGES = ("decode", "preprocess", "model_a", "model_b", "cams", "sr_sc_build")


@dataclass
class NodeInfo:
    """What the page says about this process (the rest comes from the database)."""

    ae_title: str
    roles: tuple[str, ...]
    started_at: datetime
    model: ModelIdentity | None = None
    model_trained_on: str | None = None
    destinations: tuple[str, ...] = ()  # configured names; rows without exports still show
    show_patient: bool = False
    patient_of: Callable[[str], tuple[str, str]] | None = None  # path -> (name, id)
    extra: dict[str, str] = field(default_factory=dict)
    domain_check: str | None = None  # Analyzer.domain_status: is the out-of-domain check on, with what


def read_patient(path: str) -> tuple[str, str]:
    """Patient name and ID from the stored image's header (only used when web.show_patient is on)."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
    except Exception:
        return ("?", "?")
    return (str(ds.get("PatientName", "")), str(ds.get("PatientID", "")))


def _h(value) -> str:
    return escape("" if value is None else str(value))


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "–"
    ago = now - value
    return f'<time datetime="{_h(value.isoformat())}">{_h(value.strftime("%Y-%m-%d %H:%M:%S"))}</time> ({_h(_duration(ago))} ago)'


def _duration(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m {s}s" if h else f"{m}m {s}s"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_h(empty)}</p>'
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _stage_cells(job: JobRow) -> list[str]:
    cells = [f"{job.timings[s]:.2f}" if isinstance(job.timings.get(s), (int, float)) else "–" for s in STAGES]
    waited = job.result_at - job.received_at if job.result_at and job.received_at else None
    return cells + [f"{waited.total_seconds():.2f}" if waited is not None else "–"]


def _image_cell(job: JobRow, info: NodeInfo) -> str:
    text = f'<span class="uid">{_h(job.sop_instance_uid)}</span>'
    if info.show_patient and info.patient_of is not None:
        name, pid = info.patient_of(job.path)
        text += f'<br><span class="patient">{_h(name)} ({_h(pid)})</span>'
    return text


def _state(job: JobRow) -> str:
    return f'<span class="state {_h(job.state)}">{_h(job.state)}</span>'


def _label(job: JobRow) -> str:
    if job.label is None:
        return "–"
    flag = "" if job.trained in (None, True) else ' <span class="warn">UNTRAINED</span>'
    disagree = ' <span class="warn">models disagree</span>' if job.models_disagree else ""
    return f"<strong>{_h(job.label)}</strong>{flag}{disagree}"


def _recent(jobs: list[JobRow], info: NodeInfo, now: datetime) -> str:
    rows = [
        [
            _h(j.id),
            _when(j.received_at, now),
            _image_cell(j, info),
            _h(j.calling_aet),
            _state(j),
            _label(j),
            _p(j.p_abnormal),
            _p(j.p_covid),
            *_stage_cells(j),
            _h(j.why),
        ]
        for j in jobs
    ]
    return _table(
        [
            "job",
            "received",
            "image (SOP Instance UID)",
            "from",
            "state",
            "class",
            "P(abnormal)",
            "P(COVID-19)",
            *[f"{s} s" for s in STAGES],
            "received→result s",
            "note",
        ],
        rows,
        "No images received yet.",
    )


def _failures(jobs: list[JobRow], info: NodeInfo, now: datetime) -> str:
    rows = [
        [
            _h(j.id),
            _when(j.updated_at, now),
            _image_cell(j, info),
            _h(j.attempts),
            f'<span class="error">{_h(j.why)}</span>',
        ]
        for j in jobs
    ]
    return _table(["job", "failed", "image", "attempts", "reason"], rows, "No failed jobs.")


def _not_analysable(jobs: list[JobRow], info: NodeInfo, now: datetime) -> str:
    rows = [
        [_h(j.id), _when(j.updated_at, now), _image_cell(j, info), _h(j.reason_code or "–"), _h(j.reason or "")]
        for j in jobs
    ]
    return _table(["job", "decided", "image", "check", "reason"], rows, "No image was found not analysable.")


def _skipped(jobs: list[JobRow], info: NodeInfo, now: datetime) -> str:
    rows = [
        [
            _h(j.id),
            _when(j.received_at, now),
            _image_cell(j, info),
            _h(j.accession_number or "–"),
            _h(j.modality or "–"),
            _h(j.described or "–"),
            _h(j.rule or "–"),
            _h(j.reason or ""),
        ]
        for j in jobs
    ]
    return _table(
        ["job", "received", "image", "accession", "modality", "study / series description", "rule", "reason"],
        rows,
        "No skipped images.",
    )


def _destinations(dests: list[DestinationRow], configured: tuple[str, ...], now: datetime) -> str:
    known = {d.name: d for d in dests}
    for name in configured:
        known.setdefault(name, DestinationRow(name, 0, 0, 0, None, ""))
    rows = [
        [
            _h(d.name),
            _when(d.last_success, now),
            _h(d.sent),
            _h(d.pending),
            _h(d.failed),
            f'<span class="error">{_h(d.last_error)}</span>' if d.last_error else "–",
        ]
        for d in sorted(known.values(), key=lambda d: d.name)
    ]
    return _table(
        ["destination", "last success", "sent", "pending", "failed", "last error"],
        rows,
        "No destination: results are kept on disk only.",
    )


def _depth(depth: dict[str, dict[str, int]]) -> str:
    jobs = "".join(f'<div class="count"><b>{_h(n)}</b><span>{_h(s)}</span></div>' for s, n in depth["jobs"].items())
    exports = "".join(
        f'<div class="count"><b>{_h(n)}</b><span>{_h(s)}</span></div>' for s, n in depth["exports"].items()
    )
    return f'<h3>jobs</h3><div class="counts">{jobs}</div><h3>exports</h3><div class="counts">{exports}</div>'


def _model(info: NodeInfo, reports: Reports) -> str:
    m = info.model
    if m is None:
        latest = reports.latest_model()
        where = f"newest result made with <b>{_h(latest)}</b>" if latest else "no results yet"
        return f"<p>This process runs no worker; {where}.</p>"
    trained = (
        "yes" + (f" ({_h(info.model_trained_on)})" if info.model_trained_on else "")
        if m.trained
        else f'<span class="warn">NO – {_h(UNTRAINED_MODEL_TEXT)}</span>'
    )
    rows = [
        ["name", _h(m.name)],
        ["version", _h(m.version)],
        ["sha256 model A", f'<span class="uid">{_h(m.sha256_a)}</span>'],
        ["sha256 model B", f'<span class="uid">{_h(m.sha256_b)}</span>'],
        ["trained", trained],
    ]
    if info.domain_check:
        off = info.domain_check.startswith("out-of-domain check off")
        rows.append(
            [
                "out-of-domain check",
                f'<span class="warn">{_h(info.domain_check)}</span>' if off else _h(info.domain_check),
            ]
        )
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}h3{font-size:.95em;margin:.6em 0 .2em}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.uid{font-family:monospace;font-size:.85em;word-break:break-all;display:inline-block;max-width:24em}.counts{display:flex;gap:.6em;flex-wrap:wrap}
.scroll{overflow-x:auto}
.count{border:1px solid #ddd;border-radius:4px;padding:.3em .8em;text-align:center}.count b{display:block;font-size:1.3em}
.state.failed,.error{color:#b00}.state.done{color:#070}.state.skipped{color:#666}.state.not_analysable{color:#a60}.warn{color:#b00;font-weight:bold}
.empty{color:#666}.meta{color:#555}
"""


def render_status(reports: Reports, info: NodeInfo, now: datetime, limit: int = 25) -> str:
    recent = reports.list_jobs(limit=limit)
    failed = reports.list_jobs(states=[JobState.FAILED], limit=limit)
    skipped = reports.list_jobs(states=[JobState.SKIPPED], limit=limit)
    not_analysable = reports.list_jobs(states=[JobState.NOT_ANALYSABLE], limit=limit)
    uptime = _duration(now - info.started_at)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>cxr-node {_h(info.ae_title)}</title><style>{CSS}</style></head><body>
<h1>cxr-node {_h(info.ae_title)}</h1>
<p class="meta">version {_h(__version__)} · roles {_h(", ".join(info.roles))} · up {_h(uptime)} (since {_h(info.started_at.strftime("%Y-%m-%d %H:%M:%S %Z"))})
 · page made {_h(now.strftime("%H:%M:%S"))}, refreshes every {REFRESH_S} s · {_h(NOT_FOR_DIAGNOSIS)}</p>
<h2>Queue</h2>{_depth(reports.depth())}
<h2>Destinations</h2>{_destinations(reports.destinations(), info.destinations, now)}
<h2>Recent images</h2>{_recent(recent, info, now)}
<h2>Failures</h2>{_failures(failed, info, now)}
<h2>Not analysable (no class given)</h2>{_not_analysable(not_analysable, info, now)}
<h2>Skipped images</h2>{_skipped(skipped, info, now)}
<h2>Model bundle</h2>{_model(info, reports)}
</body></html>
"""


__all__ = ["NodeInfo", "read_patient", "render_status"]
