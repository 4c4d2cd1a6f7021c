"""The words every result, page and log line uses for the same facts: one home, so they never drift.

The SR, the SC, the status page, the CLI and the notifications (HL7, FHIR) all say that a
result is not for diagnostic use, that an untrained model made it, and which class it is;
a reader comparing two of them must find the same sentence. Plain ASCII (the SC's font
draws no other characters).
"""

from __future__ import annotations

from cxr_node.analysis.fusion import JointClass

NOT_FOR_DIAGNOSIS = "AI result - not for diagnostic use"
UNTRAINED_MODEL_TEXT = "UNTRAINED MODEL - NOT FOR CLINICAL USE"
# The same fact with the reason, where there is room (algorithm parameters, equipment description).
UNTRAINED_STATUS = "UNTRAINED (random weights) - not for clinical use"

# The joint class in a radiologist's words (the SR's code meanings and the SC's findings box).
CLASS_WORDS = {
    JointClass.NORMAL: "Normal",
    JointClass.PATHOLOGICAL: "Pathological (non-COVID-19)",
    JointClass.COVID: "COVID-19",
}


def intended_use(trained: bool) -> str:
    """The intended-use sentence: the untrained warning first when the model is untrained."""
    return NOT_FOR_DIAGNOSIS if trained else f"{UNTRAINED_MODEL_TEXT}; {NOT_FOR_DIAGNOSIS}"
