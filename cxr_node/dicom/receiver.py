"""Storage SCP + Verification SCP: checks each radiograph, writes it durably, queues it, then answers.

The success status leaves only after the file is fsynced and its row committed, so
every acknowledged image is on disk and in the queue, and only for an image the node
can decode: negotiation offers only transfer syntaxes with an installed decoder, and the
header is checked against the pixel data before the answer (dicom/checks.py). Anything
that prevents storing returns a failure status with an Error Comment naming the cause;
the modality keeps the image and can retry, and the node keeps serving.

Order of the checks in handle_store (each may answer on its own):
  0. a Deflated data set inflating past the budget -> 0xA900 (counted as a stream, before pynetdicom inflates it)
  1. UIDs of the command and the data set       -> 0xA900 naming the attribute
  2. radiograph + header consistency + the pixel budget ([decoding]) -> 0xA900 naming the attribute
  3. free space under receiver.min_free_mb       -> 0xA700
  4. same SOP Instance UID already stored        -> 0x0000 if the same bytes, else 0xA900 (never overwritten)
  5. durable write, then the queue row           -> 0xA700 when either fails
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from cxr_node.audit import AssociationAudit
from cxr_node.dicom.checks import (
    DEFAULT_BUDGET,
    PixelBudget,
    check_budget,
    check_deflated,
    check_header,
    check_radiograph,
    check_uids,
)
from cxr_node.dicom.status import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, OUT_OF_RESOURCES, SUCCESS
from cxr_node.dicom.syntaxes import decodable_transfer_syntaxes, decoder_available
from cxr_node.queue.jobs import JobQueue, ReceivedInstance
from cxr_node.selection.defaults import DEFAULT_SELECTION
from cxr_node.selection.header import header_summary
from cxr_node.selection.rules import Decision, Selection
from cxr_node.storage import StorageLayout, free_mb, uid_key, write_durably

log = logging.getLogger(__name__)

# Radiograph storage classes the node analyses; anything else is refused at association.
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

# C-STORE statuses: named in cxr_node.dicom.status, against pynetdicom's table

OTHER_CONTENT = "SOPInstanceUID already received with other content"


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
    max_associations: int = 32
    acse_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 10.0
    min_free_mb: float = 500.0
    ssl_context: ssl.SSLContext | None = None  # TLS listener on tls_port when set
    tls_port: int = 2762
    tls_only: bool = False  # no plain listener
    budget: PixelBudget = DEFAULT_BUDGET  # [decoding]: what one image may cost to decode

    @classmethod
    def from_config(cls, cfg) -> ReceiverSettings:
        from cxr_node.dicom.tls import server_context  # ConfigError naming tls.* when the files are wrong

        return cls(
            cfg.ae_title,
            cfg.bind,
            cfg.port,
            cfg.allowed_calling_aets,
            max_associations=cfg.max_associations,
            acse_timeout_s=cfg.acse_timeout_s,
            dimse_timeout_s=cfg.dimse_timeout_s,
            network_timeout_s=cfg.network_timeout_s,
            min_free_mb=cfg.min_free_mb,
            ssl_context=server_context(cfg),
            tls_port=cfg.tls_port,
            tls_only=cfg.tls_only,
            budget=cfg.pixel_budget,
        )


def dataset_sha256(encoded: bytes) -> str:
    """Content identity of a received instance: sha256 of the data set bytes as sent, without file meta."""
    return hashlib.sha256(encoded).hexdigest()


def stored_dataset_sha256(path: Path) -> str:
    """dataset_sha256 of a stored file (Part 10: skip preamble, prefix and the group 2 it declares)."""
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path}: not a DICOM file with File Meta Information Group Length")
    group_length = int.from_bytes(data[140:144], "little")
    return dataset_sha256(data[144 + group_length :])


class BoundedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server, with every accepted connection under the network timeout.

    pynetdicom leaves accepted sockets blocking with no timeout, so a peer that declares a 4 GB
    PDU and sends half of it holds its thread and an association slot forever; and it does the
    TLS handshake inside its single accept thread, so one silent TLS client stalls every other.
    Here the accepted socket gets `network_timeout`, and the handshake waits for the first read,
    in the association's own thread, under that timeout.
    """

    def get_request(self):
        assert self.socket is not None  # bound in AssociationServer.__init__, before any request
        client, address = self.socket.accept()
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class Receiver:
    """Owns one pynetdicom AE; `start()` runs it in background threads, `stop()` shuts it down."""

    def __init__(
        self,
        settings: ReceiverSettings,
        queue: JobQueue,
        layout: StorageLayout,
        write: Callable = write_durably,  # injectable: tests make the disk fail
        free_space: Callable[[Path], float] = free_mb,  # injectable: tests fill the disk
        decodable: Callable[[str], bool] = decoder_available,  # injectable: tests remove a decoder
        selection: Selection = DEFAULT_SELECTION,  # which images get a result ([selection] rules)
    ) -> None:
        self.settings = settings
        self.selection = selection
        self.queue = queue
        self.layout = layout
        self.write = write
        self.free_space = free_space
        self._servers: list = []
        # Look-up, write and row of one SOP Instance UID under one lock, so two associations
        # sending it at once cannot both pass the duplicate check and overwrite each other.
        self._sop_locks = [threading.Lock() for _ in range(64)]
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.require_called_aet = True
        if settings.allowed_calling_aets:
            self.ae.require_calling_aet = list(settings.allowed_calling_aets)
        # Bounded slots and times: a silent or half-sent connection is dropped after
        # network_timeout_s instead of holding a slot (pynetdicom's defaults wait forever).
        self.ae.maximum_associations = settings.max_associations
        self.ae.acse_timeout = settings.acse_timeout_s
        self.ae.dimse_timeout = settings.dimse_timeout_s
        self.ae.network_timeout = settings.network_timeout_s
        self.ae.add_supported_context(Verification)
        # Only syntaxes pydicom can decode here: a modality falls back to another (or uncompressed).
        self.transfer_syntaxes = decodable_transfer_syntaxes(available=decodable)
        for sop_class in RADIOGRAPH_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, self.transfer_syntaxes)
        self.ae.maximum_pdu_size = 0  # no limit: radiographs are large

    # -- handlers ------------------------------------------------------------------
    def handle_echo(self, event) -> int:
        return SUCCESS

    def handle_store(self, event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        # Before event.dataset: pynetdicom inflates a Deflated data set whole, bomb or not.
        problem = check_deflated(
            event.encoded_dataset(include_meta=False), event.context.transfer_syntax, self.settings.budget
        )
        if problem:
            log.warning("C-STORE from %s refused: %s", calling, problem)
            return _status(DATASET_DOES_NOT_MATCH, problem)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # undecodable stream from the peer
            log.warning("C-STORE from %s: cannot decode data set: %s", calling, exc)
            return _status(CANNOT_UNDERSTAND, f"Cannot decode data set: {exc}")

        problem = self.check(ds, event)
        if problem:
            log.warning("C-STORE from %s refused: %s", calling, problem)
            return _status(DATASET_DOES_NOT_MATCH, problem)
        # Decided from the header before anything is written: a skipped image is still stored and
        # acknowledged (the modality must not retry it), it only gets no result.
        decision = self.selection.decide(ds)

        free = self.free_space(self.layout.root)
        if free < self.settings.min_free_mb:
            log.error(
                "C-STORE from %s refused: %.0f MiB free < receiver.min_free_mb %.0f",
                calling,
                free,
                self.settings.min_free_mb,
            )
            return _status(OUT_OF_RESOURCES, "Storage full (receiver.min_free_mb), retry later")

        sop_uid = str(ds.SOPInstanceUID)
        with self._sop_locks[int(uid_key(sop_uid)[:8], 16) % len(self._sop_locks)]:
            return self._store(event, ds, calling, decision)

    def _store(self, event, ds: Dataset, calling: str, decision: Decision) -> int | Dataset:
        sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        sha256 = dataset_sha256(event.encoded_dataset(include_meta=False))
        try:
            known = self.queue.known_instance(sop_uid)
            if known is not None:
                return self._already_stored(known, sha256, sop_uid, calling)
        except Exception as exc:  # database down: the image is not acknowledged
            log.error("C-STORE %s: cannot look up in the database: %s", sop_uid, exc)
            return _status(OUT_OF_RESOURCES, "Database unavailable, retry later")

        path = self.layout.instance_path(study_uid, sop_uid)
        try:
            # encoded_dataset keeps the bytes exactly as the modality sent them.
            self.write(path, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("C-STORE %s: cannot write %s: %s", sop_uid, path, exc)
            return _status(OUT_OF_RESOURCES, f"Storage write failed: {exc.strerror or exc}")
        try:
            new = self.queue.enqueue(
                ReceivedInstance(
                    sop_uid,
                    str(ds.SOPClassUID),
                    study_uid,
                    calling,
                    str(path),
                    content_sha256=sha256,
                    skip=not decision.analyse,
                    rule=decision.rule,
                    reason=None if decision.analyse else decision.reason,
                    header=header_summary(ds),
                )
            )
        except Exception as exc:  # database down or full: the image is not acknowledged
            log.error("C-STORE %s: cannot record in the database: %s", sop_uid, exc)
            return _status(OUT_OF_RESOURCES, "Database unavailable, retry later")
        if not new:
            outcome = "already received"
        elif decision.analyse:
            outcome = "queued"
        else:
            outcome = f"stored, not analysed: rule {decision.rule}: {decision.reason}"
        log.info("C-STORE %s from %s: %s", sop_uid, calling, outcome)
        return SUCCESS

    def check(self, ds: Dataset, event) -> str | None:
        """Header-only checks; a one-line reason naming the attribute, or None."""
        return (
            check_uids(ds, event.request.AffectedSOPInstanceUID)
            or check_radiograph(ds, event.request.AffectedSOPClassUID)
            or check_header(ds, event.context.transfer_syntax)
            or check_budget(ds, self.settings.budget)
        )

    def _already_stored(self, known: dict, sha256: str, sop_uid: str, calling: str) -> int | Dataset:
        """Policy for a SOP Instance UID already stored: never overwrite what was (or is being) analysed."""
        stored = known.get("content_sha256")
        if stored is None:  # a row from before content hashes were recorded
            try:
                stored = stored_dataset_sha256(Path(known["path"]))
            except (OSError, ValueError) as exc:
                log.warning("C-STORE %s: cannot read the stored copy to compare: %s", sop_uid, exc)
        if stored == sha256:
            log.info("C-STORE %s from %s: already received", sop_uid, calling)
            return SUCCESS
        log.warning(
            "C-STORE %s from %s refused: already received with other content (stored sha256 %s, new %s); "
            "the stored file is kept",
            sop_uid,
            calling,
            stored,
            sha256,
        )
        return _status(DATASET_DOES_NOT_MATCH, OTHER_CONTENT)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.layout.ensure()
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)]
        handlers += AssociationAudit().handlers()  # one audit line per association (cxr_node.audit)
        s = self.settings
        if not (s.tls_only and s.ssl_context is not None):
            self._serve(s.port, None, handlers)
            log.info("listening as %s on %s:%d", s.ae_title, s.bind, self.port)
        if s.ssl_context is not None:
            self._serve(s.tls_port, s.ssl_context, handlers)
            log.info(
                "listening as %s on %s:%d with TLS%s",
                s.ae_title,
                s.bind,
                self.tls_port,
                " (client certificate required)" if s.ssl_context.verify_mode == ssl.CERT_REQUIRED else "",
            )

    def _serve(self, port: int, ssl_context: ssl.SSLContext | None, handlers: list) -> None:
        server = self.ae.make_server(
            (self.settings.bind, port),
            ssl_context=ssl_context,
            evt_handlers=handlers,
            server_class=BoundedAssociationServer,
        )
        threading.Thread(target=make_target(server.serve_forever), name=f"cxr-scp-{port}", daemon=True).start()
        self.ae._servers.append(server)  # as AE.start_server does: server.shutdown() removes it there
        self._servers.append(server)

    def _server(self, tls: bool):
        for server in self._servers:
            if (server.ssl_context is not None) == tls:
                return server
        return None

    @property
    def port(self) -> int | None:
        """The plain listener's port (None in TLS-only mode once started)."""
        server = self._server(tls=False)
        if server is None:
            return None if self._servers else self.settings.port
        return server.server_address[1]

    @property
    def tls_port(self) -> int | None:
        server = self._server(tls=True)
        return server.server_address[1] if server else None

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers = []


__all__ = [
    "OTHER_CONTENT",
    "RADIOGRAPH_SOP_CLASSES",
    "Receiver",
    "ReceiverSettings",
    "check_radiograph",
    "dataset_sha256",
    "stored_dataset_sha256",
]
