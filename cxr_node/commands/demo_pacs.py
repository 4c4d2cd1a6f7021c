"""A minimal PACS stand-in for `cxr-node demo`: a Storage SCP that files what it receives.

Only the demo uses it, so the quick start needs nothing but Python; the tests use a real
Orthanc instead.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time
from pynetdicom.transport import ThreadedAssociationServer

from cxr_node.storage import safe_name, write_durably

# what the node sends: the SR (Comprehensive 3D, or Comprehensive as the fallback) and the Grad-CAM SC
RESULT_SOP_CLASSES = (Comprehensive3DSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage)


class LoopbackPACS:
    def __init__(self, directory: Path, ae_title: str = "DEMO_PACS", host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory)
        self.ae_title = ae_title
        self.host = host
        self._port = port
        self.received: list[Path] = []
        self._changed = threading.Condition()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)
        for sop_class in RESULT_SOP_CLASSES:
            self.ae.add_supported_context(sop_class)
        self._server: ThreadedAssociationServer | None = None

    def _on_store(self, event) -> int:
        ds = event.dataset
        path = (
            self.directory
            / safe_name(str(ds.StudyInstanceUID))
            / f"{ds.Modality}-{safe_name(str(ds.SOPInstanceUID))}.dcm"
        )
        write_durably(path, event.encoded_dataset(include_meta=True))
        with self._changed:
            self.received.append(path)
            self._changed.notify_all()
        return 0x0000

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = self.ae.start_server(
            (self.host, self._port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda e: 0x0000)],
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LoopbackPACS.port: the server is not started")
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def wait_for(self, count: int, timeout_s: float) -> list[Path]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.received) >= count, timeout=timeout_s)
            return list(self.received)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server = None
