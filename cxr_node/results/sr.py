"""TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom), in the source study.

Content tree (PS3.16 TID 1500):
  observer          the node as a device (TID 1004: device UID, name = AE title,
                    manufacturer, model name); the node's software version is in
                    SoftwareVersions (TID 1004 has no row for it) and the model
                    bundle is a ContributingEquipmentSequence item
  procedure         SCT 363679005 "Imaging procedure"
  image library     TID 1600 entry for the source, only when it has PatientOrientation
                    and ImagerPixelSpacing (TID 1603 needs both; highdicom fails otherwise)
  group "Model A"   Finding SCT 263654008 "Abnormal"; Certainty of Finding (DCM 111012)
                    in % = P(abnormal)
  group "Model B"   Finding SCT 840539006 "Disease caused by SARS-CoV-2"; Certainty of
                    Finding in % = P(COVID-19)
  group "Joint"     Finding (DCM 121071) = the joint class (Normal / private
                    "Pathological finding, non-COVID-19" / SARS-CoV-2 disease);
                    "Models disagree" and "untrained model" qualitative evaluations when
                    they apply; IMAGE (DCM 121200 "Illustration of ROI") -> the Grad-CAM SC
Every group names its algorithm (TID 4019: bundle name, version, weight sha256) and
the source radiograph as its source image (SCT 260753009 "Source").

The same content also goes into a Comprehensive SR, for a PACS that accepts no
presentation context for Comprehensive 3D SR: the tree has no SCOORD3D, so nothing is
lost; it gets its own SOP Instance UID in the same series. `as_comprehensive_sr` makes
it from the written 3D SR at send time; `build_structured_report(fallback=True)` builds
the identical object directly.
"""

from __future__ import annotations

import copy

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID

COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")

from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.results.identity import (
    MANUFACTURER,
    MODEL_NAME,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    ModelIdentity,
    NodeIdentity,
    ResultUIDs,
    derived_uid,
    fallback_sr_uid,
    model_equipment,
)

SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI CXR classification - not for diagnosis"
UNTRAINED_STATUS = "UNTRAINED (random weights) - not for clinical use"

IMAGING_PROCEDURE = codes.SCT.ImagingProcedure  # 363679005
CERTAINTY = codes.DCM.CertaintyOfFinding  # 111012
PERCENT = codes.UCUM.Percent
ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
# DCM 121200 "Illustration of ROI": the standard's concept for "an image that illustrates
# a region of interest" (TID 1410 row 9). See _illustration() for why it is used here.
ILLUSTRATION = hd.sr.CodedConcept("121200", "DCM", "Illustration of ROI")

CLASS_CODES = {
    JointClass.NORMAL: hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    JointClass.PATHOLOGICAL: hd.sr.CodedConcept("CXR001", PRIVATE_SCHEME, "Pathological finding, non-COVID-19"),
    JointClass.COVID: hd.sr.CodedConcept("840539006", "SCT", "Disease caused by SARS-CoV-2"),
}
MODELS_DISAGREE = hd.sr.CodedConcept("CXR002", PRIVATE_SCHEME, "Models disagree")
MODEL_STATUS = hd.sr.CodedConcept("CXR003", PRIVATE_SCHEME, "Model training status")
UNTRAINED = hd.sr.CodedConcept("CXR004", PRIVATE_SCHEME, "Untrained model - not for clinical use")

TRACKING_A = "Model A: normal vs abnormal"
TRACKING_B = "Model B: COVID-19 vs not COVID-19"
TRACKING_JOINT = "Joint classification (A + B)"


def _algorithm(model: ModelIdentity, what: str, *shas: str) -> hd.sr.AlgorithmIdentification:
    parameters = [f"weights sha256 {sha}" for sha in shas]
    if not model.trained:
        parameters.append(UNTRAINED_STATUS)
    return hd.sr.AlgorithmIdentification(name=f"{model.name} {what}", version=model.version, parameters=parameters)


def _group(source: Dataset, label: str, uid: str, finding_type, algorithm, measurements=None, evaluations=None):
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=label),
        finding_type=finding_type,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )


