"""Bad input files, by kind, through every entry point that reads them: the bundle's preprocessing chain (training,
validation, inference, MONAI Label), evaluation, the baselines and the datalist builder. Each gives one error that
names the file, or a correct result; nothing is written on an error (see ``bundle/docs/reliability.md``)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import error_messages
from monai.transforms import Compose

from custom_nets.data import entry_id, load_items
from custom_nets.datasets.folders import DatalistError, build_datalist
from custom_nets.evaluation.baselines import predict_split
from custom_nets.evaluation.evaluate import evaluate_predictions
from custom_nets.transforms import SavePredictiond, preprocessing_transforms

KEYS = ("t1w", "flair", "mask", "pet")
SHAPE = (16, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _volume(key: str, rng: np.random.Generator) -> np.ndarray:
    if key == "mask":
        mask = np.zeros(SHAPE, np.uint8)
        mask[3:13, 3:13, 3:13] = 1
        return mask
    return (rng.random(SHAPE) + (1.0 if key == "pet" else 0.2)).astype(np.float32)


def _cohort(root: Path, subjects: int = 3) -> Path:
    """A flat folder ``<subject>_<key>.nii.gz`` and a datalist with every subject in training and test."""
    rng = np.random.default_rng(0)
    entries = []
    for index in range(subjects):
        subject = f"sub-{index:02d}"
        for key in KEYS:
            nib.save(nib.Nifti1Image(_volume(key, rng), AFFINE), str(root / f"{subject}_{key}.nii.gz"))
        entries.append({"subject": subject, "id": subject, **{k: f"{subject}_{k}.nii.gz" for k in KEYS}})
    (root / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries, "test": entries}))
    return root / "datalist.json"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path: Path, change) -> None:
    image = nib.load(str(path))
    array, affine = change(np.asanyarray(image.dataobj).astype(np.float32), image.affine.copy())
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _nan(array, affine):
    array[0, 0, :4] = np.nan  # background voxels, as some exports have
    return array, affine


def _shifted(array, affine):
    affine[0, 3] += 10.0
    return array, affine


BREAKERS = {
    "truncated": (_truncate, "cannot be read"),
    "non_finite": (lambda p: _rewrite(p, _nan), "4 non-finite values"),
    "two_volumes": (lambda p: _rewrite(p, lambda a, m: (np.stack([a, a], -1), m)), "4D with 2 volumes"),
    "one_slice": (lambda p: _rewrite(p, lambda a, m: (a[:, :, 0], m)), "(2D)"),
    "other_shape": (lambda p: _rewrite(p, lambda a, m: (a[:, :, :12], m)), "has shape (16, 16, 12)"),
    "other_affine": (lambda p: _rewrite(p, _shifted), "affine differs"),
}


def _bundle(datalist: Path, out: Path) -> None:
    chain = Compose(preprocessing_transforms(["t1w", "flair"]))
    # the validation split: the cohort's test entries are its training entries, which training refuses to load
    for item in load_items(datalist, "validation", ["t1w", "flair"], "pet"):
        chain(item)


def _evaluate(datalist: Path, out: Path) -> None:
    predictions = out / "pred"
    predictions.mkdir(parents=True)
    for target in datalist.parent.glob("sub-*_pet.nii.gz"):
        shutil.copy(target, predictions / target.name)
    evaluate_predictions(predictions, datalist, "pet", out_dir=out / "scores")


def _baselines(datalist: Path, out: Path) -> None:
    predict_split(datalist, "pet", out / "baselines", ["t1w", "flair"])


def _datalist_builder(datalist: Path, out: Path) -> None:
    keys = {key: f"{{subject}}_{key}.nii.gz" for key in KEYS}
    try:
        build_datalist(datalist.parent, out / "built.json", keys, layout="flat")
    except DatalistError as error:
        raise ValueError("\n".join(error.problems)) from None


ENTRY_POINTS = {"bundle": _bundle, "evaluate": _evaluate, "baselines": _baselines, "datalist": _datalist_builder}
# the files each entry point reads
READS = {"bundle": KEYS, "evaluate": ("mask", "pet"), "baselines": KEYS, "datalist": KEYS}


@pytest.mark.parametrize("kind", sorted(BREAKERS))
@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_bad_file_gets_one_error_naming_it_and_nothing_is_written(entry_point, kind, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    datalist = _cohort(data)
    key = "flair" if "flair" in READS[entry_point] else "pet"
    if kind in ("other_shape", "other_affine") and entry_point == "evaluate":
        key = "mask"  # evaluate compares the mask and the prediction with the target
    breaker, message = BREAKERS[kind]
    broken = data / f"sub-01_{key}.nii.gz"
    breaker(broken)
    if kind == "two_volumes" and entry_point == "bundle":
        message = "give 3 channel(s), but the model takes 2"  # a 4D file is read as channels (MONAI Label's layout)
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError, RuntimeError)) as raised:
        ENTRY_POINTS[entry_point](datalist, out)
    text = error_messages(raised.value)  # MONAI's Compose re-raises as "applying transform …" from the original error
    assert message in text and broken.name in text and "sub-01" in text, text
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in written if p.suffix in (".gz", ".json", ".csv") and "pred" not in p.parts], written


@pytest.mark.parametrize("entry_point", ["bundle", "evaluate", "baselines"])
def test_singleton_fourth_axis_is_read_as_3d(entry_point, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    datalist = _cohort(data)
    for key in ("flair", "pet"):
        _rewrite(data / f"sub-01_{key}.nii.gz", lambda a, m: (a[..., None], m))
    ENTRY_POINTS[entry_point](datalist, tmp_path / "out")


@pytest.mark.parametrize("entry_point", ["bundle", "evaluate", "baselines"])
def test_malformed_datalist_names_the_file(entry_point, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    datalist = _cohort(data)
    text = datalist.read_text()
    datalist.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="datalist .*datalist.json is not valid JSON"):
        ENTRY_POINTS[entry_point](datalist, tmp_path / "out")


def test_gzip_of_zero_bytes_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    datalist = _cohort(data)
    (data / "sub-00_t1w.nii.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(RuntimeError) as raised:
        _bundle(datalist, tmp_path / "out")
    assert "sub-00_t1w.nii.gz cannot be read" in error_messages(raised.value)


def test_flat_datalist_reports_a_subject_missing_its_first_key(tmp_path):
    datalist = _cohort(tmp_path)
    (tmp_path / "sub-02_t1w.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"sub-02: key 't1w': .*sub-02_t1w.nii.gz does not exist"):
        _datalist_builder(datalist, tmp_path / "out")


def test_entry_ids_are_unique_and_name_sessions():
    assert entry_id({"subject": "sub-01", "session": "ses-2"}) == "sub-01_ses-2"
    assert entry_id({"id": "sub-01_ses-1", "subject": "sub-01"}) == "sub-01_ses-1"
    assert entry_id({}, 4) == "entry-4"


def test_duplicate_entry_ids_are_refused(tmp_path):
    datalist = _cohort(tmp_path)
    content = json.loads(datalist.read_text())
    content["test"][1]["id"] = content["test"][0]["id"]
    datalist.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="share the id 'sub-00'"):
        load_items(datalist, "test", ["t1w", "flair"])


@pytest.mark.parametrize("bad_id", ["sub-00/ses-1", "..", "sub\\00"])
@pytest.mark.parametrize("split", ["training", "test"])
def test_an_entry_id_that_cannot_name_a_file_is_refused_when_the_datalist_loads(bad_id, split, tmp_path):
    datalist = _cohort(tmp_path)
    content = json.loads(datalist.read_text())
    content[split][0]["id"] = bad_id
    datalist.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"'{split}' entry 0: id {re.escape(repr(bad_id))} cannot name a file"):
        load_items(datalist, split, ["t1w", "flair"])


def _prediction_item(datalist: Path, index: int = 0) -> dict:
    item = load_items(datalist, "test", ["t1w", "flair"])[index]
    data = Compose(preprocessing_transforms(["t1w", "flair"]))(item)
    data["pred"] = data["image"][:1].clone()
    return data


def test_predictions_are_named_by_entry_id_and_never_replace_an_input(tmp_path):
    datalist = _cohort(tmp_path)
    saver = SavePredictiond("pred", output_dir=str(tmp_path / "out"), output_postfix="pet")
    saver(_prediction_item(datalist, 0))
    saver(_prediction_item(datalist, 1))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sub-00_pet.nii.gz", "sub-01_pet.nii.gz"]
    item = _prediction_item(datalist, 0)
    item["id"] = "sub-00_t1w"  # would be written as sub-00_t1w.nii.gz, the entry's own T1w
    before = (tmp_path / "sub-00_t1w.nii.gz").read_bytes()
    with pytest.raises(ValueError, match="would replace its input"):
        SavePredictiond("pred", output_dir=str(tmp_path), output_postfix="")(item)
    assert (tmp_path / "sub-00_t1w.nii.gz").read_bytes() == before


def test_prediction_in_another_voxel_order_scores_and_another_grid_is_refused(tmp_path):
    datalist = _cohort(tmp_path)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for entry in json.loads(datalist.read_text())["test"]:
        target = nib.load(str(tmp_path / entry["pet"]))
        # the same grid stored in L-I-P voxel order, as a sagittal acquisition may be
        order = nib.orientations.ornt_transform(
            nib.io_orientation(target.affine), nib.orientations.axcodes2ornt(("L", "I", "P"))
        )
        nib.save(target.as_reoriented(order), str(predictions / f"{entry['id']}_pet.nii.gz"))
    scores = evaluate_predictions(predictions, datalist, "pet")
    assert scores["summary"]["rmse"]["mean"] == pytest.approx(0.0, abs=1e-6)
    _rewrite(predictions / "sub-00_pet.nii.gz", _shifted)
    with pytest.raises(ValueError, match="sub-00_pet.nii.gz: its affine differs .* by up to 10 mm"):
        evaluate_predictions(predictions, datalist, "pet")


def test_finite_inputs_give_finite_normalised_channels(tmp_path):
    datalist = _cohort(tmp_path)
    data = Compose(preprocessing_transforms(["t1w", "flair"]))(load_items(datalist, "test", ["t1w", "flair"])[0])
    assert data["image"].shape == (2, *SHAPE) and bool(torch.isfinite(data["image"]).all())
