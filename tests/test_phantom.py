from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, ConcatItemsd, EnsureChannelFirstd, LoadImaged
from parameterized import parameterized

from custom_nets.datasets.phantom import MODALITIES, NOISE_FREE, generate_dataset, split_subjects, target_suvr
from custom_nets.datasets.phantom.__main__ import main as phantom_cli
from custom_nets.datasets.phantom.check import check_cohort
from custom_nets.datasets.phantom.check import main as check_cli

SEED = 7


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    generate_dataset(out, subjects=4, seed=SEED, progress=False)
    return out


def _entries(data_dir):
    datalist = json.loads((data_dir / "datalist.json").read_text(encoding="utf-8"))
    return sorted((e for p in ("training", "validation", "test") for e in datalist[p]), key=lambda e: e["subject"])


def _load(path):
    return np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)


def test_same_seed_gives_identical_files(cohort, tmp_path):
    # Subject i depends only on (seed, i): a one-subject cohort reproduces the first subject byte for byte.
    generate_dataset(tmp_path, subjects=1, seed=SEED, progress=False)
    for name in [f"sub-0000_{m}.nii.gz" for m in MODALITIES] + ["sub-0000_latents.json"]:
        assert (tmp_path / "sub-0000" / name).read_bytes() == (cohort / "sub-0000" / name).read_bytes(), name


def test_other_seed_gives_other_subjects(cohort, tmp_path):
    generate_dataset(tmp_path, subjects=1, seed=SEED + 1, progress=False)
    assert not np.array_equal(
        _load(tmp_path / "sub-0000/sub-0000_pet.nii.gz"), _load(cohort / "sub-0000/sub-0000_pet.nii.gz")
    )


