"""TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom), in the source study.

The report leads with its answer where the template lets it: SeriesDescription ("AI:
COVID-19, not for diagnosis", what a PACS lists and dsr2html prints before the content) and
the first measurement group. TID 1500's rows are ordered, so language, observer, procedure
and image library come before Imaging Measurements. Content tree:
  language, observer  the node as a device (TID 1004: device UID, name = AE title,
                      manufacturer, model name); the node's software version is in
                      SoftwareVersions and the model bundle is a ContributingEquipmentSequence item
  procedure           SCT 363679005 "Imaging procedure"
  image library       TID 1600 entry for the source, only when it has PatientOrientation
                      and ImagerPixelSpacing (TID 1603 needs both; highdicom fails otherwise)
  Imaging Measurements
    group "AI overall result"  (first: what a reader sees first)
        Finding (DCM 121071) = the overall class; CODE "AI overall class" = Normal /
        Pathological (non-COVID-19) / COVID-19; CODE "Model training status" = trained /
        untrained; CODE "Models disagree" = Yes when raised; TEXT "AI model" (bundle name,
        version, training date, or UNTRAINED MODEL - NOT FOR CLINICAL USE); TEXT "Analysed
        image" (modality, series, instance, view or "view not stated"); TEXT "Intended use"
        (not for diagnostic use); TEXT DCM 121106 "Comment" per note of the node; TEXT
        "Grad-CAM illustration" and the IMAGE (DCM 121200 "Illustration of ROI") -> the
        Grad-CAM SC, or the statement that it was not stored
    group "Model A"   NUM "Probability of abnormality" in UCUM % = P(abnormal); CODE SCT
                      263654008 "Abnormal" = SCT "Present" / "Absent"; Finding "Abnormal"
                      only when present
    group "Model B"   the same for SCT 840539006 "COVID-19"
  Qualitative Evaluations (TID 1500 row 12)  "AI overall class" and "AI model" again, at the
                      place the template gives document-level conclusions, for programs
A finding is coded as a Finding only when present, so no TID 1500 indexer reads an absent
one as found; each model's Present / Absent follows from the joint class (and agrees with
the bundle's thresholds, which the algorithm parameters state; a contradiction is refused).
Every group names its algorithm (TID 4019: bundle name, version, weight sha256) and the
analysed radiograph as its source image (DCM 121112 "Source of Measurement"). The groups
are SEPARATE containers, so renderers (dsr2html) print each item with its concept name
("Probability of abnormality: 30.03 %", not a bare number). Times: times.py.

The same content also goes into a Comprehensive SR, for a PACS that accepts no
presentation context for Comprehensive 3D SR: the tree has no SCOORD3D, so nothing is
lost; it gets its own SOP Instance UID in the same series. `as_comprehensive_sr` makes
it from the written 3D SR at send time; `build_structured_report(fallback=True)` builds
the identical object directly. `without_illustration` makes, from a written report, the
variant for a PACS that refused the Grad-CAM SC: no reference to it, and it says so.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from cxr_node.analysis.fusion import JointClass, JointResult
from cxr_node.results import wording
from cxr_node.results.analysed_image import AnalysedImage
from cxr_node.results.identity import (
    MANUFACTURER,
    MODEL_NAME,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    ModelIdentity,
    NodeIdentity,
    ResultUIDs,
    as_reference,
    copy_patient_study,
    derived_uid,
    fallback_sr_uid,
    model_equipment,
    no_illustration_sr_uid,
)
from cxr_node.results.times import ResultTime, result_time, stamp, utc_now
from cxr_node.results.wording import CLASS_WORDS, UNTRAINED_STATUS

COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

SR_SERIES_NUMBER = 9901
ILLUSTRATION_NOT_STORED = (
    "not stored: the PACS refused the Grad-CAM Secondary Capture, so this report does not reference it"
)

IMAGING_PROCEDURE = codes.SCT.ImagingProcedure  # 363679005
PERCENT = codes.UCUM.Percent
ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
# CID 240 "Present-Absent Only": each model's yes/no answer, as a qualitative evaluation
# whose concept name is the finding ("COVID-19: Absent"); never as a Finding (121071).
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")
# DCM 121200 "Illustration of ROI": the standard's concept for "an image that illustrates
# a region of interest" (TID 1410 row 9). See _illustration() for why it is used here.
ILLUSTRATION = hd.sr.CodedConcept("121200", "DCM", "Illustration of ROI")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


CLASS_CODES = {
    JointClass.NORMAL: hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    JointClass.PATHOLOGICAL: _private("CXR001", CLASS_WORDS[JointClass.PATHOLOGICAL]),
    JointClass.COVID: hd.sr.CodedConcept("840539006", "SCT", "COVID-19"),
}
COVID_19 = CLASS_CODES[JointClass.COVID]
MODELS_DISAGREE = _private("CXR002", "Models disagree")
MODEL_STATUS = _private("CXR003", "Model training status")
UNTRAINED = _private("CXR004", "Untrained model - not for clinical use")
OVERALL_CLASS = _private("CXR005", "AI overall class")
TRAINED = _private("CXR006", "Trained model")
AI_MODEL = _private("CXR007", "AI model")
ANALYSED_IMAGE = _private("CXR008", "Analysed image")
INTENDED_USE = _private("CXR009", "Intended use")
ILLUSTRATION_NOTE = _private("CXR010", "Grad-CAM illustration")
# DCM 121106 "Comment": a public concept for a free-text remark; the node's notes on how it
# read this image ("window: ...", "patient age not stated") are exactly that.
NOTE = hd.sr.CodedConcept("121106", "DCM", "Comment")
# What each model outputs, named for what it is: no public code says "probability of
# COVID-19", and DCM 111012 "Certainty of Finding" needs a Finding, which an absent one is not.
P_ABNORMAL = _private("CXR011", "Probability of abnormality")
P_COVID = _private("CXR012", "Probability of COVID-19")

TRACKING_SUMMARY = "AI overall result"
TRACKING_A = "Model A: normal vs abnormal"
TRACKING_B = "Model B: COVID-19 vs not COVID-19"


def series_description(prefix: str, result: JointResult, model: ModelIdentity) -> str:
    """The answer where a PACS lists series and where dsr2html starts: "AI: COVID-19, not for diagnosis".

    At most 64 characters (LO) for every class and both training states.
    """
    untrained = " UNTRAINED" if not model.trained else ""
    return f"{prefix}{untrained}: {CLASS_WORDS[result.label]}, not for diagnosis"


def model_answers(result: JointResult, model: ModelIdentity) -> tuple[bool, bool]:
    """(model A says abnormal, model B says COVID-19), read off the joint class.

    The joint rule (analysis.fusion) makes them recoverable: COVID-19 <=> B positive;
    Pathological <=> A positive and B negative; the disagreement flag <=> B positive and
    A negative. Where the bundle's thresholds are known, the probabilities must agree
    with them too: a result that contradicts its own rule is refused, not reported.
    """
    b_positive = result.label == JointClass.COVID
    a_positive = result.label == JointClass.PATHOLOGICAL or (b_positive and not result.models_disagree)
    if result.models_disagree and not b_positive:
        raise ValueError(f"inconsistent result: models disagree but the class is {result.label}")
    if model.thresholds is not None:
        t_a, t_b = model.thresholds
        if (result.p_abnormal >= t_a) != a_positive or (result.p_covid >= t_b) != b_positive:
            raise ValueError(
                f"inconsistent result: class {result.label} (models disagree: {result.models_disagree}) with "
                f"P(abnormal) {result.p_abnormal:.6f} vs t_A {t_a}, P(COVID-19) {result.p_covid:.6f} vs t_B {t_b}"
            )
    return a_positive, b_positive


def _threshold(model: ModelIdentity, index: int, what: str) -> list[str]:
    if model.thresholds is None:
        return []
    t = model.thresholds[index]
    return [f"decision threshold {100 * t:g} %: {what} present when its probability is at least that"]


def _algorithm(model: ModelIdentity, what: str, *shas: str, extra: Sequence[str] = ()) -> hd.sr.AlgorithmIdentification:
    parameters = [f"weights sha256 {sha}" for sha in shas] + list(extra)
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


def _model_group(source, label, uid, finding, positive, name, probability, algorithm):
    """One model's output: its probability (NUM, UCUM %) and its answer, Present or Absent.

    The finding is coded as a Finding (121071) only when the model found it: an indexer of
    TID 1500 findings then never reads an absent finding as one. The Present / Absent
    evaluation is there either way, so "COVID-19: Absent" is a statement, not a silence.
    """
    return _group(
        source,
        label,
        uid,
        finding if positive else None,
        algorithm,
        # 4 decimals of a percent: a rounded value never lands on the other side of a threshold
        # given in whole or half percents unless the model output is within 5e-7 of it.
        measurements=[
            hd.sr.Measurement(name=name, value=round(100 * probability, 4), unit=PERCENT, algorithm_id=algorithm)
        ],
        evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=PRESENT if positive else ABSENT)],
    )


def _illustration(sc: Dataset) -> hd.sr.ImageContentItem:
    """IMAGE content item referencing the Grad-CAM Secondary Capture.

    Why this form: TID 1501 (Measurement Group) is an extensible template and its rows
    10b-10h already admit IMAGE items in the group. The picture is not a *source* of the
    result (so not SCT 260753009 "Source" nor DCM 121112 "Source of Measurement"); it
    illustrates where the models looked, which is what DCM 121200 "Illustration of ROI"
    means where the standard itself uses it (TID 1410 row 9). It sits in the overall-result
    group, the result it illustrates. PS3.3 C.17.2 wants every instance the content tree
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


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _code(name: hd.sr.CodedConcept, value: hd.sr.CodedConcept) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def intended_use(model: ModelIdentity) -> str:
    return wording.intended_use(model.trained)


