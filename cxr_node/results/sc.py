"""Grad-CAM Secondary Capture (highdicom SCImage) in the source study."""

from __future__ import annotations

import warnings
from collections.abc import Sequence as Seq

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from cxr_node.analysis.fusion import JointResult
from cxr_node.results.analysed_image import AnalysedImage
from cxr_node.results.identity import (
    MANUFACTURER,
    MODEL_NAME,
    ModelIdentity,
    NodeIdentity,
    ResultUIDs,
    as_reference,
    copy_patient_study,
    model_equipment,
)
from cxr_node.results.render import maps_text
from cxr_node.results.sr import series_description
from cxr_node.results.times import ResultTime, result_time, stamp, utc_now
from cxr_node.results.wording import NOT_FOR_DIAGNOSIS, UNTRAINED_MODEL_TEXT

SC_SERIES_NUMBER = 9902


def _from_ref(source, rgb, uids, node, model, orientation, description):
    known = bool(orientation) and len(orientation) == 2
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        # highdicom needs a coordinate system, and with PATIENT an orientation: a source without
        # one gets a placeholder, emptied below (None here made highdicom refuse the image).
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=tuple(orientation) if known else ("L", "F"),
        manufacturer_model_name=MODEL_NAME,
        software_versions=node.software_version,
        series_description=description,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[model_equipment(node, model)],
    )
    if not known:
        sc.PatientOrientation = []  # Type 2: present and empty, as the source does not say
    return sc


def build_secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    uids: ResultUIDs,
    node: NodeIdentity,
    model: ModelIdentity,
    result: JointResult,
    notes: Seq[str] = (),
    when: ResultTime | None = None,
    panels: str = "per-model",
    analysed: AnalysedImage | None = None,
) -> Dataset:
    """notes: the node's notes on how it read the image; drawn in the picture, and repeated
    in DerivationDescription (what a PACS shows when it cannot read burned-in text).
    analysed: the source in words (AnalysedImage.of with the node's vocabulary); None: read here.
    result: names the class in SeriesDescription (what a PACS lists); when: as for the SR."""
    if when is None:
        when = result_time(source, utc_now())
    description = series_description("AI map", result, model)
    orientation = source.get("PatientOrientation")
    with warnings.catch_warnings():
        # The names are the source's, copied as they are; highdicom warns about
        # one-component names (e.g. ReferringPhysicianName "ward") on every image.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sc = _from_ref(as_reference(source), rgb, uids, node, model, orientation, description)
    # highdicom copies five patient/study attributes; the PACS files by all of them
    # (issuers, qualifiers, age, ...), exactly as the SR carries them.
    copy_patient_study(source, sc)
    # Made now, in the offset the picture states; a new series too (viewers group series by date).
    stamp(sc, when, contributor=MANUFACTURER)
    sc.DeviceUID = node.device_uid
    sc.StationName = node.ae_title[:16]
    if node.institution_name:
        sc.InstitutionName = node.institution_name
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # workstation: a derived picture, not a digitised film
    if "BodyPartExamined" in source:
        sc.BodyPartExamined = source.BodyPartExamined
    desc = (
        f"Grad-CAM of {model.description} over {(analysed or AnalysedImage.of(source)).text}, VOI and polarity applied: "
        f"{maps_text(result.label, panels)}; {NOT_FOR_DIAGNOSIS}"
    )
    if not model.trained:
        desc = f"{UNTRAINED_MODEL_TEXT}. {desc}"
    for note in notes:
        desc += f"; note: {note}"
    sc.DerivationDescription = desc[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = Sequence([ref])
    return sc
