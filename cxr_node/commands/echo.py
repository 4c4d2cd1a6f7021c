"""`cxr-node echo AET@HOST:PORT`: C-ECHO, to check the node can reach a peer (PACS, modality)."""

from __future__ import annotations

import time

import click

from cxr_node.config import ConfigError, Destination
from cxr_node.dicom.status import SUCCESS


def c_echo(peer: Destination, calling_aet: str, timeout_s: float) -> tuple[int | None, str]:
    """(status, problem): status None when no association or no answer."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        return (
            None,
            "association rejected"
            if assoc.is_rejected
            else "no association (nothing listening there, or the peer aborted)",
        )
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if not status:
        return None, "no C-ECHO response"
    return int(status.Status), ""


@click.command("echo")
@click.argument("peer")
@click.option("--aet", "calling_aet", default="CXR_NODE", show_default=True, help="Calling AE title.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, help="Seconds per network step.")
def command(peer, calling_aet, timeout_s) -> None:
    """Send a C-ECHO to PEER (AET@HOST:PORT); exit 0 on success."""
    try:
        dest = Destination.parse("PEER", peer)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    t0 = time.perf_counter()
    status, problem = c_echo(dest, calling_aet, timeout_s)
    took = time.perf_counter() - t0
    if status == SUCCESS:
        click.echo(f"C-ECHO {dest}: success in {took:.3f} s")
        return
    raise click.ClickException(f"C-ECHO {dest}: {problem or f'status 0x{status:04X}'}")
