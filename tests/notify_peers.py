"""Real peers for the notification destinations, on loopback, started by the tests:

- MllpListener: an HL7 v2 receiver (what an interface engine's MLLP channel is). It parses
  every message with hl7apy against the 2.5.1 ORU^R01 structure, keeps it, and answers an ACK
  whose MSA-1 (AA / AE / AR / CA ...) and ERR-3 the test chooses per message; or stays silent.
- FhirServer: an HTTP FHIR endpoint. It validates every Bundle with the fhir.resources R4B
  models (plus the required code values and that every reference inside the transaction
  resolves), stores the resources with conditional create (ifNoneExist on identifier, as HAPI
  does), and answers 200 with a transaction-response, or 400 / 500 / 503 with an
  OperationOutcome, as the test asks. No installable FHIR server (HAPI is a Java web
  application, not a Debian or PyPI package) runs offline here, hence this one.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

START, END = b"\x0b", b"\x1c\x0d"


@dataclass
class Received:
    raw: str
    message: Any  # hl7apy Message, parsed and validated
    error: str = ""  # why it did not parse or validate ("" when it did)

    def segments(self, name: str) -> list[list[str]]:
        """Fields of every `name` segment, split plainly (field 0 = segment name; MSH shifted by one)."""
        rows = [s.split("|") for s in self.raw.split("\r") if s.startswith(name + "|")]
        return [["MSH", "|", *r[1:]] if name == "MSH" else r for r in rows]

    def obx(self) -> dict[str, list[str]]:
        """OBX fields by OBX-3 code."""
        return {row[3].split("^")[0]: row for row in self.segments("OBX")}


class MllpListener:
    """answers: a queue of MSA-1 codes (or (code, err_code, text), or "silent") used in turn;
    when it is empty, `default` answers."""

    def __init__(self, default: str = "AA", tls: ssl.SSLContext | None = None) -> None:
        self.default = default
        self.tls = tls  # a server context: MLLP over TLS
        self.answers: deque = deque()
        self.received: list[Received] = []
        self.connections = 0
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(30)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while END in buffer:
                    frame, _, buffer = buffer.partition(END)
                    answer = self._handle(frame[frame.find(START) + 1 :].decode("utf-8"))
                    if answer is None:
                        return  # silent: hang up without acknowledging, after the sender's timeout
                    conn.sendall(START + answer.encode("utf-8") + END)

    def _handle(self, raw: str) -> str | None:
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_message

        try:
            message = parse_message(raw, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            message.validate()
            got = Received(raw, message)
        except Exception as exc:  # noqa: BLE001 - a parse failure is a test finding, recorded
            got = Received(raw, None, f"{type(exc).__name__}: {exc}")
        self.received.append(got)
        answer = self.answers.popleft() if self.answers else self.default
        if answer == "silent":
            threading.Event().wait(self.silent_s)
            return None
        code, err, text = (answer, None, "") if isinstance(answer, str) else answer
        if got.error and code in ("AA", "CA"):
            code, err, text = "AR", 100, got.error[:200]  # what a validating engine would say
        return ack(raw, code, err, text)

    silent_s = 3.0


def ack(raw: str, code: str, err: int | None = None, text: str = "") -> str:
    """An HL7 ACK built with hl7apy for the message `raw` (sender and receiver swapped)."""
    from hl7apy.core import Message

    msh = raw.split("\r")[0].split("|")
    reply = Message("ACK", version="2.5.1")
    reply.msh.msh_3 = msh[4]
    reply.msh.msh_5 = msh[2]
    reply.msh.msh_7 = "20260101120000"
    reply.msh.msh_9 = "ACK^R01^ACK"
    reply.msh.msh_10 = "ACK" + msh[9][:17]
    reply.msh.msh_11 = "P"
    reply.msh.msh_12 = "2.5.1"
    reply.msa.msa_1 = code
    reply.msa.msa_2 = msh[9]
    if text:
        reply.msa.msa_3 = text.replace("|", " ").replace("^", " ")
    if err is not None:
        segment = reply.add_segment("ERR")
        segment.err_3 = f"{err}^^HL70357"
        segment.err_4 = "E"
        if text:
            segment.err_8 = text.replace("|", " ").replace("^", " ")
    return reply.to_er7()


def unescape(text: str) -> str:
    """HL7 v2 escape sequences back to the delimiters they stand for (2.5.1 section 2.7)."""
    out = text
    for code, char in (("F", "|"), ("S", "^"), ("T", "&"), ("R", "~")):
        out = out.replace(f"\\{code}\\", char)
    return out.replace("\\E\\", "\\")


# -- FHIR ----------------------------------------------------------------------------------

STATUSES = {"Observation": {"registered", "preliminary", "final", "amended"}}
STATUSES["DiagnosticReport"] = STATUSES["Observation"] | {"partial"}


@dataclass
class FhirStore:
    resources: dict[str, list[dict]] = field(default_factory=dict)  # type -> stored resources (with id)
    posts: list[dict] = field(default_factory=list)  # every Bundle received, valid or not
    invalid: list[str] = field(default_factory=list)  # why a Bundle was refused by validation

    def find(self, kind: str, system: str, value: str) -> dict | None:
        for resource in self.resources.get(kind, []):
            if any(i.get("system") == system and i.get("value") == value for i in resource.get("identifier", [])):
                return resource
        return None


def validate_transaction(body: dict) -> str:
    """ "" when valid, else what is wrong (fhir.resources models, code values, references)."""
    from fhir.resources.R4B.bundle import Bundle

    try:
        Bundle.model_validate(body)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError and its kin
        return str(exc)[:1000]
    if body.get("type") != "transaction":
        return f"Bundle.type is {body.get('type')!r}, not transaction"
    urls = {e.get("fullUrl") for e in body["entry"]}
    for i, entry in enumerate(body["entry"]):
        resource = entry["resource"]
        kind = resource["resourceType"]
        if resource.get("status") not in STATUSES.get(kind, {resource.get("status")}):
            return f"Bundle.entry[{i}].resource.status {resource.get('status')!r} is not a {kind} status"
        if entry.get("request", {}).get("method") != "POST" or entry["request"].get("url") != kind:
            return f"Bundle.entry[{i}].request must POST {kind}"
        for ref in resource.get("result", []):
            if ref.get("reference") not in urls:
                return f"Bundle.entry[{i}].resource.result {ref.get('reference')!r} is not in the transaction"
    return ""


class FhirServer:
    """answers: a queue of HTTP codes (200 = process the transaction) used in turn; empty -> 200."""

    def __init__(self) -> None:
        self.store = FhirStore()
        self.answers: deque[int] = deque()
        store, answers = self.store, self.answers

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test reads the store
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError as exc:
                    return self._outcome(400, f"not JSON: {exc}")
                store.posts.append(body)
                if self.path.rstrip("/") != "/fhir":
                    return self._outcome(404, f"no endpoint {self.path}")
                if self.headers.get("Content-Type", "").split(";")[0] != "application/fhir+json":
                    return self._outcome(415, "Content-Type must be application/fhir+json")
                code = answers.popleft() if answers else 200
                if code != 200:
                    return self._outcome(code, f"test server answers {code} as asked")
                problem = validate_transaction(body)
                if problem:
                    store.invalid.append(problem)
                    return self._outcome(400, problem)
                self._send(
                    200, {"resourceType": "Bundle", "type": "transaction-response", "entry": _apply(store, body)}
                )

            def _outcome(self, code: int, text: str) -> None:
                severity = "error" if code < 500 else "fatal"
                self._send(
                    code,
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": severity, "code": "processing", "diagnostics": text}],
                    },
                )

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _apply(store: FhirStore, body: dict) -> list[dict]:
    """Conditional creates (ifNoneExist=identifier=system|value); local references rewritten."""
    ids: dict[str, str] = {}
    answers = []
    for entry in body["entry"]:
        resource, kind = dict(entry["resource"]), entry["resource"]["resourceType"]
        condition = entry["request"].get("ifNoneExist", "")
        system, _, value = condition.removeprefix("identifier=").partition("|")
        existing = store.find(kind, system, value) if condition else None
        if existing is not None:
            ids[entry["fullUrl"]] = f"{kind}/{existing['id']}"
            answers.append({"response": {"status": "200 OK", "location": f"{kind}/{existing['id']}"}})
            continue
        resource["id"] = str(sum(len(v) for v in store.resources.values()) + 1)
        ids[entry["fullUrl"]] = f"{kind}/{resource['id']}"
        if "result" in resource:
            resource["result"] = [{"reference": ids.get(r["reference"], r["reference"])} for r in resource["result"]]
        store.resources.setdefault(kind, []).append(resource)
        answers.append({"response": {"status": "201 Created", "location": f"{kind}/{resource['id']}"}})
    return answers