def illustration_text(sc: Dataset | None) -> str:
    if sc is None:
        return ILLUSTRATION_NOT_STORED
    return (
        f"Grad-CAM Secondary Capture in this study, series {sc.get('SeriesNumber', '')}, "
        f"instance {sc.get('InstanceNumber', '')} (where the models looked)"
    )


def _summary_items(
    source: Dataset,
    model: ModelIdentity,
    sc: Dataset | None,
    notes: Sequence[str] = (),
    analysed: AnalysedImage | None = None,
) -> list:
    """The readable statements of the overall-result group, after its coded evaluations."""
    items: list[hd.sr.ContentItem] = [
        _text(AI_MODEL, model.description),
        _text(ANALYSED_IMAGE, (analysed or AnalysedImage.of(source)).text),
        _text(INTENDED_USE, intended_use(model)),
        *(_text(NOTE, note) for note in clean_notes(notes)),
        _text(ILLUSTRATION_NOTE, illustration_text(sc)),
    ]
    if sc is not None:
        items.append(_illustration(sc))
    return items


def _top_level_evaluations(result: JointResult, model: ModelIdentity) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the document-level conclusion, where programs look for it."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            _code(OVERALL_CLASS, CLASS_CODES[result.label]),
            _text(AI_MODEL, model.description),
            _text(INTENDED_USE, intended_use(model)),
        ]
    )
    return container


