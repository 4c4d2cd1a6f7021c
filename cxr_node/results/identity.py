"""Who made a result (the node as a device, the model bundle) and the result objects' UIDs.

Result UIDs are derived from the source image and the bundle, not drawn at random:
if the node crashes after sending and sends again, the PACS receives the same SOP
Instance UIDs and keeps one copy, so a study is never reported twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cxr_node import __version__

MANUFACTURER = "cxr-node project"
MODEL_NAME = "cxr-node"
_NAMESPACE = uuid.UUID("6f0c4a59-5a47-4a3c-9d0b-2b7c2f6e0c11")

# Private coding scheme for concepts no public terminology has.
PRIVATE_SCHEME = "99CXRNODE"
PRIVATE_SCHEME_NAME = "cxr-node private concepts"


def derived_uid(*parts: str) -> str:
    """A 2.25 UID from a name-based (SHA-1) UUID: same inputs, same UID, no registered root needed."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


@dataclass(frozen=True)
class NodeIdentity:
    ae_title: str
    institution_name: str | None = None

    @property
    def device_uid(self) -> str:
        return derived_uid("device", self.ae_title)

    software_version: str = __version__


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256_a: str
    sha256_b: str
    trained: bool

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def fingerprint(self) -> str:
        return f"{self.sha256_a[:16]}{self.sha256_b[:16]}"


@dataclass(frozen=True)
class ResultUIDs:
    sr_series: str
    sc_series: str
    sr_instance: str
    sc_instance: str

    @classmethod
    def for_source(cls, source_sop_uid: str, model: ModelIdentity) -> "ResultUIDs":
        key = (source_sop_uid, model.name, model.version, model.fingerprint)
        return cls(
            sr_series=derived_uid("sr-series", *key),
            sc_series=derived_uid("sc-series", *key),
            sr_instance=derived_uid("sr", *key),
            sc_instance=derived_uid("sc", *key),
        )
