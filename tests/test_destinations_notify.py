"""Urgent-result notification: HL7 v2.5.1 ORU^R01 over MLLP and FHIR R4 DiagnosticReport
destinations, with `when` per destination, through the real queue (SQLite) and dispatcher
against a real MLLP listener and an HTTP FHIR endpoint on loopback (tests/notify_peers.py)
that parse and validate what they receive with hl7apy and fhir.resources."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.config import ConfigError, DestinationSpec, NodeConfig, parse_config
from cxr_node.destinations.base import NodeContext
from cxr_node.destinations.fhir import FhirDestination
from cxr_node.destinations.hl7v2 import Hl7Destination, Hl7Settings, control_id
from cxr_node.destinations.registry import build_destinations
from cxr_node.destinations.routing import Route, plan, routes
from cxr_node.dispatcher import Dispatcher, ExportPolicy
from cxr_node.queue.exports import ExportQueue
from cxr_node.queue.jobs import ExportItem, JobQueue, ReceivedInstance, ResultRecord
from cxr_node.queue.reports import Reports
from cxr_node.queue.schema import open_database
from cxr_node.queue.states import ExportKind, ExportState
from tests import peers, test_destinations_dicom, test_dispatcher, test_receiver_tls
from tests.notify_peers import FhirServer, MllpListener, unescape
from tests.test_dispatcher import FakeClock, rows
from tests.test_results_support import CASES, make_results, source_copy

scp = test_destinations_dicom.scp
pki = test_receiver_tls.pki
silent_peer = test_dispatcher.silent_peer

OID = "1.2.826.0.1.3680043.10.1234"  # the hospital's patient ID issuer
ACC_OID = "1.2.826.0.1.3680043.10.1235"


def record(case: str, trained: bool = True) -> ResultRecord:
    r = CASES[case]
    return ResultRecord(r.label.value, r.p_abnormal, r.p_covid, r.models_disagree, "cxr-covid-moura2020 v3", trained)


def identified(rg1_uncr, **changes) -> Dataset:
    """The radiograph as a hospital sends it: patient ID with its issuer, accession with its issuer."""
    ds = source_copy(rg1_uncr, **changes)
    ds.PatientID = changes.get("PatientID", "MRN0042")
    ds.PatientName = changes.get("PatientName", "O'Brien|Smith^Anne^Marie")
    ds.IssuerOfPatientID = "HOSP"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = OID
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.AccessionNumber = changes.get("AccessionNumber", "ACC-2026-77")
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "RIS"
    issuer.UniversalEntityID = ACC_OID
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    return ds


@pytest.fixture
def queue(tmp_path):
    return JobQueue(open_database(f"sqlite:///{tmp_path / 'q.db'}"), FakeClock())


def export_queue(queue: JobQueue) -> ExportQueue:
    """The export rows of `queue`'s database, on its clock (what the dispatcher works on)."""
    return ExportQueue(queue.engine, queue.clock)


@pytest.fixture
def result(queue, rg1_uncr, tmp_path):
    """add(case, routes, trained=True, source=None) -> (source, files): one analysed image, its exports
    recorded as the worker records them (routing.plan)."""

    def add(case, route_list, trained=True, source=None):
        source = source if source is not None else identified(rg1_uncr)
        _, files = make_results(rg1_uncr, tmp_path / f"r{len(list(tmp_path.iterdir()))}", case, source=source)
        uid = pydicom.uid.generate_uid()
        queue.enqueue(ReceivedInstance(uid, str(source.SOPClassUID), str(source.StudyInstanceUID), "MOD", "/x"))
        (job,) = queue.claim("w", 60)
        rec = record(case, trained)
        items = plan(
            route_list,
            rec.label,
            rec.trained,
            {
                "sc": ExportItem("sc", str(files.sc_path), files.sc_uid),
                "sr": ExportItem("sr", str(files.sr_path), files.sr_uid),
                ExportKind.NOTICE: ExportItem(ExportKind.NOTICE, str(files.sr_path), files.sr_uid),
            },
        )
        assert queue.complete(job, rec, items)
        return source, files

    return add