def _coding_scheme_identification() -> list[Dataset]:
    # a list, as highdicom declares the attribute; pydicom makes it a Sequence on assignment
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return [item]


def clean_notes(notes: Sequence[str]) -> list[str]:
    """The notes as one-line sentences, blanks and repeats dropped, in the order given."""
    out: list[str] = []
    for note in notes:
        text = " ".join(str(note).split())
        if text and text not in out:
            out.append(text)
    return out


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
    notes: Sequence[str] = (),
    analysed: AnalysedImage | None = None,
) -> hd.sr.MeasurementReport:
    """sc=None: the report for a PACS that does not hold the Grad-CAM SC (it says so).

    notes: short sentences on how the node read this image (e.g. "window: node's robust
    window (WindowWidth 0 ignored)", "patient age not stated"), one TEXT item each.
    analysed: the source in words (AnalysedImage.of with the node's vocabulary); None: read here.
    """
    a_positive, b_positive = model_answers(result, model)
    algo_a = _algorithm(model, "model A (normal vs abnormal)", model.sha256_a, extra=_threshold(model, 0, "Abnormal"))
    algo_b = _algorithm(model, "model B (COVID-19 vs not)", model.sha256_b, extra=_threshold(model, 1, "COVID-19"))
    algo_joint = _algorithm(model, "joint rule (A + B)")  # its weights are named in groups A and B
    key = uids.sr_instance  # tracking UIDs: stable for the same source and bundle
    evaluations = [
        hd.sr.QualitativeEvaluation(name=OVERALL_CLASS, value=CLASS_CODES[result.label]),
        hd.sr.QualitativeEvaluation(name=MODEL_STATUS, value=TRAINED if model.trained else UNTRAINED),
    ]
    if result.models_disagree:
        evaluations.append(hd.sr.QualitativeEvaluation(name=MODELS_DISAGREE, value=YES))
    summary = _group(
        source,
        TRACKING_SUMMARY,
        derived_uid("track-joint", key),
        CLASS_CODES[result.label],
        algo_joint,
        evaluations=evaluations,
    )
    summary[0].ContinuityOfContent = "SEPARATE"  # each statement on its own line, with its name
    summary[0].ContentSequence.extend(_summary_items(source, model, sc, notes, analysed))
    group_a = _model_group(
        source, TRACKING_A, derived_uid("track-a", key), ABNORMAL, a_positive, P_ABNORMAL, result.p_abnormal, algo_a
    )
    group_b = _model_group(
        source, TRACKING_B, derived_uid("track-b", key), COVID_19, b_positive, P_COVID, result.p_covid, algo_b
    )
    for group in (group_a, group_b):  # "Probability of COVID-19: 77.88 %", not a bare number
        group[0].ContinuityOfContent = "SEPARATE"
    report = measurement_report(source, node, [summary, group_a, group_b])
    report[0].ContentSequence.append(_top_level_evaluations(result, model))
    return report


