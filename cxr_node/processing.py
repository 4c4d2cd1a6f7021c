"""One path from stored radiographs to written results, shared by the worker, `infer` and the benchmark.

decode (in a pool) -> header -> batched analysis (models A and B, CAMs, fusion) -> SR + SC
written durably next to each other, one pair per source image. Each image ends in an Outcome
that says what went wrong, if anything, and whether retrying could help (OutcomeKind):
  image          the image itself cannot be decoded (pixel data): retrying cannot fix it;
  not_analysable the image decodes but holds too little for an answer (NotAnalysable: blank,
                 a sliver, no contrast, out of domain): final, no class is given to it;
  resource       the machine failed (disk full, I/O, out of memory): retry later, never final;
  error          anything else (a bug, a broken model): retried a few times, then failed.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from enum import StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cxr_node.analysis.engine import Analysis, Analyzer
from cxr_node.decoding.information import DEFAULT_LIMITS, InformationLimits, check_information
from cxr_node.decoding.pixels import PixelDataError
from cxr_node.decoding.pool import Decoded
from cxr_node.errors import NotAnalysable
from cxr_node.results.identity import ModelIdentity, NodeIdentity
from cxr_node.results.sc_size import SC_MAX_SIDE
from cxr_node.results.writer import ResultFiles, write_results
from cxr_node.selection.age import selection_notes
from cxr_node.selection.vocabulary import Vocabulary

log = logging.getLogger(__name__)

ANALYSIS_FAILED = "analysis failed: "  # prefix of the error when the models failed on a whole batch

Decode = Callable[[list[str]], "list[Decoded | BaseException]"]

# errno values that say "the machine", not "the image"
RESOURCE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.ENOMEM,
    errno.EMFILE,
    errno.ENFILE,
    errno.EAGAIN,
    errno.EROFS,
    errno.ESTALE,
    errno.ETIMEDOUT,
}


class OutcomeKind(StrEnum):
    """Why an image got no result (see the module docstring); the worker's policy per kind."""

    IMAGE = "image"
    NOT_ANALYSABLE = "not_analysable"
    RESOURCE = "resource"
    ERROR = "error"


@dataclass
class Outcome:
    path: str
    dataset: Dataset | None = None  # header only
    analysis: Analysis | None = None
    files: ResultFiles | None = None
    # None when it worked. Otherwise one line: what failed, or (not_analysable) why there is no answer.
    error: str | None = None
    kind: OutcomeKind | None = None  # None when it worked
    code: str | None = None  # not_analysable only: NotAnalysable.code, short and stable
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def classify(exc: BaseException) -> OutcomeKind:
    """The OutcomeKind of an exception (see the module docstring)."""
    if isinstance(exc, NotAnalysable):
        return OutcomeKind.NOT_ANALYSABLE
    if isinstance(exc, PixelDataError):
        return OutcomeKind.IMAGE
    if isinstance(exc, MemoryError):
        return OutcomeKind.RESOURCE
    if isinstance(exc, OSError) and (exc.errno in RESOURCE_ERRNOS or isinstance(exc, (TimeoutError,))):
        return OutcomeKind.RESOURCE
    return OutcomeKind.ERROR


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def process_batch(
    paths: Sequence[str | Path],
    analyzer: Analyzer,
    node: NodeIdentity,
    model: ModelIdentity,
    out_dir: Callable[[int, Dataset], Path],
    decode: Decode | None,
    *,
    decoded: Sequence[Decoded | BaseException] | None = None,
    panels: str = "per-model",
    max_side: int = SC_MAX_SIDE,
    limits: InformationLimits = DEFAULT_LIMITS,
    zone: tzinfo | None = None,
    vocabulary: Vocabulary | None = None,
) -> list[Outcome]:
    """Analyse the files in one batch and write each one's SR and SC into `out_dir(i, header)`.

    `decode` decodes a list of paths (a pool's decode_many); pass `decoded` instead when the
    caller decoded ahead (infer's prefetch). The result of image i is computed from image i's
    pixels and header only, and written under the directory the caller names for image i.
    An image that holds too little for an answer (`limits`, or a NotAnalysable raised by any
    per-image step) ends not_analysable and is never analysed nor written.
    `zone`: the node's zone for result times when a source states no offset (None: the host's).
    `vocabulary`: the node's word tables ([selection]), to name a view only descriptions state.
    """
    names = [str(p) for p in paths]
    outcomes = [Outcome(p) for p in names]
    if decoded is not None:
        got = list(decoded)
    elif decode is not None:
        got = decode(names)
    else:
        raise ValueError("process_batch: pass `decode` or `decoded`")
    ready: list[tuple[int, Outcome, Dataset, Decoded]] = []
    # strict: a decoder that returned fewer or more items than paths must never pair image i with i+1.
    for index, (outcome, item) in enumerate(zip(outcomes, got, strict=True)):
        try:
            if isinstance(item, BaseException):
                raise item
            check_information(item.image, limits)
            # Header only: the SR and SC copy attributes, the pixels were decoded in the pool.
            header: Dataset = dcmread(outcome.path, stop_before_pixels=True)
            outcome.dataset = header
            outcome.timings["decode"] = item.seconds
            ready.append((index, outcome, header, item))
        except Exception as exc:
            _failed(outcome, exc)
    if not ready:
        return outcomes
    try:
        analyses = analyzer.analyse([d.image.pixels for _, _, _, d in ready])
    except Exception as exc:
        log.exception("analysis of a batch of %d failed", len(ready))
        for _, outcome, _, _ in ready:
            _failed(outcome, exc, prefix=ANALYSIS_FAILED)
        return outcomes
    for (index, outcome, header, item), analysis in zip(ready, analyses, strict=True):
        outcome.analysis = analysis
        outcome.timings.update(analysis.timings)
        try:
            if analysis.domain is not None and analysis.domain.outside:
                outcome.analysis = None  # unlike the training images: no class leaves the node
                raise NotAnalysable("out-of-domain", analysis.domain.reason)
            t0 = time.perf_counter()
            outcome.files = write_results(
                header,
                item.image.pixels,
                analysis,
                out_dir(index, header),
                node,
                model,
                panels,
                max_side,
                # which window was used, header attributes ignored; the patient's age not stated;
                # whether the pixels were checked against the training images
                notes=[
                    *item.image.notes,
                    *selection_notes(header),
                    *([] if analysis.domain is not None else [analyzer.domain_note]),
                ],
                zone=zone,
                vocabulary=vocabulary,
            )
            outcome.timings["sr_sc_build"] = time.perf_counter() - t0
        except Exception as exc:
            _failed(outcome, exc, prefix="result build failed: ")
    return outcomes


def _failed(outcome: Outcome, exc: BaseException, prefix: str = "") -> None:
    outcome.kind = classify(exc)
    if isinstance(exc, NotAnalysable):  # a decision about the image, not a failure: no prefix, no path
        outcome.code = exc.code
        outcome.error = exc.reason
        return
    text = one_line(exc)
    if isinstance(exc, InvalidDicomError):
        text = f"not a DICOM file ({text})"
    if outcome.kind != OutcomeKind.IMAGE and outcome.path not in text:
        text = f"{outcome.path}: {text}"
    outcome.error = prefix + text


__all__ = ["NotAnalysable", "Outcome", "OutcomeKind", "classify", "process_batch"]