def _illustration(sc: Dataset) -> hd.sr.ImageContentItem:
    """IMAGE content item referencing the Grad-CAM Secondary Capture.

    Why this form: TID 1501 (Measurement Group) is an extensible template and its rows
    10b-10h already admit IMAGE items in the group. The picture is not a *source* of the
    result (so not SCT 260753009 "Source" nor DCM 121112 "Source of Measurement"); it
    illustrates where the models looked, which is what DCM 121200 "Illustration of ROI"
    means where the standard itself uses it (TID 1410 row 9). It sits in the joint group,
    the result it illustrates. PS3.3 C.17.2 wants every instance the content tree
    references listed as evidence: the SC is passed to highdicom as evidence, so it is in
    CurrentRequestedProcedureEvidenceSequence (same study). dciodvfy and PixelMed's
    DicomSRValidator accept it without a message.
    """
    return hd.sr.ImageContentItem(
        name=ILLUSTRATION,
        referenced_sop_class_uid=sc.SOPClassUID,
        referenced_sop_instance_uid=sc.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _coding_scheme_identification() -> Sequence:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return Sequence([item])


def has_image_library_descriptors(source: Dataset) -> bool:
    orientation = source.get("PatientOrientation")
    spacing = source.get("ImagerPixelSpacing")
    return orientation is not None and len(orientation) == 2 and spacing is not None and len(spacing) == 2


def build_report_content(
    source: Dataset,
    result: JointResult,
    uids: ResultUIDs,
    node: NodeIdentity,
    model: ModelIdentity,
    sc: Dataset | None = None,
) -> hd.sr.MeasurementReport:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=node.device_uid, name=node.ae_title, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    algo_a = _algorithm(model, "model A (normal vs abnormal)", model.sha256_a)
    algo_b = _algorithm(model, "model B (COVID-19 vs not)", model.sha256_b)
    algo_joint = _algorithm(model, "joint rule (A + B)", model.sha256_a, model.sha256_b)
    key = uids.sr_instance  # tracking UIDs: stable for the same source and bundle
    group_a = _group(
        source, TRACKING_A, derived_uid("track-a", key), ABNORMAL, algo_a,
        measurements=[hd.sr.Measurement(name=CERTAINTY, value=round(100 * result.p_abnormal, 2), unit=PERCENT, algorithm_id=algo_a)],
    )
    group_b = _group(
        source, TRACKING_B, derived_uid("track-b", key), CLASS_CODES[JointClass.COVID], algo_b,
        measurements=[hd.sr.Measurement(name=CERTAINTY, value=round(100 * result.p_covid, 2), unit=PERCENT, algorithm_id=algo_b)],
    )
    evaluations = []
    if result.models_disagree:
        evaluations.append(hd.sr.QualitativeEvaluation(name=MODELS_DISAGREE, value=YES))
    if not model.trained:
        evaluations.append(hd.sr.QualitativeEvaluation(name=MODEL_STATUS, value=UNTRAINED))
    joint = _group(
        source, TRACKING_JOINT, derived_uid("track-joint", key), CLASS_CODES[result.label], algo_joint,
        evaluations=evaluations or None,
    )
    if sc is not None:
        joint[0].ContentSequence.append(_illustration(sc))
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group_a, group_b, joint],
        referenced_images=[source] if has_image_library_descriptors(source) else None,
    )


def build_structured_report(
    source: Dataset,
    result: JointResult,
    uids: ResultUIDs,
    node: NodeIdentity,
    model: ModelIdentity,
    sc: Dataset | None = None,
    fallback: bool = False,
    content: hd.sr.MeasurementReport | None = None,
) -> Dataset:
    """Comprehensive 3D SR, or with fallback=True the same content as Comprehensive SR."""
    if content is None:
        content = build_report_content(source, result, uids, node, model, sc)
    cls = hd.sr.ComprehensiveSR if fallback else hd.sr.Comprehensive3DSR
    description = SR_SERIES_DESCRIPTION if model.trained else f"{SR_SERIES_DESCRIPTION} - UNTRAINED"
    sr = cls(
        evidence=[source] + ([sc] if sc is not None else []),
        content=content,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_fallback_instance if fallback else uids.sr_instance,
        instance_number=2 if fallback else 1,
        manufacturer=MANUFACTURER,
        is_complete=True,  # CompletionFlag COMPLETE
        is_final=False,  # PreliminaryFlag PRELIMINARY: nobody has signed it
        is_verified=False,  # VerificationFlag UNVERIFIED
        institution_name=node.institution_name,
        series_description=description,
        manufacturer_model_name=MODEL_NAME,
        software_versions=node.software_version,
        contributing_equipment=[model_equipment(node, model)],
    )
    # A new series made now: viewers (Orthanc Explorer among them) group series by date.
    sr.SeriesDate, sr.SeriesTime = sr.ContentDate, sr.ContentTime
    sr.DeviceUID = node.device_uid
    sr.StationName = node.ae_title[:16]
    for keyword in ("StudyDescription", "TimezoneOffsetFromUTC"):
        if keyword in source and keyword not in sr:
            sr[keyword] = source[keyword]
    sr.CodingSchemeIdentificationSequence = _coding_scheme_identification()
    return sr


def _value_types(items) -> set[str]:
    found: set[str] = set()
    for item in items or []:
        found.add(str(item.get("ValueType", "")))
        found |= _value_types(item.get("ContentSequence"))
    return found


def as_comprehensive_sr(sr3d: Dataset) -> Dataset:
    """The same report as a Comprehensive SR instance, for a PACS that refuses 3D SR.

    Comprehensive SR and Comprehensive 3D SR share every module; the content tree of
    the former may not hold SCOORD3D items. Ours never does; a tree that does raises
    ValueError rather than lose them. The result is read back through highdicom's
    ComprehensiveSR, which checks the SOP class and the content tree.
    """
    if sr3d.SOPClassUID == COMPREHENSIVE_SR:
        return sr3d
    if sr3d.SOPClassUID != COMPREHENSIVE_3D_SR:
        raise ValueError(f"SOP class {sr3d.SOPClassUID} is not Comprehensive 3D SR")
    if "SCOORD3D" in _value_types([sr3d]):
        raise ValueError("the report holds SCOORD3D content items, which Comprehensive SR cannot carry")
    ds = copy.deepcopy(sr3d)
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = fallback_sr_uid(str(sr3d.SOPInstanceUID))
    ds.InstanceNumber = int(sr3d.get("InstanceNumber", 1)) + 1
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return hd.sr.ComprehensiveSR.from_dataset(ds, copy=False)