@pytest.fixture
def mllp():
    listener = MllpListener()
    yield listener
    listener.close()


@pytest.fixture
def fhir():
    server = FhirServer()
    yield server
    server.close()


def hl7(listener, name="ris", timeout_s=10.0, **settings) -> Hl7Destination:
    return Hl7Destination(
        name,
        "127.0.0.1",
        listener if isinstance(listener, int) else listener.port,
        Hl7Settings("CXR_NODE", "RADIOLOGY", "RIS", "HOSP", **settings),
        timeout_s,
    )


def fhir_dest(server, name="ehr", **kw) -> FhirDestination:
    return FhirDestination(name, server if isinstance(server, str) else server.url, "destinations[1]", 10.0, **kw)


RIS = Route("ris", (ExportKind.NOTICE,), None, untrained=False)
EHR = Route("ehr", (ExportKind.NOTICE,), None, untrained=False)


def drain(dispatcher, rounds=4):
    return sum(dispatcher.run_once() for _ in range(rounds))


# -- HL7 v2 --------------------------------------------------------------------------------


def test_oru_carries_identity_accession_class_probabilities_and_raised_priority(queue, result, mllp):
    source, files = result("covid", [RIS])
    dispatcher = Dispatcher(export_queue(queue), {"ris": hl7(mllp)})
    assert dispatcher.run_once() == 1
    row = rows(queue)[("ris", ExportKind.NOTICE)]
    assert (row["state"], row["attempts"], row["last_error"]) == (ExportState.SENT, 1, None)
    (got,) = mllp.received
    assert got.error == "", got.error  # hl7apy parsed and validated it as a 2.5.1 ORU^R01
    assert got.message.name == "ORU_R01"
    msh = got.segments("MSH")[0]
    assert msh[3:7] == ["CXR_NODE", "RADIOLOGY", "RIS", "HOSP"]
    assert (msh[9], msh[10], msh[11], msh[12]) == ("ORU^R01^ORU_R01", control_id(files.sr_uid, "ris"), "P", "2.5.1")
    pid = got.segments("PID")[0]
    assert pid[3] == f"MRN0042^^^HOSP&{OID}&ISO^MR"
    # The name's "|" travelled escaped and came back whole through the parser.
    name = got.message.oru_r01_patient_result.oru_r01_patient.pid.pid_5
    assert unescape(name.xpn_1.fn_1.to_er7()) == "O'Brien|Smith" and name.xpn_2.to_er7() == "Anne"
    assert pid[5].startswith("O'Brien\\F\\Smith^Anne^Marie")
    orc, obr = got.segments("ORC")[0], got.segments("OBR")[0]
    assert orc[3] == obr[3] == f"ACC-2026-77^RIS^{ACC_OID}^ISO"
    assert obr[25] == "P" and obr[27] == orc[7] == "^^^^^S"  # preliminary; STAT for COVID-19
    assert got.segments("TQ1")[0][9] == "S^Stat^HL70485"
    obx = got.obx()
    assert obx["CXR005"][2] == "CWE" and obx["CXR005"][5] == "840539006^COVID-19^SCT" and obx["CXR005"][8] == "AA"
    assert (obx["CXR011"][2], obx["CXR011"][5], obx["CXR011"][6]) == ("NM", "90.12", "%^percent^UCUM")
    assert (obx["CXR012"][5], obx["CXR012"][6]) == ("77.88", "%^percent^UCUM")
    assert obx["110180"][5] == str(source.StudyInstanceUID)
    assert obx["CXR101"][5] == files.sr_uid
    assert "not for diagnostic use" in obx["CXR009"][5]
    assert [row[1] for row in got.segments("OBX")] == [str(i) for i in range(1, len(obx) + 1)]


