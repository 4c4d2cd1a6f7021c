"""The analysed image's view in the SR and SC: coded (ViewPosition, View Code) as stated; else
what the selection read from the descriptions, with the words and the attribute that said it."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_node.results.analysed_image import VIEW_NOT_STATED, AnalysedImage
from cxr_node.selection.config import parse_selection
from cxr_node.selection.vocabulary import builtin
from tests.test_results_support import TRAINED, make_results, source_copy


def _header(**attributes) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CR", 2, 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def vocabulary():
    return builtin()


@pytest.mark.parametrize(
    "attributes, expected",
    [
        ({"ViewPosition": "PA", "SeriesDescription": "TORAX AP PORTATIL"}, "view PA"),  # the coded value decides
        ({"SeriesDescription": "TORAX AP PORTATIL"}, "view AP (from SeriesDescription 'TORAX AP PORTATIL')"),
        ({"ProtocolName": "Thorax p.a."}, "view PA (from ProtocolName 'Thorax p.a.')"),
        ({"BodyPartExamined": "CHEST_AP"}, "view AP (from BodyPartExamined 'CHEST_AP')"),
        ({"StudyDescription": "RX TORAX PA"}, "view PA (from StudyDescription 'RX TORAX PA')"),
        # tiers 1-2 before the study's words, as the selection reads them
        (
            {"SeriesDescription": "Thorax lat", "StudyDescription": "TORAX PA Y LAT"},
            "view LAT (from SeriesDescription 'Thorax lat')",
        ),
        # two views in one description, two descriptions disagreeing, no words: no view named
        ({"SeriesDescription": "PA Y LATERAL"}, VIEW_NOT_STATED),
        ({"SeriesDescription": "TORAX AP", "ProtocolName": "TORAX LATERAL"}, VIEW_NOT_STATED),
        ({"SeriesDescription": "TORAX"}, VIEW_NOT_STATED),
        ({}, VIEW_NOT_STATED),
    ],
)
def test_view_from_words_names_the_attribute(attributes, expected, vocabulary):
    image = AnalysedImage.of(_header(**attributes), vocabulary)
    assert image.view_text == expected
    assert image.text == f"CR series 2, instance 1, {expected}"


def test_the_nodes_own_words_name_the_view():
    """A site's [selection] words are the ones that decide, for the selection and the result alike."""
    site = parse_selection(
        {"words": [{"kind": "view", "meaning": "frontal", "words": ["VISTA DELANTERA"], "source": "site test"}]}
    )
    header = _header(SeriesDescription="Vista delantera")
    assert AnalysedImage.of(header, builtin()).view_text == VIEW_NOT_STATED
    assert site.facts(header)["view"].value == "frontal"
    assert AnalysedImage.of(header, site.vocabulary).view_text == (
        "view VISTA DELANTERA (from SeriesDescription 'Vista delantera')"
    )


def test_sr_and_sc_say_where_the_view_was_read(rg1_uncr, tmp_path, vocabulary):
    source = source_copy(rg1_uncr, ViewPosition="", SeriesDescription="TORAX AP PORTATIL")
    _, files = make_results(rg1_uncr, tmp_path, "normal", model=TRAINED, source=source, vocabulary=vocabulary)
    expected = "CR series 1, instance 1, view AP (from SeriesDescription 'TORAX AP PORTATIL')"
    sr = pydicom.dcmread(files.sr_path)
    texts = [
        item.TextValue
        for group in sr.ContentSequence
        for inner in group.get("ContentSequence", [])
        for item in [inner, *(i for i in inner.get("ContentSequence", []))]
        if item.get("ValueType") == "TEXT"
    ]
    assert expected in texts, texts
    assert expected in pydicom.dcmread(files.sc_path).DerivationDescription