def test_values_within_literature_ranges(cohort, tmp_path):
    rows, ok = check_cohort(cohort, png=tmp_path / "montage.png")
    assert ok, [(r["subject"], r["failures"]) for r in rows]
    assert len(rows) == 4
    assert (tmp_path / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_cli_fails_on_out_of_range(cohort, tmp_path):
    # Copy the cohort with one PET scaled by 1.5: the cerebellar reference is no longer 1.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "datalist.json").write_text((cohort / "datalist.json").read_text(encoding="utf-8"))
    for entry in _entries(cohort):
        (broken / entry["subject"]).mkdir()
        for key in list(MODALITIES) + ["latents"]:
            (broken / entry[key]).write_bytes((cohort / entry[key]).read_bytes())
    pet_path = broken / _entries(cohort)[0]["pet"]
    pet = nib.load(str(pet_path))
    nib.save(nib.Nifti1Image(pet.get_fdata(dtype=np.float32) * 1.5, pet.affine), str(pet_path))
    assert check_cli([str(broken)]) == 1
    assert check_cli([str(cohort), "--png", str(tmp_path / "m.png")]) == 0


def test_latents_and_modalities(cohort):
    for entry in _entries(cohort):
        latents = json.loads((cohort / entry["latents"]).read_text(encoding="utf-8"))
        assert {"age", "amyloid_positive", "centiloid", "atrophy", "wmh_ml"} <= set(latents)
        assert 55 <= latents["age"] <= 90
        assert latents["amyloid_positive"] == (latents["centiloid"] >= 20)
        shapes = {_load(cohort / entry[m]).shape for m in MODALITIES + NOISE_FREE}
        assert shapes == {(99, 117, 95)}


def _lookup_table_r2(data_dir, target, bins=32):
    """In-sample R² of the best per-voxel function of the (T1w, FLAIR) intensities: a 2D lookup table."""
    inputs, outputs = [], []
    for entry in _entries(data_dir):
        mask = _load(data_dir / entry["mask"]) > 0
        t1, flair = (_load(data_dir / entry[k])[mask] for k in ("t1w", "flair"))
        inputs.append(np.stack([t1 / np.median(t1), flair / np.median(flair)]))
        outputs.append(_load(data_dir / entry[target])[mask])
    x, y = np.concatenate(inputs, axis=1), np.concatenate(outputs)
    edges = np.linspace(0, 2.5, bins + 1)
    cell = np.clip(np.digitize(x[0], edges), 0, bins + 1) * (bins + 2) + np.clip(np.digitize(x[1], edges), 0, bins + 1)
    table = np.bincount(cell, y, (bins + 2) ** 2) / np.maximum(np.bincount(cell, None, (bins + 2) ** 2), 1)
    return 1 - ((y - table[cell]) ** 2).sum() / ((y - y.mean()) ** 2).sum(), y.std()


def test_target_is_coupled_but_not_a_function_of_the_inputs(cohort):
    for target in ("pet", "fa", "md"):
        r2, spread = _lookup_table_r2(cohort, target)
        assert spread > 0.05, f"{target} is nearly constant"
        # Partly predictable from the MRI (shared anatomy), but no per-voxel function of it explains it all.
        assert 0.3 < r2 < 0.95, f"{target}: lookup-table R² {r2:.3f}"


@pytest.mark.parametrize("target", ["pet", "fa", "md"])
def test_noise_free_target_is_the_target_without_its_noise(cohort, target):
    """The oracle volume differs from the target by zero-mean noise only, far less than a per-voxel function does."""
    for entry in _entries(cohort):
        mask = _load(cohort / entry["mask"]) > 0
        measured, clean = _load(cohort / entry[target])[mask], _load(cohort / entry[f"{target}_noisefree"])[mask]
        residual = measured - clean
        assert abs(residual.mean()) < 0.1 * residual.std() + 1e-3
        assert 0 < residual.std() < 0.5 * measured.std()


def test_datalist_round_trip_through_monai(cohort):
    training = load_decathlon_datalist(str(cohort / "datalist.json"), data_list_key="training", base_dir=str(cohort))
    assert training and all(Path(e[m]).is_file() for e in training for m in MODALITIES)
    load = Compose(
        [
            LoadImaged(keys=["t1w", "flair", "pet"]),
            EnsureChannelFirstd(keys=["t1w", "flair", "pet"]),
            ConcatItemsd(keys=["t1w", "flair"], name="image"),
        ]
    )
    sample = load(training[0])
    assert tuple(sample["image"].shape) == (2, 99, 117, 95) and tuple(sample["pet"].shape) == (1, 99, 117, 95)
    datalist = json.loads((cohort / "datalist.json").read_text(encoding="utf-8"))
    subjects = [e["subject"] for p in ("training", "validation", "test") for e in datalist[p]]
    assert len(subjects) == len(set(subjects)) == 4 and datalist["validation"] and datalist["test"]


@parameterized.expand([[10, 0], [3, 1], [1, 2], [57, 3]])
def test_split_is_subject_level_and_seeded(n, seed):
    names = [f"s{i}" for i in range(n)]
    split = split_subjects(names, seed)
    parts = split["training"] + split["validation"] + split["test"]
    assert sorted(parts) == sorted(names) and split == split_subjects(names, seed)
    if n >= 3:
        assert split["validation"] and split["test"]


@parameterized.expand([[0.0, 1.043], [100.0, 1.601]])
def test_florbetapir_centiloid_equation(centiloid, suvr):
    assert target_suvr(centiloid, "florbetapir") == pytest.approx(suvr, abs=1e-3)


@parameterized.expand(
    [[["--out", "x", "--subjects", "0"]], [["--subjects", "2"]], [["--out", "x", "--resolution", "3"]]]
)
def test_cli_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        phantom_cli(argv)


def test_split_fractions_reach_the_datalist(tmp_path):
    generate_dataset(tmp_path, subjects=4, seed=SEED, progress=False, fractions=(0.5, 0.0, 0.5))
    datalist = json.loads((tmp_path / "datalist.json").read_text(encoding="utf-8"))
    assert (len(datalist["training"]), len(datalist["validation"]), len(datalist["test"])) == (2, 0, 2)
    with pytest.raises(ValueError, match="fractions"):
        generate_dataset(tmp_path / "bad", subjects=4, seed=SEED, progress=False, fractions=(0.5, 0.5, 0.5))
    assert not (tmp_path / "bad").exists()  # checked before anything is written
