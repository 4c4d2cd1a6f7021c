"""Typed node settings from TOML plus command-line overrides. Every error names the key."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from cxr_node import validation as V
from cxr_node.analysis.fusion import JointClass
from cxr_node.decoding.budget import MAX_COLUMNS, MAX_INFLATED_BYTES, MAX_PIXEL_BYTES, MAX_ROWS, PixelBudget
from cxr_node.decoding.information import DEFAULT_LIMITS, InformationLimits, parse_image_check
from cxr_node.errors import ConfigError, ConfigErrors  # re-exported: callers import it from here
from cxr_node.results.sc_size import SC_MAX_SIDE
from cxr_node.selection.config import parse_selection
from cxr_node.selection.defaults import DEFAULT_SELECTION
from cxr_node.selection.rules import Selection

DEFAULT_CONFIG = Path("configs/node.toml")
validate_ae_title = V.ae_title  # re-exported: the name callers know


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, key: str, text: str) -> Destination:
        """`AET@HOST:PORT`, the form used on the command line."""
        m = re.match(r"^([^@]+)@(.+):(\d+)$", text or "")
        if not m:
            raise ConfigError(f"{key}: {text!r} must look like AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(validate_ae_title(key, m.group(1)), m.group(2), V.port(key, int(m.group(3))))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


# Address space (MiB) a decoder process may add, beyond what it holds once started, to decode one
# image: the largest image the default budget admits (64 MiB of 16-bit pixels, 33.5 M pixels)
# needs about 1.4 GB with the costliest syntax measured (JPEG lossless, 42 bytes/pixel with the
# grey pipeline; `cxr-node bench decode-memory`, docs/reliability.md); 2048 leaves ~45 % margin.
DECODE_MEMORY_MB = 2048

_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LEGACY_DESTINATION_NAME = "pacs"  # the name of the single `[destination]` / `--destination` peer


@dataclass(frozen=True)
class DestinationSpec:
    """One `[[destinations]]` entry: its name, its type and the type's own keys, checked by that
    type's module (cxr_node.destinations) when the node is built. `key` is where it came from."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    key: str = "destinations"
    # Keys of every type: the result classes that go there (None: every class), and whether an
    # untrained model's results go there (None: the type's default, see cxr_node.destinations.routing).
    when: tuple[str, ...] | None = None
    untrained: bool | None = None


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "CXR_NODE"
    bind: str = "127.0.0.1"  # loopback only unless configured: listening on the network is a decision
    port: int = 11112
    storage: Path = Path("var/cxr-node")
    db: str = ""  # SQLAlchemy URL; empty = SQLite file under storage
    allowed_calling_aets: tuple[str, ...] = ()  # empty = any modality may send
    max_associations: int = 32  # concurrent associations; more are rejected (A-ASSOCIATE-RJ)
    acse_timeout_s: float = 10.0  # association request / release
    dimse_timeout_s: float = 60.0  # one DIMSE message (a whole C-STORE request)
    network_timeout_s: float = 10.0  # a connection silent this long is dropped
    min_free_mb: float = 500.0  # free space on the storage file system below which C-STORE gets 0xA700
    non_radiographs: str = "record"  # objects not analysed (SR, SC, KO, PR, ...): "record" or "discard"
    db_wait_s: float = 5.0  # the longest one C-STORE waits for the database before 0xA700
    db_password_file: Path | None = None  # file holding the database password (mode 0600/0400)
    umask: int = 0o027  # files 0640, directories 0750
    tls_cert: Path | None = None  # PEM certificate of the node; None = no TLS
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA bundle that peers' certificates are checked against
    tls_require_client_cert: bool = False
    tls_port: int = 2762  # the Storage SCP's TLS port (DICOM's registered TLS port)
    tls_only: bool = False  # no plain listener on node.port, TLS only
    destination: Destination | None = None
    models: Path | None = None
    allow_untrained: bool = False
    device: str = "auto"
    domain_check: bool = True  # flag images unlike the training images (when the bundle has statistics)
    domain_threshold: float | None = None  # None = the threshold training chose on validation
    input_size: int = 224
    cam_panels: str = "per-model"  # or "fused"
    sc_max_side: int = SC_MAX_SIDE
    time_zone: str = ""  # the node's zone for results of sources that state no offset; "" = the server's
    # A short SR for a not-analysable image (no class: "the AI gave no result", and why) to the
    # DICOM/DICOMweb destinations. Off: an object without a class can be read as "nothing found".
    not_analysable_report: bool = False
    poll_interval_s: float = 1.0
    lease_s: float = 600.0
    max_attempts: int = 3
    send_retry_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    batch_size: int = 4
    cuda_graphs: bool = True  # on a GPU, replay the forwards from captured CUDA graphs
    reduced_decode: bool = True  # decode JPEG 2000 / JPEG only as finely as the model and SC need
    roles: tuple[str, ...] = V.ROLE_NAMES
    retention_days: float = 0.0  # 0 = keep everything
    housekeeping_interval_s: float = 3600.0
    web_enabled: bool = False  # read-only status page, /metrics, /healthz, /readyz
    web_bind: str = "127.0.0.1"
    web_port: int = 8080
    web_token: str = ""  # required when web_bind is not a loopback address
    web_show_patient: bool = False  # patient name and ID on the status page
    destinations: tuple[DestinationSpec, ...] = ()  # [[destinations]]; `destination` joins them as "pacs"
    selection: Selection = DEFAULT_SELECTION  # [selection]: which received images are analysed
    image_check: InformationLimits = DEFAULT_LIMITS  # [image_check]: how much a decoded image must hold
    send_max_attempts: int = 100  # 0 = no limit
    send_give_up_after_s: float = 172800.0  # 0 = no limit
    send_timeout_s: float = 30.0
    # [decoding]: the pixel budget checked at receipt (cxr_node.decoding.budget) and the decoder processes
    max_rows: int = MAX_ROWS
    max_columns: int = MAX_COLUMNS
    max_pixel_bytes: int = MAX_PIXEL_BYTES
    max_inflated_bytes: int = MAX_INFLATED_BYTES
    decode_memory_mb: int = DECODE_MEMORY_MB  # address space a decoder process may add to decode one image
    decode_processes: int = 0  # 0 = one per core, at most 4
    decode_timeout_s: float = 120.0  # a decode running longer is killed and fails that image

    def __post_init__(self) -> None:
        if self.max_inflated_bytes < self.max_pixel_bytes:
            raise ConfigError(
                f"decoding.max_inflated_bytes: {self.max_inflated_bytes} is below decoding.max_pixel_bytes "
                f"{self.max_pixel_bytes}: a Deflated image within the pixel budget would be refused"
            )
        names = [spec.name for spec in self.destination_specs]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(
                    f"destinations: the name {name!r} is used twice"
                    + (" ([destination] / --destination is named 'pacs')" if name == LEGACY_DESTINATION_NAME else "")
                )

    @property
    def pixel_budget(self) -> PixelBudget:
        return PixelBudget(self.max_rows, self.max_columns, self.max_pixel_bytes, self.max_inflated_bytes)

    @property
    def destination_specs(self) -> tuple[DestinationSpec, ...]:
        """Every destination: the legacy single DICOM peer (named "pacs") first, then [[destinations]]."""
        legacy: tuple[DestinationSpec, ...] = ()
        if self.destination is not None:
            d = self.destination
            legacy = (
                DestinationSpec(
                    LEGACY_DESTINATION_NAME,
                    "dicom",
                    {"ae_title": d.ae_title, "host": d.host, "port": d.port},
                    "destination",
                ),
            )
        return legacy + self.destinations

    @property
    def destination_names(self) -> tuple[str, ...]:
        """Names the worker records on export rows (one row per result object per name)."""
        return tuple(spec.name for spec in self.destination_specs)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{(self.storage / 'cxr-node.db').resolve()}"


