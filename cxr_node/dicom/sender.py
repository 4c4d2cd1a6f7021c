"""C-STORE SCU: sends result objects (SR, Secondary Capture) to a destination AE."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
)

from cxr_node.config import Destination

RESULT_SOP_CLASSES = (Comprehensive3DSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage)


SOP_CLASS_NOT_SUPPORTED = 0x0122  # the destination accepted no context for the object's SOP class


class SendError(RuntimeError):
    """The destination could not be reached or refused the object; the message says which."""


@dataclass(frozen=True)
class SendOutcome:
    status: int
    comment: str = ""


class Sender:
    def __init__(self, calling_ae_title: str, timeout_s: float = 30.0) -> None:
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s

    def _ae(self, datasets) -> AE:
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        # A context per (SOP class, transfer syntax): an SCP accepts one syntax per context and
        # may prefer an uncompressed one; separate contexts let the file go as it is stored.
        offered: dict[str, list[str]] = {}
        for ds in datasets:
            syntaxes = offered.setdefault(str(ds.SOPClassUID), [])
            for ts in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                if ts not in syntaxes:
                    syntaxes.append(ts)
        for sop_class, syntaxes in offered.items():
            for ts in syntaxes:
                ae.add_requested_context(sop_class, ts)
        return ae

    def send_files(self, destination: Destination, paths: list[str]) -> list[SendOutcome]:
        """Send files over one association; raises SendError if none can be attempted."""
        datasets = []
        for path in paths:
            try:
                datasets.append(dcmread(path))
            except Exception as exc:
                raise SendError(f"{path}: cannot read for sending: {exc}") from exc
        assoc = self._ae(datasets).associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "unreachable"
            raise SendError(f"association with {destination} {why}")
        outcomes = []
        try:
            for path, ds in zip(paths, datasets):
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as exc:  # no accepted presentation context for this SOP class
                    outcomes.append(SendOutcome(SOP_CLASS_NOT_SUPPORTED, str(exc)[:64]))
                    continue
                if not status:  # no response: connection dropped or timed out
                    raise SendError(f"{destination} gave no C-STORE response for {path}")
                outcomes.append(SendOutcome(int(status.Status), str(status.get("ErrorComment", ""))))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes


def status_ok(code: int) -> bool:
    """Success or warning (0xB000, 0xB007, 0xB006): the object was stored."""
    return code == 0x0000 or (code & 0xF000) == 0xB000
