"""cxr-node: a DICOM node that triages portable chest radiographs with two DenseNet-161 models."""

__version__ = "0.6.0"
