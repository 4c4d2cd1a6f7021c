"""The destination interface (after Mercure's TargetHandler): a destination takes result objects
and says, for each, whether it was stored, refused for good, or should be tried again.

A new destination type is one module with a subclass of `ExportDestination` plus one line in
registry.py. Retry, back-off, giving up and the queue stay in the dispatcher; a destination
only sends, within its own time limits, and reports.
"""

from __future__ import annotations

import enum
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydicom import Dataset

from cxr_node.config import ConfigError, DestinationSpec
from cxr_node.queue.jobs import ResultRecord
from cxr_node.queue.states import ExportKind


class Verdict(enum.StrEnum):
    STORED = "stored"
    REFUSED = "refused"  # for good: this destination does not take this kind of object (e.g. 0x0122)
    RETRY = "retry"  # may succeed later: a transient refusal (0xA7xx ...) or a transport failure


@dataclass(frozen=True)
class Outgoing:
    """One export row's object for one destination."""

    kind: ExportKind  # NOTICE: a notification of the result announced by the SR at `path`
    path: str
    sop_instance_uid: str
    # SR only: the SC did not reach this destination and never will; send the report in the form
    # that neither references it nor lists it as evidence, and says the illustration was not stored.
    omit_illustration: bool = False
    # The result row this object belongs to, and when it was made (notices are built from them).
    result: ResultRecord | None = None
    result_created_at: datetime | None = None


@dataclass(frozen=True)
class Delivery:
    verdict: Verdict
    reason: str = ""  # why not stored: the peer's status and its meaning, or the transport failure
    from_peer: bool = False  # `reason` is the destination's own answer, not a failure to reach it
    status: int | None = None  # DICOM status (or STOW-RS FailureReason) the destination answered
    sop_instance_uid: str = ""  # what went (the variant's UID when one went in place of the file)
    sent: Dataset | None = None  # the data set that went, when it is not the file itself
    note: str = ""  # e.g. "as Comprehensive SR"


class DestinationUnavailable(RuntimeError):
    """The destination could not be reached at all; nothing was attempted. The message says why."""


@dataclass(frozen=True)
class NodeContext:
    """What a destination may need from the node: who we are and how long to wait."""

    ae_title: str
    timeout_s: float = 30.0
    tls: ssl.SSLContext | None = None


@dataclass
class Options:
    """Reads one destination's type keys; every error names the key (`destinations[1].url: ...`)."""

    spec: DestinationSpec
    used: set[str] = field(default_factory=set)

    def _key(self, name: str) -> str:
        return f"{self.spec.key}.{name}"

    def get(self, name: str, check, default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.spec.options:
            if default is ...:
                raise ConfigError(f"{self._key(name)}: missing (a {self.spec.type} destination needs it)")
            return default
        return check(self._key(name), self.spec.options[name])

    def done(self) -> None:
        unknown = sorted(set(self.spec.options) - self.used)
        if unknown:
            raise ConfigError(
                f"{self._key(unknown[0])}: unknown key for a {self.spec.type} destination "
                f"(known: name, type, {', '.join(sorted(self.used))})"
            )


class ExportDestination(ABC):
    type_name: ClassVar[str]
    # The export kinds this type sends: the result objects themselves, or a notice of the result.
    kinds: ClassVar[tuple[ExportKind, ...]] = (ExportKind.SC, ExportKind.SR)
    # Whether results of an untrained model go there unless the destination's `untrained` says.
    untrained_by_default: ClassVar[bool] = True

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: DestinationSpec, node: NodeContext) -> ExportDestination:
        """Check the type's keys (ConfigError naming the key) and build the destination."""

    @abstractmethod
    def send(self, objects: list[Outgoing]) -> list[Delivery]:
        """One Delivery per object, in order. Raises DestinationUnavailable when nothing could be tried."""

    @abstractmethod
    def describe(self) -> str:
        """Where it sends, for logs (e.g. `ORTHANC@10.0.0.5:104`)."""

    def __str__(self) -> str:
        return f"{self.name} ({self.describe()})"
