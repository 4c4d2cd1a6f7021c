"""FHIR R4 destination: a DiagnosticReport with its Observations, as one transaction Bundle
POSTed to the server's base URL (HAPI FHIR, an EHR's FHIR API, an interface engine's FHIR
listener). Built with fhir.resources and validated by its models before it leaves.

fhir.resources ships R4B (4.3) models, not 4.0.1: DiagnosticReport, Observation and Bundle did
not change between R4 and R4B in any element used here, so what is sent is valid R4.

What links it to the rest of the hospital:
  DiagnosticReport.identifier     urn:dicom:uid | urn:oid:<SR SOP Instance UID>
  DiagnosticReport.imagingStudy   ImagingStudy by identifier urn:dicom:uid | urn:oid:<StudyInstanceUID>
  DiagnosticReport.basedOn        ServiceRequest by identifier (type ACSN) = AccessionNumber
  subject                         Patient by identifier: PatientID, system from its issuer
One transaction, each entry a conditional create (ifNoneExist on its identifier): a resend
after a lost answer creates nothing twice, and a half-stored report cannot happen.

Answers: 2xx -> sent; 408, 429, 5xx, timeouts, refused connections -> retried; any other 4xx ->
failed for good, with the OperationOutcome's text.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

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
from cxr_node.destinations.notice import (
    OVERALL_CLASS,
    P_ABNORMAL,
    P_COVID,
    SERVICE,
    Concept,
    Notice,
    NoticeError,
    read_notice,
)
from cxr_node.queue.states import ExportKind
from cxr_node.results.identity import derived_uid
from cxr_node.results.wording import intended_use  # the SR's and SC's sentence

log = logging.getLogger(__name__)

DICOM_UID = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
IMAGING_REPORT = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
RETRIED_4XX = (408, 429)
FHIR_JSON = "application/fhir+json"


def _coding(concept: Concept) -> dict:
    return {"system": concept.system, "code": concept.code, "display": concept.meaning}


def _dicom_id(uid: str) -> dict:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def _when(value: datetime) -> str:
    """FHIR dateTime: a time needs its zone, so a time the header gave without one goes as a date."""
    return value.isoformat() if value.tzinfo is not None else value.date().isoformat()


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _full_url(report_uid: str, part: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, f'{report_uid}|{part}')}"


def patient_reference(notice: Notice, systems: dict[str, str], default_system: str, key: str) -> dict:
    """Patient by identifier: the system names who assigned the ID, or no one is matched by it."""
    if not notice.patient_id:
        raise NoticeError("the image has no PatientID")
    issuer = notice.patient_issuer
    system = issuer.system or systems.get(issuer.namespace, "") or default_system
    if not system:
        said = f"issuer {issuer.namespace!r}" if issuer.namespace else "no issuer"
        raise NoticeError(
            f"PatientID {notice.patient_id!r} has {said} with a universal ID; "
            f"set {key}.issuer_systems or {key}.patient_id_system"
        )
    return {"type": "Patient", "identifier": {"system": system, "value": notice.patient_id}}


def build_bundle(notice: Notice, settings: dict[str, Any], subject: dict, node_name: str):
    """The transaction Bundle (fhir.resources model, validated) for one notice."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    result = notice.result
    urgent = result.label in settings["urgent"]
    status = settings["result_status"]
    effective = _when(notice.study_time or notice.made_at)
    issued = _instant(notice.made_at)
    study = {"type": "ImagingStudy", "identifier": _dicom_id(notice.study_uid)} if notice.study_uid else None
    use = intended_use(result.trained)
    model = result.model if result.trained else f"{result.model} (untrained)"

    def observation(part: str, concept: Concept, value: dict) -> tuple[str, Any]:
        data = {
            "resourceType": "Observation",
            "identifier": [_dicom_id(derived_uid("fhir-observation", notice.report_uid, part))],
            "status": status,
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": [_coding(concept)], "text": concept.meaning},
            "subject": subject,
            "effectiveDateTime": effective,
            "issued": issued,
            "device": {"display": model},
            "note": [{"text": use}],
            **value,
        }
        if study:
            data["derivedFrom"] = [study]
        return _full_url(notice.report_uid, part), Observation.model_validate(data)

    flag = "N" if result.label == "Normal" else ("AA" if urgent else "A")
    observations = [
        observation(
            "class",
            OVERALL_CLASS,
            {
                "valueCodeableConcept": {"coding": [_coding(notice.concept)], "text": notice.concept.meaning},
                "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag}]}],
            },
        ),
        *(
            observation(
                part,
                concept,
                {"valueQuantity": {"value": round(100.0 * p, 2), "unit": "%", "system": UCUM, "code": "%"}},
            )
            for part, concept, p in (
                ("p-abnormal", P_ABNORMAL, result.p_abnormal),
                ("p-covid", P_COVID, result.p_covid),
            )
        ),
    ]
    conclusion = (
        f"{notice.concept.meaning} (P(COVID-19) {100 * result.p_covid:.2f} %, "
        f"P(abnormal) {100 * result.p_abnormal:.2f} %)"
        + (". The two models disagree" if result.models_disagree else "")
        + f". {use}. Model: {model}."
    )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [_dicom_id(notice.report_uid)],
        "status": status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [IMAGING_REPORT, _coding(SERVICE)], "text": SERVICE.meaning},
        "subject": subject,
        "effectiveDateTime": effective,
        "issued": issued,
        "performer": [{"display": node_name}],
        "result": [{"reference": url} for url, _ in observations],
        "conclusion": conclusion,
        "conclusionCode": [{"coding": [_coding(notice.concept)]}],
    }
    if study:
        report["imagingStudy"] = [study]
    if notice.accession:
        accession = {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": notice.accession}
        if notice.accession_issuer.system:
            accession["system"] = notice.accession_issuer.system
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": accession}]
    entries = [(url, obs, "Observation") for url, obs in observations]
    entries.append(
        (_full_url(notice.report_uid, "report"), DiagnosticReport.model_validate(report), "DiagnosticReport")
    )
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": url,
                    "resource": resource,
                    "request": {
                        "method": "POST",
                        "url": kind,
                        "ifNoneExist": f"identifier={DICOM_UID}|{resource.identifier[0].value}",
                    },
                }
                for url, resource, kind in entries
            ],
        }
    )