# TOML table.key -> (field name, expected type, checker)
ROLE_NAMES = V.ROLE_NAMES  # the checkers live in cxr_node.validation, shared with training.config


def _aet_list(key, v):
    if not isinstance(v, list):
        raise ConfigError(f"{key}: must be a list of AE titles")
    return tuple(validate_ae_title(f"{key}[{i}]", x) for i, x in enumerate(v))


def _delays(key, v):
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{key}: must be a non-empty list of seconds")
    return tuple(float(V.positive(f"{key}[{i}]", x)) for i, x in enumerate(v))


def _umask(key, v):
    if not isinstance(v, str) or not re.match(r"^0?[0-7]{3}$", v):
        raise ConfigError(f'{key}: {v!r} must be an octal string such as "027"')
    return int(v, 8)


_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "node": {
        "ae_title": ("ae_title", validate_ae_title),
        "bind": ("bind", V.string),
        "port": ("port", lambda k, v: V.port(k, v, listen=True)),
        "storage": ("storage", lambda k, v: Path(V.string(k, v))),
        "db": ("db", V.string),
        "roles": ("roles", V.roles),
        "db_password_file": ("db_password_file", lambda k, v: Path(V.string(k, v)) if v else None),
        "umask": ("umask", _umask),
    },
    "receiver": {
        "allowed_calling_aets": ("allowed_calling_aets", _aet_list),
        "max_associations": ("max_associations", V.int_range(1, 1000)),
        "acse_timeout_s": ("acse_timeout_s", V.positive),
        "dimse_timeout_s": ("dimse_timeout_s", V.positive),
        "network_timeout_s": ("network_timeout_s", V.positive),
        "min_free_mb": ("min_free_mb", V.non_negative),
        "non_radiographs": ("non_radiographs", V.choice("record", "discard")),
        "db_wait_s": ("db_wait_s", V.positive),
    },
    "tls": {
        "cert": ("tls_cert", lambda k, v: Path(V.string(k, v)) if v else None),
        "key": ("tls_key", lambda k, v: Path(V.string(k, v)) if v else None),
        "ca": ("tls_ca", lambda k, v: Path(V.string(k, v)) if v else None),
        "require_client_cert": ("tls_require_client_cert", V.boolean),
        "port": ("tls_port", lambda k, v: V.port(k, v, listen=True)),
        "only": ("tls_only", V.boolean),
    },
    "destination": {},  # handled below: ae_title/host/port together
    "models": {
        "dir": ("models", lambda k, v: Path(V.string(k, v)) if v else None),
        "allow_untrained": ("allow_untrained", V.boolean),
        "device": ("device", V.device),
        "domain_check": ("domain_check", V.boolean),
        "domain_threshold": ("domain_threshold", V.number),
    },
    "analysis": {
        "input_size": ("input_size", V.int_range(32, 2048)),
        "batch_size": ("batch_size", V.int_range(1, 256)),
        "cuda_graphs": ("cuda_graphs", V.boolean),
        "reduced_decode": ("reduced_decode", V.boolean),
    },
    "results": {
        "cam_panels": ("cam_panels", V.choice("per-model", "fused")),
        "sc_max_side": ("sc_max_side", V.int_range(256, 4096)),
        "time_zone": ("time_zone", V.time_zone),
        "not_analysable_report": ("not_analysable_report", V.boolean),
    },
    "worker": {
        "poll_interval_s": ("poll_interval_s", V.positive),
        "lease_s": ("lease_s", V.positive),
        "max_attempts": ("max_attempts", V.int_range(1, 100)),
    },
    "decoding": {
        "max_rows": ("max_rows", V.int_range(1, 65535)),
        "max_columns": ("max_columns", V.int_range(1, 65535)),
        "max_pixel_bytes": ("max_pixel_bytes", V.int_range(1, 2**40)),
        "max_inflated_bytes": ("max_inflated_bytes", V.int_range(1, 2**40)),
        "memory_limit_mb": ("decode_memory_mb", V.int_range(64, 1_048_576)),
        "processes": ("decode_processes", V.int_range(0, 64)),
        "timeout_s": ("decode_timeout_s", V.positive),
    },
    "destinations": {},  # handled below: an array of tables, checked by each type's module
    "selection": {},  # handled below: rules, vocabulary, age policy (cxr_node.selection.config)
    "image_check": {},  # handled below: limits of cxr_node.decoding.information
    "dispatcher": {
        "retry_delays_s": ("send_retry_s", _delays),
        "max_attempts": ("send_max_attempts", V.int_range(0, 1_000_000)),
        "give_up_after_s": ("send_give_up_after_s", V.non_negative),
        "timeout_s": ("send_timeout_s", V.positive),
    },
    "housekeeping": {
        "retention_days": ("retention_days", V.non_negative),
        "interval_s": ("housekeeping_interval_s", V.positive),
    },
    "web": {
        "enabled": ("web_enabled", V.boolean),
        "bind": ("web_bind", V.string),
        "port": ("web_port", lambda k, v: V.port(k, v, listen=True)),
        "token": ("web_token", V.string),
        "show_patient": ("web_show_patient", V.boolean),
    },
}


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_web(cfg: NodeConfig) -> NodeConfig:
    """The status page shows what the node did; anywhere but loopback it needs a secret."""
    if cfg.web_enabled and not _loopback(cfg.web_bind) and len(cfg.web_token) < 16:
        raise ConfigError(
            f"web.token: required (16 characters or more) when web.bind is {cfg.web_bind!r}, not a loopback address"
        )
    return cfg


