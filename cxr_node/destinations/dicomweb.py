"""DICOMweb destination: STOW-RS (PS3.18 10.5) with dicomweb-client, all objects of a batch in one
request. The response's Referenced / Failed SOP Sequences say what became of each instance."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import requests
from pydicom import Dataset
from pydicom.uid import UID

from cxr_node import validation as V
from cxr_node.config import ConfigError, DestinationSpec
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
from cxr_node.dicom.status import SOP_CLASS_NOT_SUPPORTED, status_meaning

log = logging.getLogger(__name__)

PERMANENT_REFUSALS = frozenset({SOP_CLASS_NOT_SUPPORTED})


def _url(key: str, value) -> str:
    url = V.string(key, value).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"{key}: {value!r} must be an http(s) URL of the DICOMweb service root, e.g. http://pacs:8042/dicom-web"
        )
    return url


class DicomWebDestination(ExportDestination):
    type_name = "dicomweb"

    def __init__(self, name: str, url: str, timeout_s: float = 30.0) -> None:
        super().__init__(name)
        self.url = url
        self.timeout_s = timeout_s

    @classmethod
    def from_spec(cls, spec: DestinationSpec, node: NodeContext) -> DicomWebDestination:
        opts = Options(spec)
        url = opts.get("url", _url)
        timeout_s = float(opts.get("timeout_s", V.positive, node.timeout_s))
        opts.done()
        return cls(spec.name, url, timeout_s)

    def describe(self) -> str:
        return f"STOW-RS {self.url}"

    def _client(self):
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(self.url, timeout=self.timeout_s)
        client.set_http_retry_params(retry=False)  # the dispatcher retries, with its own back-off and end
        return client

    def send(self, objects: list[Outgoing]) -> list[Delivery]:
        deliveries: list[Delivery | None] = [None] * len(objects)
        datasets: list[Dataset] = []
        slots: list[int] = []
        for i, item in enumerate(objects):
            try:
                datasets.append(load(item))
                slots.append(i)
            except Exception as exc:  # noqa: BLE001 - unreadable file, or no report form without the illustration: retried
                deliveries[i] = Delivery(Verdict.RETRY, f"{item.path}: cannot prepare for sending: {exc}")
        if datasets:
            answer = self._store(datasets, nothing_else=len(datasets) == len(objects))
            for i, ds in zip(slots, datasets, strict=True):
                deliveries[i] = self._delivery(objects[i], ds, answer)
        return [d for d in deliveries if d is not None]

    def _store(self, datasets: list[Dataset], nothing_else: bool) -> Dataset | str:
        """The STOW-RS response data set, or the transport failure as text."""
        try:
            return self._client().store_instances(datasets)
        except requests.HTTPError as exc:
            response = exc.response
            body = _response_dataset(response)
            if body is not None and ("FailedSOPSequence" in body or "ReferencedSOPSequence" in body):
                return body  # 409 Conflict and the like: the per-instance answer is in the body
            why = (
                f"{self.url}: HTTP {response.status_code} {response.reason}"
                if response is not None
                else f"{self.url}: {exc}"
            )
        except (requests.ConnectionError, requests.Timeout, OSError) as exc:
            why = f"{self.url}: {type(exc).__name__}: {exc}"
        except ValueError as exc:  # an answer dicomweb-client cannot read
            why = f"{self.url}: unreadable STOW-RS response: {exc}"
        if nothing_else:
            raise DestinationUnavailable(why)
        return why

    @staticmethod
    def _delivery(item: Outgoing, ds: Dataset, answer: Dataset | str) -> Delivery:
        if isinstance(answer, str):
            return Delivery(Verdict.RETRY, answer)
        uid = str(ds.SOPInstanceUID)
        sent = None if uid == item.sop_instance_uid else ds
        for failed in answer.get("FailedSOPSequence", []):
            if str(failed.get("ReferencedSOPInstanceUID", "")) == uid:
                code = int(failed.get("FailureReason", 0xC000))
                verdict = Verdict.REFUSED if code in PERMANENT_REFUSALS else Verdict.RETRY
                return Delivery(verdict, status_meaning(code), from_peer=True, status=code, sop_instance_uid=uid)
        for ref in answer.get("ReferencedSOPSequence", []):
            if str(ref.get("ReferencedSOPInstanceUID", "")) == uid:
                code = int(ref.get("WarningReason", 0))
                return Delivery(Verdict.STORED, status=code, sop_instance_uid=uid, sent=sent, from_peer=True)
        if "ReferencedSOPSequence" not in answer and "FailedSOPSequence" not in answer:
            # A 200 without a body: PS3.18 says all instances were stored.
            return Delivery(Verdict.STORED, status=0, sop_instance_uid=uid, sent=sent, from_peer=True)
        return Delivery(
            Verdict.RETRY, f"STOW-RS response does not mention {UID(str(ds.SOPClassUID)).name} {uid}", from_peer=True
        )


def _response_dataset(response) -> Dataset | None:
    if response is None or not response.content:
        return None
    try:
        if "json" in response.headers.get("Content-Type", ""):
            return Dataset.from_json(response.json())
    except ValueError:
        return None
    return None