def outcome_text(response: requests.Response) -> str:
    """The OperationOutcome's issues in a line, or the start of whatever the body was."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue", []):
            words = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
            where = ", ".join(issue.get("expression") or issue.get("location") or [])
            parts.append(f"{issue.get('severity', '?')}: {words}" + (f" ({where})" if where else ""))
        return "; ".join(parts)
    return json.dumps(body)[:300]


def _base_url(key: str, value: Any) -> str:
    url = V.string(key, value).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"{key}: {value!r} must be the http(s) base URL of the FHIR server, e.g. http://hapi:8080/fhir"
        )
    return url


def _systems(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f'{key}: must be a table of issuer -> system, e.g. {{ HOSP = "urn:oid:1.2.3" }}')
    return {str(k): _system(f"{key}.{k}", v) for k, v in value.items()}


def _system(key: str, value: Any) -> str:
    text = V.string(key, value)
    if ":" not in text or " " in text:
        raise ConfigError(f"{key}: {value!r} must be a URI, e.g. urn:oid:1.2.3 or https://hospital.example/mrn")
    return text


def _token_file(key: str, value: Any) -> Path:
    path = Path(V.string(key, value))
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a readable file (it holds the bearer token)")
    return V.owner_only(key, path)


class FhirDestination(ExportDestination):
    type_name = "fhir"
    kinds = (ExportKind.NOTICE,)
    untrained_by_default = False

    def __init__(
        self,
        name: str,
        url: str,
        key: str = "destinations",
        timeout_s: float = 30.0,
        urgent: frozenset[str] = frozenset({"COVID-19"}),
        result_status: str = "preliminary",
        issuer_systems: dict[str, str] | None = None,
        patient_id_system: str = "",
        token_file: Path | None = None,
        node_name: str = "cxr-node",
    ) -> None:
        super().__init__(name)
        self.url = url
        self.key = key
        self.timeout_s = timeout_s
        self.settings = {"urgent": urgent, "result_status": result_status}
        self.issuer_systems = issuer_systems or {}
        self.patient_id_system = patient_id_system
        self.token_file = token_file
        self.node_name = node_name

    @classmethod
    def from_spec(cls, spec: DestinationSpec, node: NodeContext) -> FhirDestination:
        opts = Options(spec)
        built = cls(
            spec.name,
            opts.get("url", _base_url),
            spec.key,
            float(opts.get("timeout_s", V.positive, node.timeout_s)),
            frozenset(opts.get("urgent", result_classes, ("COVID-19",))),
            opts.get("result_status", V.choice("preliminary", "final"), "preliminary"),
            opts.get("issuer_systems", _systems, {}),
            opts.get("patient_id_system", _system, ""),
            opts.get("token_file", _token_file, None),
            f"cxr-node {node.ae_title}",
        )
        opts.done()
        return built

    def describe(self) -> str:
        return f"FHIR {self.url}"

    def bundle_json(self, item: Outgoing) -> str:
        notice = read_notice(item)
        subject = patient_reference(notice, self.issuer_systems, self.patient_id_system, self.key)
        bundle = build_bundle(notice, self.settings, subject, self.node_name)
        return bundle.model_dump_json(exclude_none=True, by_alias=True)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        return headers

    def send(self, objects: list[Outgoing]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for n, item in enumerate(objects):
            try:
                body = self.bundle_json(item)
            except ValueError as exc:  # NoticeError, a model that does not validate: the same every time
                deliveries.append(Delivery(Verdict.REFUSED, f"cannot make the DiagnosticReport: {exc}"))
                continue
            except Exception as exc:  # noqa: BLE001 - unreadable SR (I/O): retried, and said
                deliveries.append(
                    Delivery(
                        Verdict.RETRY, f"{item.path}: cannot make the DiagnosticReport: {type(exc).__name__}: {exc}"
                    )
                )
                continue
            try:
                response = requests.post(
                    self.url, data=body.encode("utf-8"), headers=self._headers(), timeout=self.timeout_s
                )
            except (requests.ConnectionError, requests.Timeout, OSError) as exc:
                why = f"{self.url}: {type(exc).__name__}: {exc}"
                if not deliveries:  # nothing decided yet: the dispatcher retries the whole batch
                    raise DestinationUnavailable(why) from exc
                deliveries.extend(
                    Delivery(Verdict.RETRY, why) for _ in objects[n:]
                )  # the server is away: the rest later
                return deliveries
            deliveries.append(self._delivery(response))
        return deliveries

    def _delivery(self, response: requests.Response) -> Delivery:
        code = response.status_code
        if 200 <= code < 300:
            return Delivery(Verdict.STORED, from_peer=True, note=f"HTTP {code}{_location(response)}")
        text = outcome_text(response)
        reason = f"HTTP {code} {response.reason}" + (f": {text}" if text else "")
        if 400 <= code < 500 and code not in RETRIED_4XX:
            return Delivery(Verdict.REFUSED, reason, from_peer=True)
        return Delivery(Verdict.RETRY, reason, from_peer=True)


def _location(response: requests.Response) -> str:
    """Where the server keeps the DiagnosticReport (transaction-response), for the log."""
    try:
        entries = response.json().get("entry", [])
        location = entries[-1]["response"]["location"]
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""
    return f" as {location}"