def _destination(table: Any) -> Destination | None:
    if not isinstance(table, dict):
        raise ConfigError("destination: must be a table with ae_title, host, port")
    unknown = set(table) - {"ae_title", "host", "port"}
    if unknown:
        raise ConfigError(f"destination.{sorted(unknown)[0]}: unknown key (ae_title, host, port)")
    if not table:
        return None
    for key in ("ae_title", "host", "port"):
        if key not in table:
            raise ConfigError(f"destination.{key}: missing (the PACS needs ae_title, host and port)")
    return Destination(
        validate_ae_title("destination.ae_title", table["ae_title"]),
        V.string("destination.host", table["host"]),
        V.port("destination.port", table["port"]),
    )


def _destinations(value: Any) -> tuple[DestinationSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            "destinations: must be an array of tables ([[destinations]] with name, type and the type's keys)"
        )
    specs = []
    for i, table in enumerate(value):
        key = f"destinations[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{key}: must be a table with name, type and the type's keys")
        for required in ("name", "type"):
            if required not in table:
                raise ConfigError(f"{key}.{required}: missing")
        name = table["name"]
        if not isinstance(name, str) or not _DESTINATION_NAME.match(name):
            raise ConfigError(f"{key}.name: {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        kind = V.string(f"{key}.type", table["type"])
        options = {k: v for k, v in table.items() if k not in ("name", "type", "when", "untrained")}
        when = result_classes(f"{key}.when", table["when"]) if "when" in table else None
        untrained = V.boolean(f"{key}.untrained", table["untrained"]) if "untrained" in table else None
        specs.append(DestinationSpec(name, kind, options, key, when, untrained))
    return tuple(specs)


def result_classes(key: str, value: Any) -> tuple[str, ...]:
    """Result classes, spelled as the results name them (`when = ["COVID-19", "Pathological"]`)."""
    known = [c.value for c in JointClass]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: must be a non-empty list of result classes ({', '.join(known)})")
    for item in value:
        if item not in known:
            raise ConfigError(f"{key}: unknown class {_quoted(item)} (known: {', '.join(known)})")
    return tuple(dict.fromkeys(value))


def _quoted(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


# Sections parsed as a whole by their own parser (each value lands under the section's name).
_TABLE_PARSERS: dict[str, Callable[[Any], Any]] = {
    "selection": parse_selection,
    "image_check": parse_image_check,
    "destination": _destination,
    "destinations": _destinations,
}


def parse_config(data: dict[str, Any], source: str = "config") -> NodeConfig:
    """The typed config; every problem in `data` is reported at once (ConfigErrors, one line each)."""
    values: dict[str, Any] = {}
    problems: list[str] = []

    def checked(name: str, check: Callable[[], Any]) -> None:
        try:
            values[name] = check()
        except ConfigErrors as exc:
            problems.extend(exc.problems)
        except ConfigError as exc:
            problems.append(str(exc))

    for section, content in data.items():
        if section not in _SCHEMA:
            problems.append(f"{section}: unknown section in {source} (known: {', '.join(_SCHEMA)})")
            continue
        if section in _TABLE_PARSERS:
            checked(section, partial(_TABLE_PARSERS[section], content))
            continue
        if not isinstance(content, dict):
            problems.append(f"{section}: must be a table")
            continue
        for key, value in content.items():
            if key not in _SCHEMA[section]:
                problems.append(f"{section}.{key}: unknown key in {source}")
                continue
            name, check = _SCHEMA[section][key]
            checked(name, partial(check, f"{section}.{key}", value))
    if not problems:  # cross-key checks need every key parsed
        try:
            return check_web(NodeConfig(**values))
        except ConfigError as exc:
            problems.append(str(exc))
    raise ConfigErrors(problems)


def load_config(path: Path | None) -> NodeConfig:
    """Read a TOML file; None means embedded defaults."""
    if path is None:
        return NodeConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path))


def with_overrides(cfg: NodeConfig, **overrides: Any) -> NodeConfig:
    """Apply command-line values that were given (None means not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in fields(NodeConfig)}
    for key in given:
        if key not in names:
            raise ConfigError(f"{key}: not a node setting")
    if "ae_title" in given:
        given["ae_title"] = validate_ae_title("--ae-title", given["ae_title"])
    if "port" in given:
        given["port"] = V.port("--port", given["port"], listen=True)
    if "roles" in given:
        given["roles"] = V.roles("--role", list(given["roles"]))
    if isinstance(given.get("destination"), str):
        given["destination"] = Destination.parse("--destination", given["destination"])
    return check_web(replace(cfg, **given))


__all__ = [
    "ConfigError",
    "ConfigErrors",
    "Destination",
    "DestinationSpec",
    "NodeConfig",
    "load_config",
    "parse_config",
    "with_overrides",
]
