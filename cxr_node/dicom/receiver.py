"""Storage SCP + Verification SCP: checks each object, writes it durably, queues it, then answers.

The success status leaves only after the file is fsynced and its row committed, so
every acknowledged object is on disk and in the queue, and only for an image the node
can decode: negotiation offers only transfer syntaxes with an installed decoder, and a
radiograph's header is checked against its pixel data before the answer (dicom/checks.py), and
its decoding cost against the budget (decoding/budget.py).
Every storage SOP class is accepted (dicom/sop_classes.py), so a PACS routing a whole study
succeeds; only CR/DX radiographs are analysed, the rest (SR, SC, KO, PR, other modalities,
the node's own results coming back) is recorded as not analysed, or acknowledged and
discarded ([receiver] non_radiographs). Anything that prevents storing returns a failure
status with an Error Comment naming the cause; the sender keeps the object and can retry,
and the node keeps serving.

Order of the checks in handle_store (each may answer on its own):
  0. a Deflated data set inflating past the budget -> 0xA900 (counted as a stream, before pynetdicom inflates it)
  1. UIDs of the command and the data set        -> 0xA900 naming the attribute
  2. a radiograph: header consistency, the pixel  -> 0xA900 naming the attribute
     budget ([decoding]), then the selection
     anything else: the node's own result?        -> recorded as not analysed, or discarded
  3. free space under receiver.min_free_mb        -> 0xA700
  4. same SOP Instance UID already stored         -> 0x0000 if the same instance (dicom/same_instance.py),
                                                     else 0xA900 (the stored file is never written over)
  5. durable write, then the queue row            -> 0xA700 when either fails; database waits end
                                                     after receiver.db_wait_s (0xA700, retry later)
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode, encode_file_meta
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from cxr_node.audit import AssociationAudit
from cxr_node.decoding.budget import DEFAULT_BUDGET, PixelBudget, check_budget, check_deflated
from cxr_node.dicom.checks import check_header, check_radiograph, check_uids
from cxr_node.dicom.same_instance import instance_identity, same_instance
from cxr_node.dicom.sop_classes import RADIOGRAPH_SOP_CLASSES, is_radiograph, sop_class_name, storage_sop_classes
from cxr_node.dicom.status import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, OUT_OF_RESOURCES, SUCCESS
from cxr_node.dicom.syntaxes import decodable_transfer_syntaxes, decoder_available
from cxr_node.queue.jobs import JobQueue, ReceivedInstance
from cxr_node.selection.defaults import DEFAULT_SELECTION
from cxr_node.selection.header import header_summary
from cxr_node.selection.rules import Selection
from cxr_node.storage import StorageLayout, free_mb, uid_key, write_before_commit

log = logging.getLogger(__name__)

# C-STORE statuses: named in cxr_node.dicom.status, against pynetdicom's table

OTHER_CONTENT = "SOPInstanceUID already received with other content"
NON_RADIOGRAPH_POLICIES = ("record", "discard")
NOT_A_RADIOGRAPH = "not-a-radiograph"  # jobs.rule of an object recorded as not analysed
OWN_RESULT = "own-result"  # jobs.rule of the node's own SR / SC coming back


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
    non_radiographs: str = "record"  # "record" (stored, job skipped with the reason) or "discard"
    db_wait_s: float = 5.0  # the longest one C-STORE waits for the database, then 0xA700

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
            non_radiographs=cfg.non_radiographs,
            db_wait_s=cfg.db_wait_s,
        )


@dataclass(frozen=True)
class Verdict:
    """What becomes of an acknowledged object: analysed, or recorded with the rule and reason."""

    analyse: bool
    rule: str | None
    reason: str | None = None


def dataset_sha256(encoded: bytes | memoryview) -> str:
    """Content identity of a received instance: sha256 of the data set bytes as sent, without file meta."""
    return hashlib.sha256(encoded).hexdigest()


def stored_dataset_sha256(path: Path) -> str:
    """dataset_sha256 of a stored file (Part 10: skip preamble, prefix and the group 2 it declares)."""
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path}: not a DICOM file with File Meta Information Group Length")
    group_length = int.from_bytes(data[140:144], "little")
    return dataset_sha256(data[144 + group_length :])


class _HashBeside:
    """dataset_sha256 of a buffer in a thread of its own; result() joins it (and re-raises)."""

    def __init__(self, body: memoryview) -> None:
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(body,), name="cxr-hash", daemon=True)
        self._thread.start()

    def _run(self, body: memoryview) -> None:
        try:
            self._digest = dataset_sha256(body)
        except BaseException as exc:  # handed to result(): the C-STORE fails, never acknowledged
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


def _decode(event) -> Dataset:
    """event.dataset, without the copy of the whole stream pynetdicom makes only to see that it is
    not empty (7 MB for a radiograph, on every C-STORE)."""
    syntax = event.context.transfer_syntax
    ds = decode(event.request.DataSet, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    return ds


class _DbDeadline:
    """receiver.db_wait_s for all the database statements of one C-STORE together."""

    def __init__(self, wait_s: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadline = clock() + wait_s

    def left(self) -> float:
        return max(0.001, self.deadline - self.clock())


class _BulkRecvSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU with recv_into() in large steps.

    pynetdicom reads 4 KiB per recv() call into a growing bytearray: some 1,800 calls and
    copies for a 7 MB radiograph, most of the receiver's own CPU time after fsync and hashing
    (profiled in docs/benchmarks.md). Here the buffer grows with what arrives (1 MiB, then
    doubling), never to a length the peer only declared: a PDU header saying 4 GB costs nothing
    until 4 GB are sent. Same contract: returns what was read when the peer closes early, raises
    what the socket raises (its network timeout included).
    """

    def recv(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        buffer = bytearray(min(nr_bytes, 1 << 20))
        got = 0
        while got < nr_bytes:
            if got == len(buffer):
                buffer.extend(bytearray(min(len(buffer), nr_bytes - len(buffer))))
            with memoryview(buffer)[got:] as view:  # released before the buffer may grow again
                n = self.socket.recv_into(view)
            if n == 0:  # connection closed: what was read so far, as pynetdicom does
                break
            got += n
        del buffer[got:]
        return buffer


class _RequestHandler(RequestHandler):
    def _create_association(self):
        assoc = super()._create_association()
        # The same object with a faster recv(): no new socket, so no second connection event.
        assoc.dul.socket.__class__ = _BulkRecvSocket
        return assoc


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
        write: Callable = write_before_commit,  # injectable: tests make the disk fail
        free_space: Callable[[Path], float] = free_mb,  # injectable: tests fill the disk
        decodable: Callable[[str], bool] = decoder_available,  # injectable: tests remove a decoder
        selection: Selection = DEFAULT_SELECTION,  # which images get a result ([selection] rules)
        clock: Callable[[], float] = time.monotonic,  # the database deadline's clock
    ) -> None:
        if settings.non_radiographs not in NON_RADIOGRAPH_POLICIES:
            raise ValueError(f"receiver.non_radiographs: {settings.non_radiographs!r} not one of record, discard")
        self.settings = settings
        self.selection = selection
        self.queue = queue
        self.layout = layout
        self.write = write
        self.free_space = free_space
        self.clock = clock
        self.audit = AssociationAudit()  # one audit line per association (cxr_node.audit)
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
        # They include every native syntax, so every non-image object (SR, KO, PR) can come too.
        self.transfer_syntaxes = decodable_transfer_syntaxes(available=decodable)
        for sop_class in storage_sop_classes():  # every storage class: a routed study arrives whole
            self.ae.add_supported_context(sop_class, self.transfer_syntaxes)
        self.ae.maximum_pdu_size = 0  # no limit: radiographs are large

    # -- handlers ------------------------------------------------------------------
    def handle_echo(self, event) -> int:
        return SUCCESS

    def handle_store(self, event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        # Before decoding: pynetdicom inflates a Deflated data set whole, bomb or not. (Only then:
        # encoded_dataset() copies the data set, 7 MB for a radiograph.)
        syntax = event.context.transfer_syntax
        problem = syntax.is_deflated and check_deflated(
            event.encoded_dataset(include_meta=False), syntax, self.settings.budget
        )
        if problem:
            log.warning("C-STORE from %s refused: %s", calling, problem)
            return _status(DATASET_DOES_NOT_MATCH, problem)
        try:
            ds = _decode(event)
            ds.file_meta = event.file_meta
        except Exception as exc:  # undecodable stream from the peer
            log.warning("C-STORE from %s: cannot decode data set: %s", calling, exc)
            return _status(CANNOT_UNDERSTAND, f"Cannot decode data set: {exc}")

        radiograph = is_radiograph(event.context.abstract_syntax)
        problem = self.check(ds, event) if radiograph else self.check_other(ds, event)
        if problem:
            log.warning("C-STORE from %s refused: %s", calling, problem)
            return _status(DATASET_DOES_NOT_MATCH, problem)
        deadline = _DbDeadline(self.settings.db_wait_s, self.clock)
        sop_uid = str(ds.SOPInstanceUID)
        if radiograph:
            # Decided from the header before anything is written: a skipped image is still stored and
            # acknowledged (the modality must not retry it), it only gets no result.
            decision = self.selection.decide(ds)
            verdict = Verdict(decision.analyse, decision.rule, None if decision.analyse else decision.reason)
        else:
            try:
                verdict = self._not_analysed(ds, deadline)
            except Exception as exc:  # database down or busy: not acknowledged
                return self._database_failed(sop_uid, "look up", exc)
            if self.settings.non_radiographs == "discard":
                log.info("C-STORE %s from %s: acknowledged and discarded: %s", sop_uid, calling, verdict.reason)
                self.audit.note(event, "discarded")
                return SUCCESS

        free = self.free_space(self.layout.root)
        if free < self.settings.min_free_mb:
            log.error(
                "C-STORE from %s refused: %.0f MiB free < receiver.min_free_mb %.0f",
                calling,
                free,
                self.settings.min_free_mb,
            )
            return _status(OUT_OF_RESOURCES, "Storage full (receiver.min_free_mb), retry later")

        with self._sop_locks[int(uid_key(sop_uid)[:8], 16) % len(self._sop_locks)]:
            return self._store(event, ds, calling, verdict, deadline)

    def _not_analysed(self, ds: Dataset, deadline: _DbDeadline) -> Verdict:
        """Why an object that is not a CR/DX radiograph gets no result: the node's own, or its class."""
        name = sop_class_name(str(ds.SOPClassUID))
        own = self.queue.own_result(str(ds.SOPInstanceUID), deadline.left())
        if own is not None:
            reason = f"the node's own {str(own['kind']).upper()} ({name}) of image {own['source_sop_instance_uid']}"
            return Verdict(False, OWN_RESULT, reason[:500])
        return Verdict(False, NOT_A_RADIOGRAPH, f"not a radiograph: {name}")

    def _store(self, event, ds: Dataset, calling: str, verdict: Verdict, deadline: _DbDeadline) -> int | Dataset:
        sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        syntax = str(event.context.transfer_syntax)
        identity = instance_identity(ds)
        # The data set exactly as the sender encoded it, without a copy: hashed once in memory,
        # written once; the stored file is never read back to compare.
        with event.request.DataSet.getbuffer() as body:
            try:
                known = self.queue.known_instance(sop_uid, deadline.left())
            except Exception as exc:  # database down or busy: the image is not acknowledged
                return self._database_failed(sop_uid, "look up", exc)
            if known is not None:
                return self._already_stored(event, known, dataset_sha256(body), syntax, identity, sop_uid, calling)

            path = self.layout.instance_path(study_uid, sop_uid)
            head = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
            # Hashed beside the write: both release the GIL, and while the sender waits for our
            # answer the second core is free (5 of ~30 ms per 7 MB image: docs/benchmarks.md).
            hashing = _HashBeside(body)
            try:
                self.write(path, (head, body))
            except OSError as exc:
                log.error("C-STORE %s: cannot write %s: %s", sop_uid, path, exc)
                return _status(OUT_OF_RESOURCES, f"Storage write failed: {exc.strerror or exc}")
            finally:
                content_sha256 = hashing.result()  # joined before the buffer is released
        try:
            new = self.queue.enqueue(
                ReceivedInstance(
                    sop_uid,
                    str(ds.SOPClassUID),
                    study_uid,
                    calling,
                    str(path),
                    content_sha256=content_sha256,
                    transfer_syntax_uid=syntax,
                    identity=identity,
                    skip=not verdict.analyse,
                    rule=verdict.rule,
                    reason=verdict.reason,
                    header=header_summary(ds),
                ),
                deadline.left(),
            )
        except Exception as exc:  # database down, busy or full: the image is not acknowledged
            return self._database_failed(sop_uid, "record", exc)
        if not new:
            outcome = "already received"
        elif verdict.analyse:
            outcome = "queued"
        else:
            outcome = "not analysed"
        self.audit.note(event, outcome)
        if outcome == "not analysed":
            outcome = f"stored, not analysed: rule {verdict.rule}: {verdict.reason}"
        log.info("C-STORE %s from %s: %s", sop_uid, calling, outcome)
        return SUCCESS

    def _database_failed(self, sop_uid: str, what: str, exc: Exception) -> Dataset:
        log.error("C-STORE %s: cannot %s in the database: %s", sop_uid, what, exc)
        if "lock" in str(exc).lower() or "timeout" in str(exc).lower():
            return _status(OUT_OF_RESOURCES, "Database busy (receiver.db_wait_s), retry later")
        return _status(OUT_OF_RESOURCES, "Database unavailable, retry later")

    def check(self, ds: Dataset, event) -> str | None:
        """Header-only checks of a radiograph; a one-line reason naming the attribute, or None."""
        return (
            check_uids(ds, event.request.AffectedSOPInstanceUID)
            or check_radiograph(ds, event.request.AffectedSOPClassUID)
            or check_header(ds, event.context.transfer_syntax)
            or check_budget(ds, self.settings.budget)
        )

    def check_other(self, ds: Dataset, event) -> str | None:
        """Checks of an object that is stored but not analysed: UIDs usable as its identity."""
        problem = check_uids(ds, event.request.AffectedSOPInstanceUID)
        if problem:
            return problem
        if str(ds.get("SOPClassUID", "")) != str(event.request.AffectedSOPClassUID):
            return "SOPClassUID differs from the presentation context"
        return None

    def _already_stored(
        self, event, known: dict, sha256: str, syntax: str, identity: dict, sop_uid: str, calling: str
    ) -> int | Dataset:
        """Policy for a SOP Instance UID already stored: never overwrite what was (or is being) analysed."""
        stored_sha256, stored_syntax, stored_identity = (
            known.get("content_sha256"),
            known.get("transfer_syntax_uid"),
            known.get("identity"),
        )
        if stored_sha256 is None or stored_identity is None:  # a row from before these were recorded
            stored_sha256, stored_syntax, stored_identity = _legacy_record(Path(known["path"]), stored_sha256, sop_uid)
        same, why = same_instance(stored_sha256, stored_syntax, stored_identity, sha256, syntax, identity)
        if same:
            log.info("C-STORE %s from %s: already received (%s)", sop_uid, calling, why)
            self.audit.note(event, "already received")
            return SUCCESS
        log.warning(
            "C-STORE %s from %s refused: already received with other content: %s (stored sha256 %s, new %s); "
            "the stored file is kept",
            sop_uid,
            calling,
            why,
            stored_sha256,
            sha256,
        )
        return _status(DATASET_DOES_NOT_MATCH, OTHER_CONTENT)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.layout.ensure()
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)]
        handlers += self.audit.handlers()
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
            request_handler=_RequestHandler,
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


def _legacy_record(path: Path, sha256: str | None, sop_uid: str) -> tuple[str | None, str | None, dict | None]:
    """(sha256, transfer syntax, identity) of a file stored before rows recorded them: read once."""
    try:
        if sha256 is None:
            sha256 = stored_dataset_sha256(path)
        ds = dcmread(path, stop_before_pixels=True)
        return sha256, str(ds.file_meta.TransferSyntaxUID), instance_identity(ds)
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("C-STORE %s: cannot read the stored copy to compare: %s", sop_uid, exc)
        return sha256, None, None


__all__ = [
    "NON_RADIOGRAPH_POLICIES",
    "NOT_A_RADIOGRAPH",
    "OTHER_CONTENT",
    "OWN_RESULT",
    "RADIOGRAPH_SOP_CLASSES",
    "Receiver",
    "ReceiverSettings",
    "Verdict",
    "check_radiograph",
    "dataset_sha256",
    "stored_dataset_sha256",
]
