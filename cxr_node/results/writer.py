"""Build the SC and the SR for one analysed radiograph and write both durably.

Two files per result, in the study's result directory:
  gradcam-sc.dcm     Grad-CAM Secondary Capture
  report-sr.dcm      TID 1500 report, Comprehensive 3D SR
When a PACS refuses Comprehensive 3D SR, the sender turns report-sr.dcm into the same
report as Comprehensive SR at send time (cxr_node.results.sr.as_comprehensive_sr):
nothing is built for the fallback on the hot path, and it costs ~10 ms when needed.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cxr_node.analysis.engine import Analysis
from cxr_node.results.analysed_image import AnalysedImage
from cxr_node.results.identity import ModelIdentity, NodeIdentity, ResultUIDs
from cxr_node.results.render import Legend, render_secondary_capture
from cxr_node.results.sc import build_secondary_capture
from cxr_node.results.sc_size import SC_MAX_SIDE
from cxr_node.results.sr import build_structured_report, clean_notes
from cxr_node.results.times import Clock, result_time, utc_now
from cxr_node.selection.vocabulary import Vocabulary
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
    # Little-endian, explicit VR, no compression: written once, never re-encoded.
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def warm_up() -> None:
    """Load highdicom's IOD/module tables (~0.4 s of JSON parsing, once per process).

    highdicom parses them lazily on the first SR/SC it builds; doing it at start-up
    (start_warm_up, called by `serve`) keeps that cost off the first radiograph's latency.
    """
    from highdicom import _standard_utils as su

    for loader in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        fn = getattr(su, loader, None)
        if fn is not None:
            fn()


def start_warm_up() -> threading.Thread:
    """warm_up() in a background thread, so that it overlaps the rest of start-up (model loading)."""
    thread = threading.Thread(target=warm_up, name="cxr-results-warm-up", daemon=True)
    thread.start()
    return thread


def write_results(
    source: Dataset,
    display: np.ndarray,
    analysis: Analysis,
    out_dir: Path,
    node: NodeIdentity,
    model: ModelIdentity,
    panels: str = "per-model",
    max_side: int = SC_MAX_SIDE,
    notes: Sequence[str] = (),
    clock: Clock = utc_now,
    zone: tzinfo | None = None,
    vocabulary: Vocabulary | None = None,
) -> ResultFiles:
    """display: the radiograph as decoded for the model ([0, 1], VOI and polarity applied).

    notes: short sentences on how the node read this image, for the reader of the result
    (e.g. "window: node's robust window (WindowWidth 0 ignored)", "patient age not stated");
    the SR carries each as a Comment in the overall result, the SC in its findings box.
    clock, zone: now (timezone-aware) and the node's zone for a source that states no
    offset (None: the host's); both objects carry the same instant (times.result_time).
    vocabulary: the words that name a view (the config's [selection] tables; None: the built-in
    one), for an image whose view only its descriptions state (AnalysedImage).
    """
    uids = ResultUIDs.for_source(str(source.SOPInstanceUID), model)
    when = result_time(source, clock(), zone)
    notes = clean_notes([*notes, *filter(None, [when.note])])
    result = analysis.result
    analysed = AnalysedImage.of(source, vocabulary)  # once: the SR, the SC and its picture say the same
    legend = Legend(result, model.description, model.trained, analysed.text, tuple(notes), model.thresholds)
    rgb = render_secondary_capture(display, analysis.cam_a, analysis.cam_b, legend, panels, max_side)
    sc = build_secondary_capture(source, rgb, uids, node, model, result, notes, when, panels, analysed)
    sr = build_structured_report(source, result, uids, node, model, sc=sc, notes=notes, when=when, analysed=analysed)
    out_dir = Path(out_dir)
    sc_path = write_durably(out_dir / "gradcam-sc.dcm", _encode(sc))
    sr_path = write_durably(out_dir / "report-sr.dcm", _encode(sr))
    return ResultFiles(sr_path, sc_path, uids.sr_instance, uids.sc_instance, rgb)
