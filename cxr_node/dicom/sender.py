"""C-STORE SCU: sends result objects (SR, Secondary Capture) to a destination AE.

Comprehensive 3D SR fallback: with every Comprehensive 3D SR the sender also proposes
Comprehensive SR. When the destination accepts no context for 3D SR but one for
Comprehensive SR, the report goes as Comprehensive SR (same content, its own SOP
Instance UID, see cxr_node.results.sr.as_comprehensive_sr) and the outcome says so.
"""

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
    sop_class_uid: str = ""  # what was sent (or attempted)
    sop_instance_uid: str = ""
    fallback: bool = False  # a Comprehensive SR went in place of the file's Comprehensive 3D SR


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
        if Comprehensive3DSRStorage in offered and ComprehensiveSRStorage not in offered:
            offered[ComprehensiveSRStorage] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for sop_class, syntaxes in offered.items():
            for ts in syntaxes:
                ae.add_requested_context(sop_class, ts)
        return ae

    @staticmethod
    def _fallback(ds, accepted: set[str]):
        """(dataset to send, used fallback?, refusal comment or "")."""
        if str(ds.SOPClassUID) != Comprehensive3DSRStorage or Comprehensive3DSRStorage in accepted:
            return ds, False, ""
        if ComprehensiveSRStorage not in accepted:
            return ds, False, "no context for Comprehensive 3D SR nor Comprehensive SR"
        from cxr_node.results.sr import as_comprehensive_sr  # highdicom: import only when needed

        try:
            return as_comprehensive_sr(ds), True, ""
        except ValueError as exc:
            return ds, False, f"no 3D SR context; no Comprehensive SR form: {exc}"

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
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            for path, ds in zip(paths, datasets):
                ds, fallback, refusal = self._fallback(ds, accepted)
                sent = dict(sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID), fallback=fallback)
                if refusal:
                    outcomes.append(SendOutcome(SOP_CLASS_NOT_SUPPORTED, refusal[:64], **sent))
                    continue
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as exc:  # no accepted presentation context for this SOP class
                    outcomes.append(SendOutcome(SOP_CLASS_NOT_SUPPORTED, str(exc)[:64], **sent))
                    continue
                if not status:  # no response: connection dropped or timed out
                    raise SendError(f"{destination} gave no C-STORE response for {path}")
                outcomes.append(SendOutcome(int(status.Status), str(status.get("ErrorComment", "")), **sent))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes


def status_ok(code: int) -> bool:
    """Success or warning (0xB000, 0xB007, 0xB006): the object was stored."""
    return code == 0x0000 or (code & 0xF000) == 0xB000
