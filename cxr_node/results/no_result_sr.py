"""The short report of an image the node did not analyse ([results] not_analysable_report).

An image that holds too little for an answer (blank, a sliver, no contrast, out of domain:
cxr_node.errors.NotAnalysable) gets no class. When the site wants its PACS to say so, the
worker writes this Comprehensive 3D SR into the image's study: the same TID 1500 scaffolding as
the result report (cxr_node.results.sr: device observer, procedure, image library, one
measurement group that names the image as its source), but

  no Finding, no class, no probability, no Present / Absent: nothing a TID 1500 indexer
  could read as a result, normal or not; only TEXT items:
    CXR020 "AI result"              the AI gave no result for this image, which is not a normal result
    CXR021 "Reason not analysed"    the check's sentence, with the measured value and the key it
                                    was held against ("every pixel shows the same grey ...")
    CXR008 "Analysed image"         which image (modality, series, instance, view)
    CXR007 "AI model", CXR009 "Intended use" (the not-for-diagnosis wording), DCM 121106 notes
  SeriesDescription "AI: no result, image not analysable" (what a PACS lists).

Its UIDs derive from the source's SOP Instance UID and the model bundle, as the result objects'
do (own series, SeriesNumber 9903): made again after a crash, it is the same object, and a PACS
that receives it twice keeps one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset

from cxr_node.results import wording
from cxr_node.results.analysed_image import AnalysedImage
from cxr_node.results.identity import (
    MODEL_NAME,
    ModelIdentity,
    NodeIdentity,
    as_reference,
    derived_uid,
)
from cxr_node.results.sr import (
    AI_MODEL,
    ANALYSED_IMAGE,
    INTENDED_USE,
    NOTE,
    _group,
    _private,
    _text,
    clean_notes,
    measurement_report,
    node_sr,
)
from cxr_node.results.times import Clock, ResultTime, result_time, utc_now
from cxr_node.selection.vocabulary import Vocabulary
from cxr_node.storage import write_durably

NO_RESULT_SERIES_NUMBER = 9903
FILE_NAME = "not-analysable-sr.dcm"
NO_AI_RESULT = _private("CXR020", "AI result")
REASON = _private("CXR021", "Reason not analysed")
TRACKING_NO_RESULT = "AI result: none (image not analysable)"
# What CXR020 says: the absence of a result, and that it is not a normal one.
NO_RESULT_TEXT = (
    "none: the AI gave no result for this image because it holds too little to analyse; this is not a normal result"
)


def no_result_uids(source_sop_uid: str, model: ModelIdentity) -> tuple[str, str]:
    """(series UID, SOP Instance UID) of the report: same image and bundle, same UIDs."""
    key = (source_sop_uid, model.name, model.version, model.fingerprint)
    return derived_uid("no-result-sr-series", *key), derived_uid("no-result-sr", *key)


def series_description(model: ModelIdentity) -> str:
    """ "AI: no result, image not analysable" (LO, at most 64 characters in both training states)."""
    untrained = " UNTRAINED" if not model.trained else ""
    return f"AI{untrained}: no result, image not analysable"


def build_no_result_report(
    source: Dataset,
    code: str,
    reason: str,
    node: NodeIdentity,
    model: ModelIdentity,
    notes: Sequence[str] = (),
    when: ResultTime | None = None,
    analysed: AnalysedImage | None = None,
) -> Dataset:
    """The report of `source` (a header is enough), not analysed because of check `code`:
    `reason` is the check's sentence (NotAnalysable.reason). See the module docstring."""
    if when is None:
        when = result_time(source, utc_now())
    ref = as_reference(source)
    series_uid, instance_uid = no_result_uids(str(source.SOPInstanceUID), model)
    # The node's checks decided, before or beside the models: they are the group's algorithm.
    checks = hd.sr.AlgorithmIdentification(
        name=f"{MODEL_NAME} analysability checks",
        version=node.software_version,
        parameters=[f"decided by check {code}"],
    )
    group = _group(ref, TRACKING_NO_RESULT, derived_uid("track-no-result", instance_uid), None, checks)
    group[0].ContinuityOfContent = "SEPARATE"  # each statement on its own line, with its name
    group[0].ContentSequence.extend(
        [
            _text(NO_AI_RESULT, NO_RESULT_TEXT),
            _text(REASON, reason),
            _text(AI_MODEL, model.description),
            _text(ANALYSED_IMAGE, (analysed or AnalysedImage.of(source)).text),
            _text(INTENDED_USE, wording.intended_use(model.trained)),
            *(_text(NOTE, note) for note in clean_notes([*notes, *filter(None, [when.note])])),
        ]
    )
    return node_sr(
        hd.sr.Comprehensive3DSR,
        source,
        node,
        model,
        when,
        evidence=[ref],
        content=measurement_report(ref, node, [group]),
        series_uid=series_uid,
        series_number=NO_RESULT_SERIES_NUMBER,
        instance_uid=instance_uid,
        instance_number=1,
        description=series_description(model),
    )


@dataclass(frozen=True)
class NoResultReport:
    path: Path
    sop_instance_uid: str


def write_no_result_report(
    source: Dataset,
    code: str,
    reason: str,
    out_dir: Path,
    node: NodeIdentity,
    model: ModelIdentity,
    notes: Sequence[str] = (),
    clock: Clock = utc_now,
    zone: tzinfo | None = None,
    vocabulary: Vocabulary | None = None,
) -> NoResultReport:
    """Build the report and write it durably as `out_dir`/not-analysable-sr.dcm.

    A report already written for this image and bundle stands (one UID, one content: a PACS
    may hold it already); it is returned as it is, not made again with a newer time or reason.
    """
    path = Path(out_dir) / FILE_NAME
    _, uid = no_result_uids(str(source.SOPInstanceUID), model)
    if path.is_file():
        try:
            if str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID) == uid:
                return NoResultReport(path, uid)
        except Exception:  # an unreadable leftover: made again below
            pass
    when = result_time(source, clock(), zone)
    sr = build_no_result_report(source, code, reason, node, model, notes, when, AnalysedImage.of(source, vocabulary))
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)  # little-endian explicit VR, written once
    return NoResultReport(write_durably(path, buf.getvalue()), uid)


__all__ = [
    "FILE_NAME",
    "NO_AI_RESULT",
    "NO_RESULT_SERIES_NUMBER",
    "REASON",
    "NoResultReport",
    "build_no_result_report",
    "no_result_uids",
    "series_description",
    "write_no_result_report",
]
