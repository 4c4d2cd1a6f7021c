"""A receiver on a loopback port with a fresh SQLite queue, and senders to talk to it.

Used by tests/test_receiver*.py and tests/test_hostile_*.py. Senders: pynetdicom (any
context the test wants, including a hostile one) and DCMTK's dcmsend/storescu.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification
from sqlalchemy import select

from cxr_node.dicom.receiver import Receiver, ReceiverSettings
from cxr_node.queue.jobs import JobQueue
from cxr_node.queue.schema import open_database
from cxr_node.queue.tables import make_engine
from cxr_node.storage import StorageLayout, write_before_commit
from tests import peers


class ReceiverNode:
    def __init__(
        self,
        tmp_path: Path,
        settings: ReceiverSettings | None = None,
        queue_cls=JobQueue,
        db_url: str | None = None,
        **receiver_kw,
    ):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.engine = open_database(db_url or f"sqlite:///{tmp_path / 'q.db'}")
        self.queue = queue_cls(self.engine)
        self.layout = StorageLayout(tmp_path / "storage")
        receiver_kw.setdefault("write", write_before_commit)
        self.receiver = Receiver(
            settings or ReceiverSettings("CXR_NODE", "127.0.0.1", 0), self.queue, self.layout, **receiver_kw
        )
        self.receiver.start()

    def send(self, ds, calling="MODALITY", called="CXR_NODE", syntaxes=None):
        """C-STORE with pynetdicom; the status Dataset, or None when the association is refused."""
        ae = AE(ae_title=calling)
        ae.add_requested_context(
            ComputedRadiographyImageStorage, syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.receiver.port, ae_title=called)
        if not assoc.is_established:
            return None
        try:
            return assoc.send_c_store(ds)
        finally:
            assoc.release()

    def dcmsend(
        self, path: Path, *options: str, port: int | None = None, timeout_s: float = 60
    ) -> subprocess.CompletedProcess:
        exe = peers.find_program("dcmsend")
        return subprocess.run(
            [
                exe,
                "-aet",
                "MODALITY",
                "-aec",
                "CXR_NODE",
                *options,
                "127.0.0.1",
                str(port or self.receiver.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def rows(self, table):
        # A separate connection: sees only what was committed.
        with make_engine(str(self.engine.url)).connect() as conn:
            return conn.execute(select(table)).all()

    def stop(self) -> None:
        self.receiver.stop()
        self.engine.dispose()


def dcmtk(program: str, *args: str) -> None:
    """Run a DCMTK converter (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv, dcmodify); fail with its output."""
    exe = peers.find_program(program)
    out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"{program} {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