def test_normal_goes_routine_and_pathological_not_urgent_unless_chosen(queue, result, mllp):
    result("normal", [RIS])
    result("pathological", [RIS])
    dispatcher = Dispatcher(export_queue(queue), {"ris": hl7(mllp, urgent=frozenset({"COVID-19", "Pathological"}))})
    assert drain(dispatcher) == 2
    normal, pathological = mllp.received
    assert normal.segments("OBR")[0][27] == "^^^^^R" and normal.obx()["CXR005"][8] == "N"
    assert normal.obx()["CXR005"][5] == "17621005^Normal^SCT"
    assert pathological.segments("OBR")[0][27] == "^^^^^S" and pathological.obx()["CXR005"][8] == "AA"
    assert pathological.obx()["CXR005"][5].startswith("CXR001^Pathological")


@pytest.mark.parametrize(
    "answers, state, attempts, error",
    [
        (["AE", "AA"], ExportState.SENT, 2, None),  # AE: retried with the dispatcher's back-off
        (["CE", "CA"], ExportState.SENT, 2, None),  # commit-level codes read the same way
        ([("AR", None, "unknown patient")], ExportState.FAILED, 1, "refused NOTICE: ACK AR rejected: unknown patient"),
        (
            [("AE", 101, "OBR-4 missing")],
            ExportState.FAILED,
            1,
            "refused NOTICE: ACK AE error (ERR 101): OBR-4 missing",
        ),
        ([("AR", 207, "database down"), "AA"], ExportState.SENT, 2, None),  # AR for a cause not the message's
        (["silent", "AA"], ExportState.SENT, 2, None),  # no ACK in time: retried
    ],
)
def test_acknowledgements_end_or_retry_as_they_mean(queue, result, mllp, answers, state, attempts, error):
    result("covid", [RIS])
    mllp.answers.extend(answers)
    dispatcher = Dispatcher(export_queue(queue), {"ris": hl7(mllp, timeout_s=1.0)}, ExportPolicy((5.0,), 10, 0))
    assert dispatcher.run_once() == 1
    first = rows(queue)[("ris", ExportKind.NOTICE)]
    queue.clock.advance(6)
    dispatcher.run_once()
    row = rows(queue)[("ris", ExportKind.NOTICE)]
    assert (row["state"], row["attempts"]) == (state, attempts), row
    if error:
        assert row["last_error"] == error
    else:
        assert row["last_error"] is None and first["state"] == ExportState.PENDING
        assert first["last_error"]  # the first attempt's reason was recorded
    # A resend after a lost ACK is the same message: the engine can tell.
    assert len({m.segments("MSH")[0][10] for m in mllp.received}) == 1


def test_refused_connection_is_retried_then_given_up_like_a_dicom_destination(queue, result):
    result("covid", [RIS])
    dispatcher = Dispatcher(
        export_queue(queue), {"ris": hl7(peers.free_port())}, ExportPolicy((5.0,), max_attempts=2, give_up_after_s=0)
    )
    assert dispatcher.run_once() == 1
    row = rows(queue)[("ris", ExportKind.NOTICE)]
    assert row["state"] == ExportState.PENDING and "cannot connect" in row["last_error"]
    queue.clock.advance(6)
    assert dispatcher.run_once() == 1
    row = rows(queue)[("ris", ExportKind.NOTICE)]
    assert row["state"] == ExportState.FAILED and row["last_error"].endswith("(gave up after 2 attempts)")


def test_image_without_patient_id_fails_at_once_with_the_reason(queue, result, rg1_uncr, mllp):
    result("covid", [RIS], source=identified(rg1_uncr, PatientID=""))
    assert Dispatcher(export_queue(queue), {"ris": hl7(mllp)}).run_once() == 1
    row = rows(queue)[("ris", ExportKind.NOTICE)]
    assert row["state"] == ExportState.FAILED and "PatientID" in row["last_error"]
    assert mllp.received == []


# -- FHIR ----------------------------------------------------------------------------------


