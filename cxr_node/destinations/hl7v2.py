"""HL7 v2.5.1 ORU^R01 over MLLP: a result notice for a RIS or an interface engine (Mirth,
Rhapsody, Cloverleaf, ...), built and checked against the 2.5.1 message structure by hl7apy.

hl7apy rather than python-hl7 (`hl7`): hl7apy knows the 2.5.1 message structures and
datatypes, so the ORU is built by group, segment and field name and validated in strict mode
(segment order and cardinality, required fields, datatypes, lengths) before it leaves, and it
escapes values on output; python-hl7 parses well and has an MLLP client, but a message is built
from strings and nothing checks it against the standard. MLLP itself is a few lines (mllp.py),
with the destination's timeouts and TLS.

The message (one per result, original acknowledgement mode):
  MSH  MSH-10 derived from the SR's UID and the destination: a resend after a lost ACK carries
       the same control ID, so the engine can recognise it; MSH-18 UNICODE UTF-8
  PID  PID-3 PatientID with its assigning authority (IssuerOfPatientID and its universal ID)
  ORC  RE; ORC-3 accession number (filler order number); ORC-7.6 priority
  OBR  OBR-3 accession number; OBR-4 the AI service; OBR-7 study date/time; OBR-22 when the
       result was made; OBR-25 result status (P preliminary by default: a radiologist has not
       read it); OBR-27.6 priority
  TQ1  TQ1-9 priority (the 2.5.1 home of what ORC-7 / OBR-27 still carry for older engines)
  OBX  the class (CWE, SR's codes; OBX-8 N / A, AA for the urgent classes), P(abnormal) and
       P(COVID-19) (NM, %, UCUM), the model, "models disagree" when raised, the intended use,
       the Study Instance UID and the SR's SOP Instance UID

Acknowledgements (MSA-1, HL7 2.5.1 section 2.9): AA / CA -> sent. AR / CR (rejected) -> failed
for good, unless ERR-3 says the cause is not the message (206 record locked, 207 internal
error), which the standard lets the sender resend. AE / CE (error while processing) -> retried
with the dispatcher's back-off and end, unless ERR-3 names a fault of the message itself
(100-205: segment, field, table, type, version, key), which resending the same message cannot
mend -> failed for good. A missing, unreadable or foreign ACK, a timeout or a refused
connection -> retried.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hl7apy.exceptions import HL7apyException

from cxr_node import validation as V
from cxr_node.config import ConfigError, DestinationSpec, result_classes
from cxr_node.destinations.base import (
    Delivery,
    DestinationUnavailable,
    ExportDestination,
    NodeContext,
    Options,
    Outgoing,
    Verdict,
)
from cxr_node.destinations.mllp import MllpConnection, MllpError
from cxr_node.destinations.notice import (
    AI_MODEL,
    INTENDED_USE,
    MODELS_DISAGREE,
    OVERALL_CLASS,
    P_ABNORMAL,
    P_COVID,
    REPORT_UID,
    SERVICE,
    STUDY_UID,
    Concept,
    Notice,
    NoticeError,
    read_notice,
)
from cxr_node.queue.states import ExportKind
from cxr_node.results.wording import intended_use  # the SR's and SC's sentence

log = logging.getLogger(__name__)

VERSION = "2.5.1"
STATUS_CODES = {"preliminary": "P", "final": "F"}  # HL7 table 0123 / 0085
CONTENT_ERRORS = range(100, 206)  # HL7 table 0357: the message itself is at fault
TRANSIENT_ERRORS = (206, 207)  # record locked, internal error: not the message's fault
YES = Concept("373066001", "SCT", "Yes")
PRIORITY_NAMES = {"S": "Stat", "A": "ASAP", "R": "Routine"}  # HL7 table 0485

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Hl7Settings:
    sending_application: str
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"  # MSH-11: P production, T training, D debugging
    urgent: frozenset[str] = frozenset({"COVID-19"})  # classes sent with priority `urgent_priority`
    urgent_priority: str = "S"
    result_status: str = "preliminary"


def ts(value: datetime) -> str:
    """HL7 DTM: with its offset when the time has one, as the DICOM header stated it otherwise."""
    if value.tzinfo is None:
        return value.strftime("%Y%m%d%H%M%S")
    return value.strftime("%Y%m%d%H%M%S%z")


def control_id(report_uid: str, destination: str) -> str:
    """MSH-10 (ST, 20 characters in 2.5.1): the same for every attempt at one destination."""
    return hashlib.sha1(f"{report_uid}|{destination}".encode()).hexdigest()[:20].upper()


def build_oru(notice: Notice, settings: Hl7Settings, message_id: str, now: datetime):
    """The ORU^R01 as an hl7apy Message, validated against the 2.5.1 structure (strict)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    if not notice.patient_id:
        raise NoticeError("the image has no PatientID: an ORU needs PID-3")
    result = notice.result
    urgent = result.label in settings.urgent
    priority = settings.urgent_priority if urgent else "R"
    status = STATUS_CODES[settings.result_status]
    observed = notice.study_time or notice.made_at

    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    msh.msh_3.hd_1 = settings.sending_application
    msh.msh_4.hd_1 = settings.sending_facility
    msh.msh_5.hd_1 = settings.receiving_application
    msh.msh_6.hd_1 = settings.receiving_facility
    msh.msh_7 = ts(now)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = message_id
    msh.msh_11 = settings.processing_id
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"

    group = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = group.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    cx = pid.pid_3
    cx.cx_1 = _escaped(notice.patient_id)
    issuer = notice.patient_issuer
    if issuer.namespace or issuer.universal_id:
        cx.cx_4.hd_1 = _escaped(issuer.namespace)
        if issuer.universal_id:
            cx.cx_4.hd_2 = _escaped(issuer.universal_id)
            cx.cx_4.hd_3 = _escaped(issuer.universal_id_type)
    cx.cx_5 = _escaped(issuer.type_code or "MR")
    name = notice.patient_name
    xpn = pid.pid_5
    xpn.xpn_1.fn_1 = _escaped(name.family)
    for part, value in (("xpn_2", name.given), ("xpn_3", name.middle), ("xpn_4", name.suffix), ("xpn_5", name.prefix)):
        if value:
            setattr(xpn, part, _escaped(value))
    if notice.birth_date.isdigit():
        pid.pid_7 = notice.birth_date
    if notice.sex in ("M", "F", "O"):
        pid.pid_8 = notice.sex

    order = group.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = order.orc
    orc.orc_1 = "RE"
    _accession(orc.orc_3, notice)
    orc.orc_7.tq_6 = priority
    orc.orc_9 = ts(notice.made_at)
    obr = order.obr
    obr.obr_1 = "1"
    _accession(obr.obr_3, notice)
    obr.obr_4 = _coded(SERVICE)
    obr.obr_7 = ts(observed)
    obr.obr_22 = ts(notice.made_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = status
    obr.obr_27.tq_6 = priority
    tq1 = order.add_group("ORU_R01_TIMING_QTY").tq1
    tq1.tq1_1 = "1"
    tq1.tq1_9 = f"{priority}^{PRIORITY_NAMES.get(priority, priority)}^HL70485"

    observations: list[Any] = []

    def obx(value_type: str, concept: Concept):
        segment = order.add_group("ORU_R01_OBSERVATION").obx
        observations.append(segment)
        segment.obx_1 = str(len(observations))  # set ID: 1, 2, ...
        segment.obx_2 = value_type
        segment.obx_3 = _coded(concept)
        segment.obx_11 = status
        segment.obx_14 = ts(observed)
        segment.obx_19 = ts(notice.made_at)
        return segment

    klass = obx("CWE", OVERALL_CLASS)
    klass.obx_5 = _coded(notice.concept)
    klass.obx_8 = "N" if result.label == "Normal" else ("AA" if urgent else "A")
    for concept, p in ((P_ABNORMAL, result.p_abnormal), (P_COVID, result.p_covid)):
        number = obx("NM", concept)
        number.obx_5 = f"{100.0 * p:.2f}"
        number.obx_6 = "%^percent^UCUM"
    model = obx("ST", AI_MODEL)
    model.obx_5 = _escaped(result.model if result.trained else f"{result.model} (untrained)")
    if result.models_disagree:
        obx("CWE", MODELS_DISAGREE).obx_5 = _coded(YES)
    obx("TX", INTENDED_USE).obx_5 = _escaped(intended_use(result.trained))
    obx("ST", STUDY_UID).obx_5 = notice.study_uid
    obx("ST", REPORT_UID).obx_5 = notice.report_uid
    msg.validate()
    return msg


def _escaped(text: str) -> str:
    """Text as one ER7 value: the delimiters (| ^ ~ \\ &) as escape sequences, CR/LF as spaces.
    hl7apy leaves escape sequences as they are, so nothing is escaped twice."""
    text = " ".join(text.replace("\r", " ").replace("\n", " ").split())
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return out


def _coded(concept: Concept) -> str:
    return "^".join(_escaped(x) for x in (concept.code, concept.meaning, concept.scheme))


def _accession(field: Any, notice: Notice) -> None:
    if not notice.accession:
        return
    field.ei_1 = _escaped(notice.accession)
    issuer = notice.accession_issuer
    if issuer.namespace:
        field.ei_2 = _escaped(issuer.namespace)
    if issuer.universal_id:
        field.ei_3 = _escaped(issuer.universal_id)
        field.ei_4 = _escaped(issuer.universal_id_type)


# -- acknowledgements ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3 and ERR user/diagnostic messages, for operators
    error_codes: tuple[int, ...]  # ERR-3.1 (HL7 table 0357)


def parse_ack(raw: bytes) -> Ack:
    """MSA and ERR of an ACK; ValueError when it is not one."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = raw.decode("utf-8", errors="replace").replace("\n", "\r").strip("\r")
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except Exception as exc:  # noqa: BLE001 - hl7apy raises its own hierarchy for every kind of garbage
        raise ValueError(f"unreadable acknowledgement: {type(exc).__name__}: {exc}") from exc
    msa = [s for s in msg.children if s.name == "MSA"]
    if not msa:
        raise ValueError(f"answer has no MSA segment: {text[:80]!r}")
    code = msa[0].msa_1.to_er7().strip().upper()
    texts = [msa[0].msa_3.to_er7().strip()] if msa[0].msa_3.to_er7().strip() else []
    codes: list[int] = []
    for err in (s for s in msg.children if s.name == "ERR"):
        first = err.err_3.to_er7().split("^")[0].strip()
        legacy = err.err_1.to_er7().split("^")[3].split("&")[0].strip() if err.err_1.to_er7().count("^") >= 3 else ""
        for candidate in (first, legacy):
            if candidate.isdigit():
                codes.append(int(candidate))
                break
        for field in (err.err_8, err.err_7):
            value = field.to_er7().strip()
            if value:
                texts.append(value)
                break
    return Ack(code, msa[0].msa_2.to_er7().strip(), "; ".join(dict.fromkeys(texts)), tuple(codes))


def verdict_of(ack: Ack, sent_id: str) -> Delivery:
    if ack.control_id != sent_id:
        return Delivery(Verdict.RETRY, f"acknowledgement for message {ack.control_id!r}, not {sent_id!r}")
    detail = (f" (ERR {', '.join(map(str, ack.error_codes))})" if ack.error_codes else "") + (
        f": {ack.text}" if ack.text else ""
    )
    if ack.code in ("AA", "CA"):
        return Delivery(Verdict.STORED, from_peer=True, note=f"ACK {ack.code}")
    if ack.code in ("AR", "CR"):
        transient = ack.error_codes and all(c in TRANSIENT_ERRORS for c in ack.error_codes)
        verdict = Verdict.RETRY if transient else Verdict.REFUSED
        return Delivery(verdict, f"ACK {ack.code} rejected{detail}", from_peer=True)
    if ack.code in ("AE", "CE"):
        content = any(c in CONTENT_ERRORS for c in ack.error_codes)
        verdict = Verdict.REFUSED if content else Verdict.RETRY
        return Delivery(verdict, f"ACK {ack.code} error{detail}", from_peer=True)
    return Delivery(Verdict.RETRY, f"acknowledgement code {ack.code!r} is not an HL7 one{detail}", from_peer=True)


# -- the destination ----------------------------------------------------------------------


def _hl7_name(key: str, value: Any) -> str:
    text = V.string(key, value)
    if any(c in text for c in "|^~\\&\r\n") or len(text) > 227:
        raise ConfigError(f"{key}: {value!r} must be plain text without HL7 delimiters (| ^ ~ \\ &)")
    return text


class Hl7Destination(ExportDestination):
    type_name = "hl7"
    kinds = (ExportKind.NOTICE,)
    untrained_by_default = False

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        settings: Hl7Settings,
        timeout_s: float = 30.0,
        tls: ssl.SSLContext | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(name)
        self.host, self.port = host, port
        self.settings = settings
        self.timeout_s = timeout_s
        self.tls = tls
        self.clock = clock

    @classmethod
    def from_spec(cls, spec: DestinationSpec, node: NodeContext) -> Hl7Destination:
        opts = Options(spec)
        host = opts.get("host", V.string)
        port = opts.get("port", V.port)
        settings = Hl7Settings(
            sending_application=opts.get("sending_application", _hl7_name, node.ae_title),
            sending_facility=opts.get("sending_facility", _hl7_name, ""),
            receiving_application=opts.get("receiving_application", _hl7_name, ""),
            receiving_facility=opts.get("receiving_facility", _hl7_name, ""),
            processing_id=opts.get("processing_id", V.choice("P", "T", "D"), "P"),
            urgent=frozenset(opts.get("urgent", result_classes, ("COVID-19",))),
            urgent_priority=opts.get("urgent_priority", V.choice("S", "A"), "S"),
            result_status=opts.get("result_status", V.choice(*STATUS_CODES), "preliminary"),
        )
        timeout_s = float(opts.get("timeout_s", V.positive, node.timeout_s))
        tls = opts.get("tls", V.boolean, False)
        opts.done()
        if tls and node.tls is None:
            raise ConfigError(f"{spec.key}.tls: needs the node's certificate ([tls] cert and key)")
        return cls(spec.name, host, port, settings, timeout_s, node.tls if tls else None)

    def describe(self) -> str:
        return f"HL7 MLLP {self.host}:{self.port}"

    def message(self, item: Outgoing) -> tuple[str, bytes]:
        """(control ID, encoded ORU) for one notice. NoticeError / OSError when it cannot be made."""
        notice = read_notice(item)
        message_id = control_id(notice.report_uid, self.name)
        er7 = build_oru(notice, self.settings, message_id, self.clock()).to_er7()
        return message_id, er7.encode("utf-8")

    def send(self, objects: list[Outgoing]) -> list[Delivery]:
        deliveries: list[Delivery | None] = [None] * len(objects)
        ready: list[tuple[int, str, bytes]] = []
        for i, item in enumerate(objects):
            try:
                ready.append((i, *self.message(item)))
            except (NoticeError, HL7apyException) as exc:  # the report's content makes no valid ORU: no retry mends it
                deliveries[i] = Delivery(Verdict.REFUSED, f"cannot make the ORU: {type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - unreadable SR (I/O): retried, and said
                deliveries[i] = Delivery(
                    Verdict.RETRY, f"{item.path}: cannot make the ORU: {type(exc).__name__}: {exc}"
                )
        if ready:
            self._exchange(ready, deliveries, nothing_else=len(ready) == len(objects))
        return [d for d in deliveries if d is not None]

    def _exchange(self, ready: list[tuple[int, str, bytes]], deliveries: list, nothing_else: bool) -> None:
        where = f"{self.host}:{self.port}"
        connection = MllpConnection(self.host, self.port, self.timeout_s, self.tls)
        try:
            connection.connect()
        except OSError as exc:
            why = f"{where}: cannot connect: {type(exc).__name__}: {exc}"
            if nothing_else:
                raise DestinationUnavailable(why) from exc
            for i, _, _ in ready:
                deliveries[i] = Delivery(Verdict.RETRY, why)
            return
        with connection:
            for n, (i, message_id, data) in enumerate(ready):
                try:
                    answer = connection.exchange(data)
                except (MllpError, OSError) as exc:
                    why = f"{where}: {type(exc).__name__}: {exc}"
                    for j, _, _ in ready[n:]:  # the connection is in an unknown state: the rest later
                        deliveries[j] = Delivery(Verdict.RETRY, why)
                    return
                try:
                    deliveries[i] = verdict_of(parse_ack(answer), message_id)
                except ValueError as exc:
                    deliveries[i] = Delivery(Verdict.RETRY, f"{where}: {exc}")
