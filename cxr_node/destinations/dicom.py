"""DICOM destination: C-STORE to a peer AE, with the Comprehensive SR form of the report for a
PACS that takes no Comprehensive 3D SR (same content, its own SOP Instance UID)."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from cxr_node import validation as V
from cxr_node.config import ConfigError, Destination, DestinationSpec
from cxr_node.destinations.base import (
    Delivery,
    DestinationUnavailable,
    ExportDestination,
    NodeContext,
    Options,
    Outgoing,
    Verdict,
)
from cxr_node.destinations.objects import load
from cxr_node.dicom.sender import Sender, SendError, StoreRequest
from cxr_node.dicom.status import SOP_CLASS_NOT_SUPPORTED, status_meaning, status_ok

PERMANENT_REFUSALS = frozenset({SOP_CLASS_NOT_SUPPORTED})  # the peer does not take this class at all


def _comprehensive(ds: Dataset) -> Dataset:
    from cxr_node.results.sr import (
        as_comprehensive_sr,  # highdicom: imported only when needed
    )

    return as_comprehensive_sr(ds)


class DicomDestination(ExportDestination):
    type_name = "dicom"

    def __init__(self, name: str, peer: Destination, sender: Sender) -> None:
        super().__init__(name)
        self.peer = peer
        self.sender = sender

    @classmethod
    def from_spec(cls, spec: DestinationSpec, node: NodeContext) -> DicomDestination:
        opts = Options(spec)
        peer = Destination(
            opts.get("ae_title", V.ae_title),
            opts.get("host", V.string),
            opts.get("port", V.port),
        )
        timeout_s = float(opts.get("timeout_s", V.positive, node.timeout_s))
        tls = opts.get("tls", V.boolean, False)
        opts.done()
        if tls and node.tls is None:
            raise ConfigError(f"{spec.key}.tls: needs the node's certificate ([tls] cert and key)")
        return cls(spec.name, peer, Sender(node.ae_title, timeout_s, node.tls if tls else None))

    def describe(self) -> str:
        return str(self.peer)

    def send(self, objects: list[Outgoing]) -> list[Delivery]:
        deliveries: list[Delivery | None] = []
        requests, slots = [], []
        for item in objects:
            try:
                ds = load(item)
            except Exception as exc:  # noqa: BLE001 - unreadable file, or no report form without the illustration: retried
                deliveries.append(Delivery(Verdict.RETRY, f"{item.path}: cannot prepare for sending: {exc}"))
                continue
            alternative = (
                (ComprehensiveSRStorage, _comprehensive)
                if str(ds.SOPClassUID) == Comprehensive3DSRStorage
                else (None, None)
            )
            slots.append(len(deliveries))
            deliveries.append(None)
            requests.append(StoreRequest(ds, *alternative))
        try:
            outcomes = self.sender.send(self.peer, requests)
        except SendError as exc:
            if not any(d is not None for d in deliveries):
                raise DestinationUnavailable(str(exc)) from exc
            for slot in slots:
                deliveries[slot] = Delivery(Verdict.RETRY, str(exc))
        else:
            for slot, outcome in zip(slots, outcomes, strict=True):
                deliveries[slot] = self._delivery(objects[slot], outcome)
        return [d for d in deliveries if d is not None]

    @staticmethod
    def _delivery(item: Outgoing, outcome) -> Delivery:
        if outcome.status is None:
            return Delivery(Verdict.RETRY, outcome.transport_error)
        went_as_file = outcome.sop_instance_uid == item.sop_instance_uid
        if status_ok(outcome.status):
            note = "as Comprehensive SR" if outcome.fallback else ""
            return Delivery(
                Verdict.STORED,
                status=outcome.status,
                sop_instance_uid=outcome.sop_instance_uid,
                sent=None if went_as_file else outcome.sent,
                note=note,
                from_peer=True,
            )
        reason = status_meaning(outcome.status) + (f" ({outcome.comment})" if outcome.comment else "")
        verdict = Verdict.REFUSED if outcome.status in PERMANENT_REFUSALS else Verdict.RETRY
        return Delivery(
            verdict, reason, from_peer=True, status=outcome.status, sop_instance_uid=outcome.sop_instance_uid
        )
