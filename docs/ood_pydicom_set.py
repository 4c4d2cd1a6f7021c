"""Write the non-chest grey images of pydicom-data as CR "chest" radiographs, for the out-of-domain
figures in docs/training.md: the header says CR CHEST AP, the pixels are a CT slice, an MR, a hand...

    python docs/ood_pydicom_set.py OUT_DIR
    cxr-node evaluate --models BUNDLE --data OUT_DIR --domain-only

Each file keeps its own pixel data, transfer syntax and window; only the SOP class (CR Image
Storage), Modality, BodyPartExamined and ViewPosition change, as a mislabelled study would arrive.
RG1_UNCR.dcm (a real CR chest radiograph) is written too, as kind "chest-control".
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Single-frame grey images of pydicom-data that are not chest radiographs (RGB and multi-frame left out).
NON_CHEST = {
    "CT_small.dcm": "ct",
    "693_UNCR.dcm": "ct",
    "explicit_VR-UN.dcm": "ct",
    "MR_small.dcm": "mr",
    "MR2_UNCR.dcm": "mr",
    "examples_overlay.dcm": "mr",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "mr",
    "RG3_UNCR.dcm": "cr-extremity",
    "JPEG2000.dcm": "nm-whole-body",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "us-grey",
    "mlut_18.dcm": "ot",
    "image_dfl.dcm": "ot",
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "kind", "source"])
        for name, kind in [*NON_CHEST.items(), ("RG1_UNCR.dcm", "chest-control")]:
            path = get_testdata_file(name)
            if path is None:
                raise SystemExit(f"{name} not found: install pydicom-data")
            ds = pydicom.dcmread(path)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "AP"
            ds.save_as(out / name, enforce_file_format=True)
            w.writerow([name, kind, f"pydicom-data {name}"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
