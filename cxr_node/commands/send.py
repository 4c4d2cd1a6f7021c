"""`cxr-node send FILE|DIR --to AET@HOST:PORT`: C-STORE files as they are (each in its own transfer syntax)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from cxr_node.config import ConfigError, Destination

MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8)


@dataclass(frozen=True)
class FileToSend:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def collect(paths: list[Path]) -> tuple[list[FileToSend], list[str]]:
    """DICOM files under the paths (directories recursively), and one-line notes on what was left out."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    found, notes = [], []
    for root in paths:
        candidates = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in candidates:
            try:
                ds = dcmread(path, stop_before_pixels=True)
                found.append(
                    FileToSend(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
                )
            except (InvalidDicomError, AttributeError, KeyError, OSError) as exc:
                notes.append(
                    f"{path}: left out: not a DICOM file with SOP class, instance and transfer syntax ({type(exc).__name__})"
                )
    return found, notes


def send_files(
    dest: Destination, files: list[FileToSend], calling_aet: str, timeout_s: float
) -> list[tuple[FileToSend, int | None, str]]:
    """(file, status, problem) per file. Each file goes in its own transfer syntax, streamed from disk."""
    from pynetdicom import AE

    out: list[tuple[FileToSend, int | None, str]] = []
    contexts = list(dict.fromkeys((f.sop_class_uid, f.transfer_syntax_uid) for f in files))
    for start in range(0, len(contexts), MAX_CONTEXTS):
        chunk = set(contexts[start : start + MAX_CONTEXTS])
        batch = [f for f in files if (f.sop_class_uid, f.transfer_syntax_uid) in chunk]
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        for sop_class, syntax in chunk:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            why = (
                "association rejected"
                if assoc.is_rejected
                else "no association (nothing listening there, or the peer aborted)"
            )
            out += [(f, None, why) for f in batch]
            continue
        try:
            accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
            for f in batch:
                if (f.sop_class_uid, f.transfer_syntax_uid) not in accepted:
                    out.append(
                        (
                            f,
                            None,
                            f"{dest.ae_title} accepts no context for this SOP class in transfer syntax {f.transfer_syntax_uid}",
                        )
                    )
                    continue
                # A path is streamed from the file as it is: no decode, no re-encode.
                status = assoc.send_c_store(f.path)
                if not status:
                    out.append((f, None, "no C-STORE response"))
                    break
                out.append((f, int(status.Status), str(status.get("ErrorComment", ""))))
        finally:
            if assoc.is_established:
                assoc.release()
    return out


@click.command("send")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "to", required=True, help="Destination AET@HOST:PORT.")
@click.option("--aet", "calling_aet", default="CXR_NODE", show_default=True, help="Calling AE title.")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, help="Seconds per network step.")
def command(paths, to, calling_aet, timeout_s) -> None:
    """C-STORE FILEs (or every DICOM file under DIRs) to a peer; exit 1 unless every one was stored."""
    try:
        dest = Destination.parse("--to", to)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    files, notes = collect(list(paths))
    for note in notes:
        click.echo(note, err=True)
    if not files:
        raise click.ClickException("no DICOM files to send")
    results = send_files(dest, files, calling_aet, timeout_s)
    stored = 0
    for f, status, problem in results:
        if status is not None and (status == 0 or (status & 0xF000) == 0xB000):
            stored += 1
            click.echo(f"{f.path}: stored (0x{status:04X}) {f.sop_instance_uid}")
        else:
            what = f"status 0x{status:04X} {problem}".strip() if status is not None else problem
            click.echo(f"{f.path}: NOT stored: {what}", err=True)
    click.echo(f"{stored} of {len(files)} file(s) stored at {dest}")
    if stored != len(files):
        raise SystemExit(1)
