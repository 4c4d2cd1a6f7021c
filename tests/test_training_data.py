"""Training data validation, configuration, splits, leak checks, augmentation and metrics.

Fast: synthetic files only, no model is trained here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr_node.analysis.fusion import Thresholds
from cxr_node.analysis.preprocess import to_model_input
from cxr_node.cli import main
from cxr_node.decoding.pixels import read_image
from training.config import ConfigError, config_from_dict, load_config
from training.data import DataError, load_data
from training.dataset import Augment, SquareDataset
from training.metrics import binary_metrics, choose_joint_thresholds, joint_metrics, summarise
from training.pipeline import resolve_weights
from training.splits import (
    Split,
    balanced_subset,
    cross_split_duplicates,
    hash_all,
    label_counts,
    make_split,
    near_duplicates,
    patient_overlap,
)
from training.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def synth(tmp_path) -> Path:
    return write_synthetic(tmp_path / "synth", patients_per_label=3, images_per_patient=2, size=40)


def _append_rows(folder: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(folder / "manifest.csv", "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


# --- bad rows ---------------------------------------------------------------------------------


def test_bad_rows_are_reported_with_line_numbers_and_refused(synth):
    (synth / "images" / "broken.png").write_bytes(b"this is not a PNG")
    # 18 good rows occupy lines 2..19 of manifest.csv
    _append_rows(
        synth,
        [
            ("images/missing.png", "x-1", "covid"),  # line 20
            ("images/nor-0-0.png", "x-2", "influenza"),  # line 21
            ("images/broken.png", "x-3", "normal"),  # line 22
            ("images/nor-1-0.png", "", "normal"),  # line 23
        ],
    )
    with pytest.raises(DataError) as err:
        load_data(synth, 32)
    text = str(err.value)
    assert "4 bad row(s)" in text and "--skip-bad-rows" in text
    assert "manifest.csv line 20: image file images/missing.png does not exist" in text
    assert "manifest.csv line 21: unknown label 'influenza'" in text
    assert "manifest.csv line 22: unreadable image" in text and "broken.png" in text
    assert "manifest.csv line 23: patient_id is empty" in text
    assert [b.line for b in err.value.bad_rows] == [20, 21, 22, 23]

    logged = []
    data = load_data(synth, 32, skip_bad_rows=True, log=logged.append)
    assert len(data.samples) == 18 and data.squares.shape == (18, 32, 32)
    assert [b.line for b in data.bad_rows] == [20, 21, 22, 23]
    assert "skipping 4 bad row(s)" in logged[0]


def test_duplicate_image_rows_and_missing_columns(synth, tmp_path):
    _append_rows(synth, [("images/cov-0-0.png", "cov-0", "covid")])
    with pytest.raises(DataError, match=r"line 20: image images/cov-0-0.png is listed again \(first on line 14\)"):
        load_data(synth, 32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.csv").write_text("image,label\nimages/a.png,normal\n")
    with pytest.raises(DataError, match="line 1: missing column.*patient_id"):
        load_data(bad, 32)


def test_train_command_refuses_bad_rows_before_training(synth, tmp_path):
    _append_rows(synth, [("images/missing.png", "x-1", "covid")])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["train", "--config", str(REPO / "configs/train-smoke.toml"), "--data", str(synth), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "manifest.csv line 20: image file images/missing.png does not exist" in result.output
    assert not list((out / "checkpoints").glob("*.pt"))


def _write_dicom(path: Path, uid: str, patient: str, value: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID, ds.Modality = SecondaryCaptureImageStorage, uid, patient, "OT"
    ds.Rows = ds.Columns = 40
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.full((40, 40), value, dtype=np.uint16)
    pixels[10:30, 10:30] = 4000
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_folder_with_labels_keyed_by_sop_instance_uid(tmp_path):
    folder = tmp_path / "dicom"
    (folder / "sub").mkdir(parents=True)
    uids = [generate_uid() for _ in range(3)]
    _write_dicom(folder / "a.dcm", uids[0], "P1", 100)
    _write_dicom(folder / "sub" / "b", uids[1], "P2", 200)  # no extension, in a sub-folder
    _write_dicom(folder / "c.dcm", uids[2], "P3", 300)
    (folder / "notes.txt").write_text("not DICOM")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "sop_instance_uid,label,patient_id\n"
        f"{uids[0]},normal,\n"  # line 2: patient from the file's PatientID
        f"{uids[1]},COVID,override\n"  # line 3: label case-insensitive, patient from the CSV
        f"1.2.3.4.5,covid,\n"  # line 4: no such file
        f"{uids[2]},flu,\n"  # line 5: unknown label
    )
    with pytest.raises(DataError) as err:
        load_data(folder, 32, labels_csv=labels)
    assert [b.line for b in err.value.bad_rows] == [4, 5]
    assert "labels.csv line 4: no DICOM file with SOP Instance UID '1.2.3.4.5'" in str(err.value)
    data = load_data(folder, 32, labels_csv=labels, skip_bad_rows=True, log=lambda m: None)
    assert [(s.patient_id, s.label) for s in data.samples] == [("P1", "normal"), ("override", "covid")]
    assert data.squares.shape == (2, 32, 32) and data.squares.max() > 0.5


# --- configuration ------------------------------------------------------------------------------


def test_paper_config_is_the_papers_protocol():
    cfg = load_config(REPO / "configs/train-paper.toml")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.batch_size, cfg.optim.epochs) == (0.01, 0.9, 4, 200)
    assert (cfg.split.train, cfg.split.val, cfg.split.test, cfg.run.repetitions) == (0.6, 0.2, 0.2, 5)
    assert cfg.model.init == "imagenet" and cfg.approach.b_balanced and cfg.augment.hflip == 0.5
    smoke = load_config(REPO / "configs/train-smoke.toml")
    assert smoke.run.repetitions == 1 and smoke.optim.epochs <= 2 and smoke.data.input_size <= 96


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"optim": {"learning_rate": 0.1}}, "optim.learning_rate: unknown key"),
        ({"optim": {"epochs": "ten"}}, "optim.epochs: 'ten' must be an integer"),
        ({"optim": {"epochs": 0}}, "optim.epochs: must be >= 1"),
        ({"split": {"train": 0.7}}, "split.test: split.train + split.val + split.test must be 1"),
        ({"split": {"unit": "study"}}, "split.unit"),
        ({"run": {"amp": 1}}, "run.amp: 1 must be true or false"),
        ({"model": {"init": "random"}}, "model.init"),
        ({"model": {"arch": "resnet50"}}, "model.arch: must be one of densenet161, densenet121, got 'resnet50'"),
        ({"approach": {"select_metric": "f1"}}, "approach.select_metric"),
        ({"optimiser": {}}, "optimiser: unknown section"),
    ],
)
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(key)


def test_overrides_and_weights_errors(tmp_path, monkeypatch):
    cfg = load_config(REPO / "configs/train-smoke.toml", ["optim.epochs=7", "run.device=cpu", "optim.lr=0.5"])
    assert (cfg.optim.epochs, cfg.run.device, cfg.optim.lr) == (7, "cpu", 0.5)
    with pytest.raises(ConfigError, match="optim.epochs: .many. must be an integer"):
        load_config(REPO / "configs/train-smoke.toml", ["optim.epochs=many"])
    imagenet = config_from_dict({"model": {"init": "imagenet", "imagenet_weights": str(tmp_path / "none.pth")}})
    with pytest.raises(ConfigError, match="^model.imagenet_weights: .*none.pth does not exist"):
        resolve_weights(imagenet)
    assert resolve_weights(config_from_dict({"model": {"init": "scratch"}})) is None
    # the device and worker count do not change the weights; a resumed run may move machines
    same = ["optim.epochs=7", "optim.lr=0.5", "run.num_workers=3"]
    assert cfg.fingerprint() == load_config(REPO / "configs/train-smoke.toml", same).fingerprint()
    assert (
        cfg.fingerprint()
        != load_config(REPO / "configs/train-smoke.toml", ["optim.epochs=8", "optim.lr=0.5"]).fingerprint()
    )
    # model.arch: the paper's default hashes as before the key existed (earlier checkpoints still
    # resume); another architecture is other weights
    assert (
        cfg.fingerprint()
        == load_config(REPO / "configs/train-smoke.toml", [*same, "model.arch=densenet161"]).fingerprint()
    )
    small = load_config(REPO / "configs/train-smoke.toml", [*same, "model.arch=densenet121"])
    assert small.model.arch == "densenet121" and small.fingerprint() != cfg.fingerprint()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the arch's file is named
    with pytest.raises(ConfigError, match="^model.init: 'imagenet' needs a local densenet121-a639ec97.pth"):
        resolve_weights(config_from_dict({"model": {"arch": "densenet121"}}))


# --- splits and leak checks -----------------------------------------------------------------------


def _toy_population(seed=0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for p in range(120):
        label = rng.choice(["normal", "pathological", "covid"], p=[0.1, 0.2, 0.7])
        for _ in range(rng.integers(1, 5)):
            labels.append(label)
            groups.append(f"p{p}")
    labels.extend(["covid", "normal"])  # a patient with two labels
    groups.extend(["mixed", "mixed"])
    return np.array(labels), np.array(groups)


def test_patient_split_is_grouped_stratified_and_seeded():
    labels, groups = _toy_population()
    split = make_split(labels, groups, (0.6, 0.2, 0.2), seed=3)
    assert sorted(np.concatenate(list(split.parts().values())).tolist()) == list(range(len(labels)))
    assert patient_overlap(split, groups) == {"train-val": 0, "train-test": 0, "val-test": 0}
    counts = label_counts(split, labels)
    for label in ("normal", "pathological", "covid"):
        total = int(np.sum(labels == label))
        for part, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            # whole patients of up to 4 images: within one patient of the target
            assert abs(counts[part].get(label, 0) - frac * total) <= 4, (label, part, counts)
    other = make_split(labels, groups, (0.6, 0.2, 0.2), seed=4)
    assert not np.array_equal(split.test, other.test)
    assert np.array_equal(split.test, make_split(labels, groups, (0.6, 0.2, 0.2), seed=3).test)
    by_image = make_split(labels, np.arange(len(labels)).astype(str), (0.6, 0.2, 0.2), seed=3)
    assert sum(patient_overlap(by_image, groups).values()) > 0  # why the paper's split leaks


def test_near_duplicates_found_across_splits_only(synth):
    data = load_data(synth, 64)
    squares = np.concatenate([data.squares, np.clip(data.squares[:1] * 1.03 + 0.01, 0, 1)])
    hashes = hash_all(squares)
    pairs = near_duplicates(hashes, 6)
    n = len(squares)
    assert (0, n - 1) in [(i, j) for i, j, _ in pairs]  # the re-exposed copy of image 0
    apart = Split(np.array([0]), np.array([n - 1]), np.array([], dtype=np.int64))
    together = Split(np.array([0, n - 1]), np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert [(i, j) for i, j, *_ in cross_split_duplicates(pairs, apart, n)] == [(0, n - 1)]
    assert cross_split_duplicates(pairs, together, n) == []


def test_balanced_subset_is_one_to_one_to_one():
    labels, _ = _toy_population()
    idx = balanced_subset(np.arange(len(labels)), labels, ("normal", "pathological", "covid"), seed=0)
    counts = [int(np.sum(labels[idx] == c)) for c in ("normal", "pathological", "covid")]
    rarest = min(int(np.sum(labels == c)) for c in ("normal", "pathological", "covid"))
    assert counts[0] == counts[1] == counts[2] == rarest


# --- preprocessing and augmentation ---------------------------------------------------------------


def test_training_inputs_are_the_runtime_inputs(synth):
    data = load_data(synth, 48)
    ds = SquareDataset(data.squares, np.arange(3), np.zeros(3))
    for i in range(3):
        expected, _ = to_model_input(read_image(data.samples[i].image).pixels, 48)
        assert np.array_equal(ds[i][0].numpy(), expected)


def test_augmentation_is_seeded_by_epoch_and_index(synth):
    data = load_data(synth, 48)
    ds = SquareDataset(data.squares, np.arange(4), np.zeros(4), Augment(0.8, 1.2, 0.5), seed=1)
    first = [ds[i][0] for i in range(4)]
    assert all(np.array_equal(a.numpy(), ds[i][0].numpy()) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert any(not np.array_equal(a.numpy(), ds[i][0].numpy()) for i, a in enumerate(first))
    flip = SquareDataset(data.squares, np.arange(1), np.zeros(1), Augment(1.0, 1.0, 1.0))
    plain = SquareDataset(data.squares, np.arange(1), np.zeros(1))
    assert np.array_equal(flip[0][0].numpy(), plain[0][0].numpy()[:, :, ::-1])


# --- metrics ------------------------------------------------------------------------------------------


def test_joint_thresholds_are_chosen_on_validation():
    labels = np.array(["normal"] * 4 + ["pathological"] * 4 + ["covid"] * 4)
    # A separates normal at 0.3, B separates COVID at 0.8: defaults (0.5, 0.5) get it wrong
    p_abn = np.array([0.1, 0.2, 0.25, 0.28, 0.35, 0.6, 0.4, 0.9, 0.95, 0.9, 0.99, 0.97])
    p_cov = np.array([0.1, 0.6, 0.2, 0.3, 0.7, 0.65, 0.1, 0.2, 0.85, 0.9, 0.95, 0.99])
    before = joint_metrics(labels, p_abn, p_cov, Thresholds(0.5, 0.5))
    assert before["balanced_accuracy"] < 0.8
    th, score = choose_joint_thresholds(labels, p_abn, p_cov)
    assert score == 1.0 and 0.28 < th.a <= 0.35 and 0.7 < th.b <= 0.85
    after = joint_metrics(labels, p_abn, p_cov, th)
    assert after["accuracy"] == 1.0 and after["confusion_matrix"]["matrix"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    assert after["auc_a"] == 1.0 and after["counts"] == {"normal": 4, "pathological": 4, "covid": 4}
    assert before["per_class"]["Normal"]["recall"] == 0.75  # one normal has p_cov 0.6: COVID-19 at t_B=0.5


def test_summary_mean_and_sample_std():
    runs = [
        {"accuracy": 0.8, "auc": None, "per_class": {"x": {"f1": 0.5}}},
        {"accuracy": 0.9, "auc": 0.7, "per_class": {"x": {"f1": 0.7}}},
    ]
    s = summarise(runs)
    assert s["accuracy"]["mean"] == pytest.approx(0.85) and s["accuracy"]["std"] == pytest.approx(0.0707107)
    assert s["auc"] == {"mean": 0.7, "std": None, "n": 1}
    assert s["per_class.x.f1"]["mean"] == pytest.approx(0.6)


def test_an_empty_test_subset_scores_as_missing_not_as_a_crash():
    # A tiny class can leave model B's balanced test subset empty (seen with data.subset=40).
    empty = np.zeros(0)
    m = binary_metrics(empty, empty, "B")
    assert m["n"] == 0 and m["accuracy"] is None and m["balanced_accuracy"] is None and m["auc"] is None
    assert m["confusion_matrix"]["matrix"] == [[0, 0], [0, 0]]
    assert all(c["support"] == 0 and c["f1"] is None for c in m["per_class"].values())
    j = joint_metrics(np.array([], dtype=str), empty, empty, Thresholds(0.5, 0.5))
    assert j["accuracy"] is None and j["confusion_matrix"]["matrix"] == [[0] * 3] * 3
    full = binary_metrics(np.array([0, 1]), np.array([0.2, 0.9]), "B")
    s = summarise([m, full])
    assert s["accuracy"] == {"mean": 1.0, "std": None, "n": 1}


def test_subset_keeps_whole_patients_and_every_label(tmp_path):
    from training.data import read_samples, subset_by_patient

    folder = write_synthetic(tmp_path / "s", patients_per_label=6, images_per_patient=2, size=32)
    samples, _ = read_samples(folder)
    sub = subset_by_patient(samples, 12, seed=1)
    assert 10 <= len(sub) <= 14
    assert {s.label for s in sub} == {"normal", "pathological", "covid"}
    chosen = {s.patient_id for s in sub}
    assert all((s in sub) == (s.patient_id in chosen) for s in samples)
    assert subset_by_patient(samples, 0, seed=1) == samples


def test_near_duplicate_groups_are_merged_before_splitting():
    from training.splits import merge_groups

    groups = np.array(["p1", "p1", "p2", "p3", "p4", "p5"])
    merged = merge_groups(groups, [(1, 2, 0), (3, 5, 4)])  # p1~p2, p3~p5
    assert merged[0] == merged[1] == merged[2] and merged[3] == merged[5]
    assert len(set(merged.tolist())) == 3  # {p1,p2}, {p3,p5}, {p4}
    labels = np.array(["covid"] * 6)
    split = make_split(labels, merged, (0.6, 0.2, 0.2), seed=0)
    where = split.part_of(6)
    assert where[0] == where[2] and where[3] == where[5]