def build_structured_report(
    source: Dataset,
    result: JointResult,
    uids: ResultUIDs,
    node: NodeIdentity,
    model: ModelIdentity,
    sc: Dataset | None = None,
    fallback: bool = False,
    content: hd.sr.MeasurementReport | None = None,
    notes: Sequence[str] = (),
    when: ResultTime | None = None,
    analysed: AnalysedImage | None = None,
) -> Dataset:
    """Comprehensive 3D SR, or with fallback=True the same content as Comprehensive SR.

    sc=None builds the report that says the illustration was not stored (its own UID,
    the one `without_illustration` gives the written report).
    when: the instant the result was made, in the zone it states (times.result_time);
    None: now, by the host's clock.
    """
    ref = as_reference(source)
    if when is None:
        when = result_time(source, utc_now())
    if content is None:
        content = build_report_content(
            ref, result, uids, node, model, sc, [*notes, *filter(None, [when.note])], analysed
        )
    cls = hd.sr.ComprehensiveSR if fallback else hd.sr.Comprehensive3DSR
    description = series_description("AI", result, model)
    instance_uid = uids.sr_instance if sc is not None else no_illustration_sr_uid(uids.sr_instance)
    return node_sr(
        cls,
        source,
        node,
        model,
        when,
        evidence=[ref] + ([sc] if sc is not None else []),
        content=content,
        series_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        instance_uid=fallback_sr_uid(instance_uid) if fallback else instance_uid,
        instance_number=(1 if sc is not None else 3) + (1 if fallback else 0),
        description=description,
    )


