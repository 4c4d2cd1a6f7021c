"""C-STORE SCU: sends data sets to a DICOM peer over one association and says what became of each.

The sender knows DICOM networking only, not what it sends. A request may carry an
alternative (another SOP class and a function that builds it), which goes when the peer
accepts no context for the first class but one for the alternative; the destination layer
uses this for the Comprehensive SR form of a Comprehensive 3D SR.

Every outcome is one of: stored (status_ok), refused by the peer (a DIMSE failure status,
or no accepted presentation context: 0x0122), or not attempted because the connection
failed (`transport_error` set). A Verification context is always proposed, so an
association stays up, and refusals stay visible per object, when the peer accepts none
of the storage classes offered (pynetdicom aborts an association without accepted contexts).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from cxr_node.config import Destination
from cxr_node.dicom.status import SOP_CLASS_NOT_SUPPORTED

VERIFICATION = "1.2.840.10008.1.1"  # Verification SOP Class
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class SendError(RuntimeError):
    """The peer could not be reached or no association was established; the message says why."""


@dataclass(frozen=True)
class StoreRequest:
    dataset: Dataset
    # Another SOP class to send when the peer takes none of the dataset's, and how to build it.
    alternative_class: str | None = None
    alternative: Callable[[Dataset], Dataset] | None = None


@dataclass(frozen=True)
class SendOutcome:
    status: int | None  # DIMSE status; None when the object was not attempted (transport_error says why)
    comment: str = ""
    sop_class_uid: str = ""  # what was sent (or attempted)
    sop_instance_uid: str = ""
    fallback: bool = False  # the alternative went in place of the data set
    sent: Dataset | None = None  # the data set that went (the alternative when fallback)
    transport_error: str = ""


class Sender:
    def __init__(self, calling_ae_title: str, timeout_s: float = 30.0, tls: ssl.SSLContext | None = None) -> None:
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s
        self.tls = tls

    def _ae(self, requests: list[StoreRequest]) -> AE:
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        # A context per (SOP class, transfer syntax): an SCP accepts one syntax per context and
        # may take only some; separate contexts let the file go as stored, or uncompressed.
        offered: dict[str, list[str]] = {}
        for req in requests:
            ds = req.dataset
            stored = (
                str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
            )
            syntaxes = offered.setdefault(str(ds.SOPClassUID), [])
            for ts in ([stored] if stored else []) + list(_UNCOMPRESSED):
                if ts not in syntaxes:
                    syntaxes.append(ts)
            if req.alternative_class:
                alt = offered.setdefault(req.alternative_class, [])
                alt.extend(ts for ts in _UNCOMPRESSED if ts not in alt)
        offered.setdefault(VERIFICATION, [ImplicitVRLittleEndian])
        for sop_class, syntaxes in offered.items():
            for ts in syntaxes:
                ae.add_requested_context(sop_class, ts)
        return ae

    def send(self, peer: Destination, requests: list[StoreRequest]) -> list[SendOutcome]:
        """Send over one association; raises SendError when no association is established."""
        if not requests:
            return []
        tls_args = (self.tls, peer.host) if self.tls is not None else None
        connected: list[bool] = []  # pynetdicom reports a refused connection as an abort; this tells them apart
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda event: connected.append(True))]
        try:
            assoc = self._ae(requests).associate(
                peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers, tls_args=tls_args
            )
        except (OSError, RuntimeError) as exc:
            raise SendError(f"cannot connect to {peer}: {exc}") from exc
        if not assoc.is_established:
            if not connected:
                why = f"is unreachable (no TCP connection within {self.timeout_s:g} s, or refused)"
            elif assoc.is_rejected:
                why = "rejected the association"
            else:
                why = "aborted the association (or gave no answer in time)"
            raise SendError(f"{peer} {why}")
        outcomes: list[SendOutcome] = []
        try:
            accepted: dict[str, set[str]] = {}
            for cx in assoc.accepted_contexts:
                accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
            for req in requests:
                if not assoc.is_established:
                    outcomes.append(self._unsent(req, f"{peer}: association lost before this object"))
                    continue
                outcomes.append(self._store(assoc, peer, req, accepted))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes

    @staticmethod
    def _unsent(req: StoreRequest, why: str) -> SendOutcome:
        ds = req.dataset
        return SendOutcome(
            None, sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID), transport_error=why
        )

    def _store(self, assoc, peer: Destination, req: StoreRequest, accepted: dict[str, set[str]]) -> SendOutcome:
        ds, fallback = req.dataset, False
        sop_class = str(ds.SOPClassUID)
        if sop_class not in accepted and req.alternative_class in accepted and req.alternative is not None:
            try:
                ds, fallback = req.alternative(ds), True
            except ValueError as exc:
                return SendOutcome(
                    SOP_CLASS_NOT_SUPPORTED,
                    f"no context for {UID(sop_class).name}; no alternative: {exc}"[:64],
                    sop_class,
                    str(ds.SOPInstanceUID),
                )
            sop_class = str(ds.SOPClassUID)
        if sop_class not in accepted:
            names = " nor ".join(UID(c).name for c in [sop_class, req.alternative_class] if c)
            return SendOutcome(
                SOP_CLASS_NOT_SUPPORTED,
                f"no presentation context accepted for {names}",
                sop_class,
                str(ds.SOPInstanceUID),
            )
        ds = _in_accepted_syntax(ds, accepted[sop_class])
        sending = ds

        def outcome(status: int | None, comment: str = "", transport_error: str = "") -> SendOutcome:
            return SendOutcome(
                status, comment, sop_class, str(sending.SOPInstanceUID), fallback, sending, transport_error
            )

        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:  # pynetdicom found no context it can use for this data set
            return outcome(SOP_CLASS_NOT_SUPPORTED, str(exc)[:64])
        except (OSError, RuntimeError) as exc:
            return outcome(None, transport_error=f"{peer}: {exc}")
        if not status:  # no response: connection dropped or timed out
            return outcome(None, transport_error=f"{peer} gave no C-STORE response (timeout or connection lost)")
        return outcome(int(status.Status), str(status.get("ErrorComment", "")))

    def send_files(self, peer: Destination, paths: list[str]) -> list[SendOutcome]:
        """Send files as they are (no alternatives); raises SendError if none can be attempted."""
        requests = []
        for path in paths:
            try:
                requests.append(StoreRequest(dcmread(path)))
            except Exception as exc:
                raise SendError(f"{path}: cannot read for sending: {exc}") from exc
        return self.send(peer, requests)


def _in_accepted_syntax(ds: Dataset, syntaxes: set[str]) -> Dataset:
    """The data set in a transfer syntax the peer accepted for its class: as stored when possible,
    else an uncompressed syntax (re-encoding an uncompressed data set loses nothing)."""
    meta = getattr(ds, "file_meta", None)
    current = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
    if current in syntaxes:
        return ds
    target = next((ts for ts in _UNCOMPRESSED if ts in syntaxes), None)
    if target is None or current not in (*_UNCOMPRESSED, None):
        return ds  # compressed source and no matching context: pynetdicom answers with its own error
    out = Dataset(ds)  # shallow copy: same elements, own file meta
    out.file_meta = FileMetaDataset(meta) if meta is not None else FileMetaDataset()
    out.file_meta.TransferSyntaxUID = UID(target)
    return out
