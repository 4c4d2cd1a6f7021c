"""TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom), in the source study.

Content:
  observer          the node as a device (manufacturer, model name, device UID)
  procedure         SCT 363679005 "Imaging procedure"
  group "Model A"   Certainty of Finding (DCM 111012, %) that the image is abnormal
  group "Model B"   Certainty of Finding that it shows COVID-19
  group "Summary"   Finding (DCM 121071) = the joint class; "models disagree" and
                    "untrained model" flags as qualitative evaluations when they apply
Every group names its algorithm (TID 4019: bundle name, version, weight sha256) and
the source radiograph as its source image.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

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
)
from cxr_node.results.render import UNTRAINED_WARNING

SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI CXR classification - not for diagnosis"

IMAGING_PROCEDURE = codes.SCT.ImagingProcedure
CERTAINTY = codes.DCM.CertaintyOfFinding
FINDING = codes.DCM.Finding
PERCENT = codes.UCUM.Percent
ABNORMAL = codes.SCT.Abnormal
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")

CLASS_CODES = {
    JointClass.NORMAL: hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    JointClass.PATHOLOGICAL: hd.sr.CodedConcept("CXR001", PRIVATE_SCHEME, "Pathological finding, non-COVID-19"),
    JointClass.COVID: hd.sr.CodedConcept("840539006", "SCT", "Disease caused by SARS-CoV-2"),
}
MODELS_DISAGREE = hd.sr.CodedConcept("CXR002", PRIVATE_SCHEME, "Models disagree")
MODEL_STATUS = hd.sr.CodedConcept("CXR003", PRIVATE_SCHEME, "Model training status")
UNTRAINED = hd.sr.CodedConcept("CXR004", PRIVATE_SCHEME, "Untrained model - not for clinical use")


def _algorithm(model: ModelIdentity, which: str, sha: str) -> hd.sr.AlgorithmIdentification:
    name = f"{model.name} model {which}"
    if not model.trained:
        name = f"{name} ({UNTRAINED_WARNING})"
    return hd.sr.AlgorithmIdentification(name=name[:64], version=model.version, parameters=[f"sha256={sha}"])


def _group(source: Dataset, label: str, uid: str, finding_type, algorithm, measurements=None, evaluations=None):
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=label),
        finding_type=finding_type,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )


def _coding_scheme_identification() -> Sequence:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return Sequence([item])


def build_structured_report(
    source: Dataset,
    result: JointResult,
    uids: ResultUIDs,
    node: NodeIdentity,
    model: ModelIdentity,
    sc: Dataset | None = None,
) -> Dataset:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=node.device_uid, name=node.ae_title, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    algo_a = _algorithm(model, "A", model.sha256_a)
    algo_b = _algorithm(model, "B", model.sha256_b)
    key = uids.sr_instance
    group_a = _group(
        source, "Model A: normal vs abnormal", derived_uid("track-a", key), ABNORMAL, algo_a,
        measurements=[hd.sr.Measurement(name=CERTAINTY, value=round(100 * result.p_abnormal, 2), unit=PERCENT, algorithm_id=algo_a)],
    )
    group_b = _group(
        source, "Model B: COVID-19 vs not", derived_uid("track-b", key), CLASS_CODES[JointClass.COVID], algo_b,
        measurements=[hd.sr.Measurement(name=CERTAINTY, value=round(100 * result.p_covid, 2), unit=PERCENT, algorithm_id=algo_b)],
    )
    evaluations = [hd.sr.QualitativeEvaluation(name=FINDING, value=CLASS_CODES[result.label])]
    if result.models_disagree:
        evaluations.append(hd.sr.QualitativeEvaluation(name=MODELS_DISAGREE, value=YES))
    if not model.trained:
        evaluations.append(hd.sr.QualitativeEvaluation(name=MODEL_STATUS, value=UNTRAINED))
    summary = _group(source, "Joint classification", derived_uid("track-joint", key), FINDING, algo_a, evaluations=evaluations)

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group_a, group_b, summary],
    )
    evidence = [source] + ([sc] if sc is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION if model.trained else f"{SR_SERIES_DESCRIPTION} - UNTRAINED",
        manufacturer_model_name=MODEL_NAME,
        software_versions=node.software_version,
    )
    if "SpecificCharacterSet" in source:
        sr.SpecificCharacterSet = source.SpecificCharacterSet
    sr.CodingSchemeIdentificationSequence = _coding_scheme_identification()
    return sr