def measurement_report(ref: Dataset, node: NodeIdentity, groups: list) -> hd.sr.MeasurementReport:
    """TID 1500 around `groups`, observed by the node as a device, on the analysed image `ref`."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=node.device_uid, name=node.ae_title, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[ref] if has_image_library_descriptors(ref) else None,
    )


def node_sr(
    cls: type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR],
    source: Dataset,
    node: NodeIdentity,
    model: ModelIdentity,
    when: ResultTime,
    *,
    evidence: list[Dataset],
    content: hd.sr.MeasurementReport,
    series_uid: str,
    series_number: int,
    instance_uid: str,
    instance_number: int,
    description: str,
) -> Dataset:
    """An SR of the node's (the result's and the no-result one): preliminary and unverified, in the
    source's patient and study, stamped with the result's time, naming the node and the model."""
    sr = cls(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
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
    copy_patient_study(source, sr)
    # Made now, in the offset the report states; a new series too (viewers group series by date).
    stamp(sr, when, contributor=MANUFACTURER)
    sr.DeviceUID = node.device_uid
    sr.StationName = node.ae_title[:16]
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


def _without_images(items, sop_class_uid: str) -> tuple[list, list[str]]:
    """Content items minus IMAGE items referencing sop_class_uid (recursively); the UIDs removed."""
    kept, removed = [], []
    for item in items:
        refs = item.get("ReferencedSOPSequence") if item.get("ValueType") == "IMAGE" else None
        if refs and refs[0].ReferencedSOPClassUID == sop_class_uid:
            removed.append(str(refs[0].ReferencedSOPInstanceUID))
            continue
        if "ContentSequence" in item:
            item.ContentSequence, inner = _without_images(item.ContentSequence, sop_class_uid)
            removed += inner
        kept.append(item)
    return kept, removed


def _restate_illustration(items) -> int:
    """Set every "Grad-CAM illustration" TEXT item to the not-stored statement; how many there were."""
    n = 0
    for item in items:
        names = item.get("ConceptNameCodeSequence")
        if (
            item.get("ValueType") == "TEXT"
            and names
            and names[0].CodeValue == ILLUSTRATION_NOTE.value
            and names[0].CodingSchemeDesignator == PRIVATE_SCHEME
        ):
            item.TextValue = ILLUSTRATION_NOT_STORED
            n += 1
        n += _restate_illustration(item.get("ContentSequence", []))
    return n


def without_illustration(sr: Dataset) -> Dataset:
    """The written report (Comprehensive 3D SR) as it must go to a PACS that refused the Grad-CAM SC.

    The IMAGE item that references the SC and the SC's entry in the evidence sequence go
    (the PACS would hold a dangling reference otherwise); the "Grad-CAM illustration"
    statement says the picture was not stored. Different content, so its own SOP
    Instance UID, derived from the full report's (`identity.no_illustration_sr_uid`):
    the same call on the same report gives the same object. Same series; instance
    number + 2. Read back through highdicom, which checks the SOP class and the tree.
    Equal to `build_structured_report(..., sc=None)` for the same inputs, except for
    the creation and content times. For a PACS that also refuses 3D SR, convert after:
    `as_comprehensive_sr(without_illustration(sr))` (one UID per object: the other order
    would derive a second UID for the same content, so a Comprehensive SR is refused here).
    Raises ValueError for a report that has no SC reference.
    """
    if sr.SOPClassUID != COMPREHENSIVE_3D_SR:
        raise ValueError(
            f"SOP class {sr.SOPClassUID} is not Comprehensive 3D SR: leave the illustration out of the written "
            "3D SR first, then make the Comprehensive SR of the result (as_comprehensive_sr)"
        )
    ds = copy.deepcopy(sr)
    ds.ContentSequence, removed = _without_images(ds.ContentSequence, SECONDARY_CAPTURE)
    if not removed:
        raise ValueError(f"report {sr.SOPInstanceUID} references no Secondary Capture: nothing to leave out")
    if _restate_illustration(ds.ContentSequence) == 0:
        raise ValueError(f"report {sr.SOPInstanceUID} has no Grad-CAM illustration statement to restate")
    gone = set(removed)
    studies = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        series_items = []
        for series in study.ReferencedSeriesSequence:
            series.ReferencedSOPSequence = [
                i for i in series.ReferencedSOPSequence if i.ReferencedSOPInstanceUID not in gone
            ]
            if series.ReferencedSOPSequence:
                series_items.append(series)
        study.ReferencedSeriesSequence = series_items
        if series_items:
            studies.append(study)
    ds.CurrentRequestedProcedureEvidenceSequence = studies
    ds.SOPInstanceUID = no_illustration_sr_uid(str(sr.SOPInstanceUID))
    ds.InstanceNumber = int(sr.get("InstanceNumber", 1)) + 2
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return hd.sr.Comprehensive3DSR.from_dataset(ds, copy=False)
