"""The node's C-STORE status names agree with pynetdicom's table (PS3.4 Annex B.2.3)."""

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from cxr_node.dicom import status


def test_named_codes_are_the_standards():
    assert STORAGE_SERVICE_CLASS_STATUS[status.OUT_OF_RESOURCES] == ("Failure", "Refused: Out of Resources")
    assert STORAGE_SERVICE_CLASS_STATUS[status.DATASET_DOES_NOT_MATCH][0] == "Failure"
    assert "SOP Class" in STORAGE_SERVICE_CLASS_STATUS[status.DATASET_DOES_NOT_MATCH][1]
    assert STORAGE_SERVICE_CLASS_STATUS[status.CANNOT_UNDERSTAND][0] == "Failure"
    assert status.status_meaning(status.SOP_CLASS_NOT_SUPPORTED).startswith("0x0122 Refused: SOP Class")


def test_stored_means_success_or_warning():
    assert status.status_ok(0x0000) and status.status_ok(0xB000) and status.status_ok(0xB007)
    assert not status.status_ok(0xA700) and not status.status_ok(0x0122) and not status.status_ok(None)
