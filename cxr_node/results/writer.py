"""Build the SC and the SR for one analysed radiograph and write both durably."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cxr_node.analysis.engine import Analysis
from cxr_node.results.identity import ModelIdentity, NodeIdentity, ResultUIDs
from cxr_node.results.render import Legend, render_secondary_capture
from cxr_node.results.sc import build_secondary_capture
from cxr_node.results.sr import build_structured_report
from cxr_node.storage import write_durably


@dataclass(frozen=True)
class ResultFiles:
    sr_path: Path
    sc_path: Path
    sr_uid: str
    sc_uid: str
    rgb: np.ndarray


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_results(
    source: Dataset,
    display: np.ndarray,
    analysis: Analysis,
    out_dir: Path,
    node: NodeIdentity,
    model: ModelIdentity,
    panels: str = "per-model",
    max_side: int = 1024,
) -> ResultFiles:
    uids = ResultUIDs.for_source(str(source.SOPInstanceUID), model)
    rgb = render_secondary_capture(
        display, analysis.cam_a, analysis.cam_b, Legend(analysis.result, model.label, model.trained), panels, max_side
    )
    sc = build_secondary_capture(source, rgb, uids, node, model)
    sr = build_structured_report(source, analysis.result, uids, node, model, sc=sc)
    sc_path = write_durably(out_dir / "gradcam-sc.dcm", _encode(sc))
    sr_path = write_durably(out_dir / "report-sr.dcm", _encode(sr))
    return ResultFiles(sr_path, sc_path, uids.sr_instance, uids.sc_instance, rgb)
