"""Storage SCP + Verification SCP: checks each radiograph, writes it durably, queues it, then answers.

The success status leaves only after the file is fsynced and its row committed, so
every acknowledged image is on disk and in the queue. Anything that prevents that
returns a failure status with an Error Comment naming the cause; the modality keeps
the image and can retry, and the node keeps serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

from cxr_node.queue.jobs import JobQueue, ReceivedInstance
from cxr_node.storage import StorageLayout, write_durably

log = logging.getLogger(__name__)

# Radiograph storage classes the node analyses; anything else is refused at association.
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

# C-STORE statuses (PS3.4 Annex B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: 64 characters
    return ds


@dataclass
class ReceiverSettings:
    ae_title: str
    bind: str
    port: int
    allowed_calling_aets: tuple[str, ...] = ()


class Receiver:
    """Owns one pynetdicom AE; `start()` runs it in background threads, `stop()` shuts it down."""

    def __init__(
        self,
        settings: ReceiverSettings,
        queue: JobQueue,
        layout: StorageLayout,
        write: Callable = write_durably,  # injectable: tests make the disk fail
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.layout = layout
        self.write = write
        self._server = None
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.require_called_aet = True
        if settings.allowed_calling_aets:
            self.ae.require_calling_aet = list(settings.allowed_calling_aets)
        self.ae.add_supported_context(Verification)
        for sop_class in RADIOGRAPH_SOP_CLASSES:
            # Any transfer syntax pydicom can decode later; the file is stored as received.
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.ae.maximum_pdu_size = 0  # no limit: radiographs are large

    # -- handlers ------------------------------------------------------------------
    def handle_echo(self, event) -> int:
        return SUCCESS

    def handle_store(self, event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # undecodable stream from the peer
            log.warning("C-STORE from %s: cannot decode data set: %s", calling, exc)
            return _status(CANNOT_UNDERSTAND, f"Cannot decode data set: {exc}")

        problem = check_radiograph(ds, event.request.AffectedSOPClassUID)
        if problem:
            log.warning("C-STORE from %s refused: %s", calling, problem)
            return _status(DATASET_DOES_NOT_MATCH, problem)

        sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        try:
            path = self.layout.instance_path(study_uid, sop_uid)
        except ValueError:  # a UID with nothing usable as a file name (e.g. only spaces or "..")
            log.warning("C-STORE from %s refused: unusable UID %r / %r", calling, study_uid, sop_uid)
            return _status(DATASET_DOES_NOT_MATCH, "StudyInstanceUID or SOPInstanceUID not a UID")
        try:
            # encoded_dataset keeps the bytes exactly as the modality sent them.
            self.write(path, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("C-STORE %s: cannot write %s: %s", sop_uid, path, exc)
            return _status(OUT_OF_RESOURCES, f"Storage write failed: {exc.strerror or exc}")
        try:
            new = self.queue.enqueue(
                ReceivedInstance(sop_uid, str(ds.SOPClassUID), study_uid, calling, str(path))
            )
        except Exception as exc:  # database down or full: the image is not acknowledged
            log.error("C-STORE %s: cannot record in the database: %s", sop_uid, exc)
            return _status(OUT_OF_RESOURCES, "Database unavailable, retry later")
        log.info("C-STORE %s from %s: %s", sop_uid, calling, "queued" if new else "already received")
        return SUCCESS

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.layout.ensure()
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)]
        self._server = self.ae.start_server(
            (self.settings.bind, self.settings.port), block=False, evt_handlers=handlers
        )
        log.info("listening as %s on %s:%d", self.settings.ae_title, self.settings.bind, self.port)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.settings.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


REQUIRED = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "PixelData")


def check_radiograph(ds: Dataset, context_sop_class: str) -> str | None:
    """Cheap checks before storing; returns a one-line reason naming the attribute, or None."""
    for keyword in REQUIRED:
        if keyword not in ds or ds[keyword].value in (None, "", b""):
            return f"{keyword} missing"
    if str(ds.SOPClassUID) != str(context_sop_class):
        return "SOPClassUID differs from the presentation context"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"PhotometricInterpretation {photometric or 'missing'} not grey"
    return None


__all__ = ["Receiver", "ReceiverSettings", "RADIOGRAPH_SOP_CLASSES", "check_radiograph"]