def test_fhir_report_links_study_accession_and_patient_and_is_stored_once(queue, result, fhir):
    source, files = result("covid-disagree", [EHR])
    dispatcher = Dispatcher(export_queue(queue), {"ehr": fhir_dest(fhir)})
    assert dispatcher.run_once() == 1
    row = rows(queue)[("ehr", ExportKind.NOTICE)]
    assert row["state"] == ExportState.SENT, row
    assert fhir.store.invalid == []
    (report,) = fhir.store.resources["DiagnosticReport"]
    assert report["status"] == "preliminary"
    assert report["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{files.sr_uid}"}]
    assert report["imagingStudy"][0]["identifier"] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{source.StudyInstanceUID}",
    }
    based_on = report["basedOn"][0]
    assert based_on["type"] == "ServiceRequest"
    assert based_on["identifier"]["type"]["coding"][0]["code"] == "ACSN"
    assert (based_on["identifier"]["system"], based_on["identifier"]["value"]) == (f"urn:oid:{ACC_OID}", "ACC-2026-77")
    assert report["subject"]["identifier"] == {"system": f"urn:oid:{OID}", "value": "MRN0042"}
    assert report["conclusionCode"][0]["coding"][0]["code"] == "840539006"
    assert "disagree" in report["conclusion"] and "not for diagnostic use" in report["conclusion"]
    observations = {o["code"]["coding"][0]["code"]: o for o in fhir.store.resources["Observation"]}
    assert [r["reference"] for r in report["result"]] == [f"Observation/{o['id']}" for o in observations.values()]
    assert observations["CXR005"]["valueCodeableConcept"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert observations["CXR005"]["interpretation"][0]["coding"][0]["code"] == "AA"
    assert observations["CXR011"]["valueQuantity"] == {
        "value": 30.03,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    assert observations["CXR012"]["valueQuantity"]["value"] == 81.23
    # An operator resends it (or an answer was lost): conditional creates store nothing twice.
    export_queue(queue).resend(row["id"])
    assert dispatcher.run_once() == 1
    assert len(fhir.store.posts) == 2
    assert len(fhir.store.resources["DiagnosticReport"]) == 1 and len(fhir.store.resources["Observation"]) == 3


@pytest.mark.parametrize(
    "answers, state, attempts, error",
    [
        ([500], ExportState.SENT, 2, None),
        ([503], ExportState.SENT, 2, None),
        ([429], ExportState.SENT, 2, None),
        ([408], ExportState.SENT, 2, None),
        ([400], ExportState.FAILED, 1, "refused NOTICE: HTTP 400 Bad Request: error: test server answers 400 as asked"),
        ([422], ExportState.FAILED, 1, "refused NOTICE: HTTP 422 Unprocessable Entity: error: test server answers 422"),
    ],
)
def test_fhir_answers_end_or_retry(queue, result, fhir, answers, state, attempts, error):
    result("pathological", [EHR])
    fhir.answers.extend(answers)
    dispatcher = Dispatcher(export_queue(queue), {"ehr": fhir_dest(fhir)}, ExportPolicy((5.0,), 10, 0))
    assert dispatcher.run_once() == 1
    queue.clock.advance(6)
    dispatcher.run_once()
    row = rows(queue)[("ehr", ExportKind.NOTICE)]
    assert (row["state"], row["attempts"]) == (state, attempts), row
    if error:
        assert row["last_error"].startswith(error), row["last_error"]
    else:
        assert len(fhir.store.resources["DiagnosticReport"]) == 1


def test_fhir_server_that_never_answers_is_retried(queue, result, silent_peer):
    result("covid", [EHR])
    destination = FhirDestination("ehr", f"http://127.0.0.1:{silent_peer}/fhir", timeout_s=1.0)
    assert Dispatcher(export_queue(queue), {"ehr": destination}).run_once() == 1
    row = rows(queue)[("ehr", ExportKind.NOTICE)]
    assert row["state"] == ExportState.PENDING and "Timeout" in row["last_error"], row["last_error"]


def test_fhir_server_away_is_retried(queue, result):
    result("covid", [EHR])
    dispatcher = Dispatcher(export_queue(queue), {"ehr": fhir_dest(f"http://127.0.0.1:{peers.free_port()}/fhir")})
    assert dispatcher.run_once() == 1
    row = rows(queue)[("ehr", ExportKind.NOTICE)]
    assert row["state"] == ExportState.PENDING and "ConnectionError" in row["last_error"]


def test_patient_without_a_universal_issuer_needs_the_configured_system(queue, result, rg1_uncr, fhir):
    source = identified(rg1_uncr)
    del source.IssuerOfPatientIDQualifiersSequence
    result("covid", [EHR], source=source)
    assert Dispatcher(export_queue(queue), {"ehr": fhir_dest(fhir)}).run_once() == 1
    row = rows(queue)[("ehr", ExportKind.NOTICE)]
    assert row["state"] == ExportState.FAILED
    assert "issuer 'HOSP'" in row["last_error"] and "destinations[1].issuer_systems" in row["last_error"]
    assert fhir.store.posts == []
    export_queue(queue).resend(row["id"])
    dispatcher = Dispatcher(
        export_queue(queue), {"ehr": fhir_dest(fhir, issuer_systems={"HOSP": "https://hosp.example/mrn"})}
    )
    assert dispatcher.run_once() == 1
    (report,) = fhir.store.resources["DiagnosticReport"]
    assert report["subject"]["identifier"] == {"system": "https://hosp.example/mrn", "value": "MRN0042"}


# -- when: each destination gets exactly the classes it is configured for ------------------------


@pytest.mark.slow
def test_each_destination_gets_exactly_its_classes(queue, result, scp, mllp, fhir):
    cfg = parse_config(
        {
            "destinations": [
                {"name": "pacs", "type": "dicom", "ae_title": "TEST_PACS", "host": "127.0.0.1", "port": 1},
                {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": 1, "when": ["COVID-19", "Pathological"]},
                {"name": "ehr", "type": "fhir", "url": "http://127.0.0.1:1/fhir", "when": ["COVID-19"]},
            ]
        }
    )
    route_list = routes(cfg)
    sent = {case: result(case, route_list)[1] for case in ("covid", "pathological", "normal")}
    pacs = scp()
    dispatcher = Dispatcher(export_queue(queue), {"pacs": pacs.destination(), "ris": hl7(mllp), "ehr": fhir_dest(fhir)})
    assert drain(dispatcher) == 6 + 2 + 1
    with queue.engine.connect() as conn:
        from cxr_node.queue.tables import exports

        found = sorted((r.destination, r.kind, r.state) for r in conn.execute(exports.select()))
    assert found.count(("pacs", "sc", "sent")) == found.count(("pacs", "sr", "sent")) == 3
    assert found.count(("ris", ExportKind.NOTICE, "sent")) == 2 and found.count(("ehr", ExportKind.NOTICE, "sent")) == 1
    assert len(found) == 9  # nothing recorded for the classes a destination does not take
    assert sorted(m.obx()["CXR101"][5] for m in mllp.received) == sorted(
        [sent["covid"].sr_uid, sent["pathological"].sr_uid]
    )
    (report,) = fhir.store.resources["DiagnosticReport"]
    assert report["identifier"][0]["value"] == f"urn:oid:{sent['covid'].sr_uid}"
    assert len(pacs.received) == 6
    # The status page's destination rows count the notices like the DICOM objects.
    page = {(r.name, r.sent, r.pending, r.failed) for r in Reports(queue.engine).destinations()}
    assert page == {("pacs", 6, 0, 0), ("ris", 2, 0, 0), ("ehr", 1, 0, 0)}


def test_untrained_results_notify_only_where_told(queue, result, mllp):
    told = Route("told", (ExportKind.NOTICE,), None, untrained=True)
    result("covid", [RIS, told, Route("pacs")], trained=False)
    found = rows(queue)
    assert ("ris", ExportKind.NOTICE) not in found and ("told", ExportKind.NOTICE) in found
    assert found[("pacs", "sr")]["state"] == ExportState.PENDING  # a DICOM destination takes them by default
    assert drain(Dispatcher(export_queue(queue), {"told": hl7(mllp, "told")})) == 1
    (got,) = mllp.received
    assert "UNTRAINED" in got.obx()["CXR009"][5] and got.obx()["CXR007"][5].endswith("(untrained)")


def test_when_for_a_dicom_destination_keeps_other_results_on_disk(queue, result):
    result("normal", [Route("pacs", when=frozenset({"COVID-19"}))])
    found = rows(queue)
    assert {k: r["state"] for k, r in found.items()} == {
        (None, "sc"): ExportState.LOCAL,
        (None, "sr"): ExportState.LOCAL,
    }


# -- configuration ------------------------------------------------------------------------------


def _config(*tables):
    return parse_config({"destinations": list(tables)})


HL7 = {"name": "ris", "type": "hl7", "host": "ris.example", "port": 2575}
FHIR = {"name": "ehr", "type": "fhir", "url": "https://ehr.example/fhir/R4"}


@pytest.mark.parametrize(
    "tables, message",
    [
        (
            [HL7, HL7 | {"name": "b"}, FHIR | {"when": ["covid"]}],
            'destinations[2].when: unknown class "covid" (known: Normal, Pathological, COVID-19)',
        ),
        ([HL7 | {"when": []}], "destinations[0].when: must be a non-empty list of result classes"),
        ([HL7 | {"when": "COVID-19"}], "destinations[0].when: must be a non-empty list"),
        ([HL7 | {"untrained": "yes"}], "destinations[0].untrained: 'yes' must be true or false"),
    ],
)
def test_config_errors_name_the_key(tables, message):
    with pytest.raises(ConfigError) as err:
        _config(*tables)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    "table, message",
    [
        (HL7 | {"urgent": ["Covid"]}, 'destinations[0].urgent: unknown class "Covid"'),
        ({"name": "ris", "type": "hl7", "port": 2575}, "destinations[0].host: missing"),
        (HL7 | {"sending_facility": "A|B"}, "destinations[0].sending_facility: 'A|B' must be plain text"),
        (HL7 | {"result_status": "signed"}, "destinations[0].result_status: 'signed'"),
        (HL7 | {"tls": True}, "destinations[0].tls: needs the node's certificate"),
        (HL7 | {"fhir": 1}, "destinations[0].fhir: unknown key for a hl7 destination"),
        (FHIR | {"url": "ehr.example/fhir"}, "destinations[0].url: 'ehr.example/fhir' must be the http(s) base URL"),
        (
            FHIR | {"issuer_systems": {"HOSP": "not a uri"}},
            "destinations[0].issuer_systems.HOSP: 'not a uri' must be a URI",
        ),
        (
            FHIR | {"token_file": "/nonexistent/token"},
            "destinations[0].token_file: /nonexistent/token is not a readable file",
        ),
    ],
)
def test_type_keys_are_checked_naming_the_key(table, message):
    with pytest.raises(ConfigError) as err:
        build_destinations(_config(table), NodeContext("CXR_NODE"))
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_can_read_is_refused_naming_the_key(tmp_path, mode):
    token = tmp_path / "fhir.token"
    token.write_text("s3cret\n")
    token.chmod(mode)
    with pytest.raises(ConfigError) as err:
        build_destinations(_config(FHIR | {"token_file": str(token)}), NodeContext("CXR_NODE"))
    assert str(err.value) == (
        f"destinations[0].token_file: {token} is readable by group or others (mode {mode:04o}); chmod 600 it"
    )


def test_a_token_file_only_its_owner_reads_is_sent_as_the_bearer(tmp_path):
    token = tmp_path / "fhir.token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    built = build_destinations(_config(FHIR | {"token_file": str(token)}), NodeContext("CXR_NODE"))
    assert built["ehr"]._headers()["Authorization"] == "Bearer s3cret"


def test_routes_follow_type_defaults_and_when():
    cfg = _config(
        {"name": "pacs", "type": "dicom", "ae_title": "P", "host": "h", "port": 104, "when": ["COVID-19"]},
        HL7 | {"when": ["COVID-19", "Pathological", "COVID-19"]},
        FHIR | {"untrained": True},
    )
    assert routes(cfg) == (
        Route("pacs", ("sc", "sr"), frozenset({"COVID-19"}), True),
        Route("ris", (ExportKind.NOTICE,), frozenset({"COVID-19", "Pathological"}), False),
        Route("ehr", (ExportKind.NOTICE,), None, True),
    )
    built = build_destinations(cfg, NodeContext("CXR_NODE"))
    assert (
        built["ris"].describe() == "HL7 MLLP ris.example:2575"
        and built["ehr"].describe() == "FHIR https://ehr.example/fhir/R4"
    )
    assert cfg.destination_specs[1].when == ("COVID-19", "Pathological")
    assert NodeConfig().destination_specs == ()
    assert DestinationSpec("x", "hl7").when is None


def test_notice_concepts_are_the_reports_own():
    from cxr_node.destinations import notice
    from cxr_node.results import sr

    for name in ("OVERALL_CLASS", "P_ABNORMAL", "P_COVID", "AI_MODEL", "MODELS_DISAGREE", "INTENDED_USE"):
        mine, theirs = getattr(notice, name), getattr(sr, name)
        assert (mine.code, mine.scheme, mine.meaning) == (theirs.value, theirs.scheme_designator, theirs.meaning), name
    assert notice.PRIVATE_HL7 == sr.PRIVATE_SCHEME
    for joint, coded in sr.CLASS_CODES.items():
        assert notice.class_concept(joint.value).code == coded.value


@pytest.mark.peers  # openssl makes the certificates
def test_mllp_over_tls(queue, result, pki, tmp_path):
    from dataclasses import replace

    from cxr_node.dicom.tls import client_context, server_context

    server_cfg = replace(NodeConfig(), tls_cert=pki["server"][0], tls_key=pki["server"][1], tls_ca=pki["ca"])
    node_cfg = replace(NodeConfig(), tls_cert=pki["client"][0], tls_key=pki["client"][1], tls_ca=pki["ca"])
    listener = MllpListener(tls=server_context(server_cfg))
    try:
        result("covid", [RIS])
        spec = DestinationSpec(
            "ris", "hl7", {"host": "127.0.0.1", "port": listener.port, "tls": True}, "destinations[0]"
        )
        destination = Hl7Destination.from_spec(spec, NodeContext("CXR_NODE", 10.0, client_context(node_cfg)))
        assert Dispatcher(export_queue(queue), {"ris": destination}).run_once() == 1
        assert rows(queue)[("ris", ExportKind.NOTICE)]["state"] == ExportState.SENT
        (got,) = listener.received
        assert got.error == "" and got.segments("PID")[0][3].startswith("MRN0042^")
    finally:
        listener.close()


def test_config_check_reports_a_notice_destinations_key_and_its_classes(tmp_path):
    from click.testing import CliRunner

    from cxr_node.commands.config_check import command

    bad = tmp_path / "bad.toml"
    bad.write_text('[[destinations]]\nname = "ris"\ntype = "hl7"\nport = 2575\n')
    out = CliRunner().invoke(command, ["check", str(bad)])
    assert out.exit_code == 1 and "destinations[0].host: missing" in out.output, out.output
    good = tmp_path / "good.toml"
    good.write_text(
        '[[destinations]]\nname = "ris"\ntype = "hl7"\nhost = "ris"\nport = 2575\nwhen = ["COVID-19"]\n'
        '[[destinations]]\nname = "ehr"\ntype = "fhir"\nurl = "http://ehr/fhir"\n'
    )
    out = CliRunner().invoke(command, ["check", str(good)])
    assert out.exit_code == 0 and "destinations ris (COVID-19 only), ehr;" in out.output, out.output
