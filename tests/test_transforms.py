"""Every transform of the one preprocessing chain keeps the metadata ``Invertd`` needs, and the chain inverts onto
the input file's grid (voxel order and spacing), as ``inference.json`` relies on."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from parameterized import parameterized

from custom_nets.transforms import (
    CheckTargetRanged,
    DegradeResolutiond,
    DeriveBrainMaskd,
    NormalizeIntensityInMaskd,
    preprocessing_transforms,
)

SHAPE = (20, 18, 16)
# LAS voxel order, 2 mm: the chain reorients to RAS and may resample, and Invertd must undo both
AFFINE = np.array([[-2.0, 0, 0, 20], [0, 2, 0, -18], [0, 0, 2, -16], [0, 0, 0, 1]])


@pytest.fixture
def item(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    brain = np.zeros(SHAPE, np.uint8)
    brain[3:-3, 3:-3, 3:-3] = 1
    files = {}
    for key, volume in {
        "t1w": brain * (1 + rng.random(SHAPE)),
        "flair": brain * (2 + rng.random(SHAPE)),
        "mask": brain,
        "pet": brain * 1.5,
    }.items():
        files[key] = str(tmp_path / f"sub-01_{key}.nii.gz")
        nib.save(nib.Nifti1Image(volume.astype(np.float32), AFFINE), files[key])
    return {"image": [files["t1w"], files["flair"]], "label": files["pet"], "mask": files["mask"], "id": "sub-01"}


@parameterized.expand(
    [
        ("derive_mask", DeriveBrainMaskd("image", "mask")),
        ("degrade", DegradeResolutiond("image", factor=2)),
        ("normalise_percentile", NormalizeIntensityInMaskd("image", "mask", method="percentile")),
        ("normalise_tissue_mode", NormalizeIntensityInMaskd("image", "mask", method="tissue_mode")),
    ]
)
def test_transform_keeps_the_metadata_invertd_needs(_, transform):
    image = MetaTensor(torch.rand(2, 12, 12, 12) + 0.1, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    image.applied_operations = [{"class": "Orientation", "id": 0}]  # stands for the operations before it
    mask = MetaTensor(torch.zeros(1, 12, 12, 12), affine=image.affine.clone())
    mask[:, 2:-2, 2:-2, 2:-2] = 1
    data = {"image": image, "mask": mask}
    if isinstance(transform, DeriveBrainMaskd):
        data.pop("mask")
    out = transform(data)
    assert isinstance(out["image"], MetaTensor) and out["image"].shape == image.shape
    assert torch.equal(out["image"].affine, image.affine)
    assert out["image"].applied_operations == image.applied_operations
    assert isinstance(out["mask"], MetaTensor) and torch.equal(out["mask"].affine, image.affine)


@pytest.mark.parametrize("pixdim", [None, (3.0, 3.0, 3.0)])
def test_chain_inverts_onto_the_input_grid(pixdim, item):
    chain = Compose(preprocessing_transforms(["t1w", "flair"], pixdim=pixdim, degrade_factor=2))
    data = chain(item)
    assert np.allclose(data["image"].affine[:3, :3].diagonal(), pixdim or (2.0, 2.0, 2.0))  # RAS, resampled
    data["pred"] = data["label"].clone()  # a synthesis on the network's grid, with the image's history
    data["pred"].applied_operations = list(data["image"].applied_operations)
    restored = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert tuple(restored.shape[1:]) == SHAPE
    assert np.allclose(np.asarray(restored.affine), AFFINE, atol=1e-4)


def _target(values: np.ndarray, name: str = "sub-01_fa.nii.gz") -> dict:
    """A target volume (brain = the central block, background 0) holding ``values`` in the brain, with its file name."""
    label = np.zeros(SHAPE, np.float32)
    mask = np.zeros(SHAPE, np.float32)
    mask[3:-3, 3:-3, 3:-3] = 1
    label[mask > 0] = np.resize(values, int(mask.sum()))
    return {"label": MetaTensor(label[None], meta={"filename_or_obj": name}), "mask": torch.as_tensor(mask[None])}


BRAIN_VALUES = np.random.default_rng(0).uniform(0.1, 0.8, 5000)


@pytest.mark.parametrize(
    "values, target_range, refused",
    [
        (BRAIN_VALUES, (0.0, 1.0), False),  # FA
        (BRAIN_VALUES * 100, (0.0, 1.0), True),  # FA in percent
        (BRAIN_VALUES * 4, (0.0, 3.5), False),  # MD in 10^-3 mm^2/s
        (BRAIN_VALUES * 4e-3, (0.0, 3.5), True),  # MD in mm^2/s
        (np.append(BRAIN_VALUES * 3, [5.5] * 40), (0.0, 3.0), False),  # PET SUVR with hot voxels above target_max
        (BRAIN_VALUES * 3 * 5000, (0.0, 3.0), True),  # PET in Bq/mL
        (BRAIN_VALUES - 2.0, (0.0, 1.0), True),  # below the range
    ],
)
def test_target_in_other_units_is_refused_naming_the_file(values, target_range, refused):
    check = CheckTargetRanged("label", "mask", target_range)
    if not refused:
        check(_target(values))
        return
    with pytest.raises(
        ValueError, match=r"sub-01_fa.nii.gz: the target's 99th percentile in the brain is .*target_max"
    ):
        check(_target(values))


def test_items_without_a_target_pass():
    data = {"image": torch.rand(1, 4, 4, 4), "mask": torch.ones(1, 4, 4, 4)}
    assert CheckTargetRanged("label", "mask", (0.0, 1.0))(data).keys() == data.keys()


def test_load_errors_name_the_datalist_keys_and_an_empty_given_mask_its_file(tmp_path):
    """A NaN target is reported under its datalist key (pet), not the chain's 'label'; an empty mask by its file."""
    brain = np.zeros(SHAPE, np.float32)
    brain[3:-3, 3:-3, 3:-3] = 1
    files = {}
    texture = np.random.default_rng(0).uniform(0.5, 1.5, SHAPE).astype(np.float32) * brain
    for key, values in (("t1w", texture * 5), ("flair", texture * 3), ("pet", texture * 1.5), ("mask", brain)):
        files[key] = str(tmp_path / f"sub-01_{key}.nii.gz")
        nib.save(nib.Nifti1Image(values, AFFINE), files[key])
    transforms = preprocessing_transforms(["t1w", "flair"], target_key="pet")

    def chain(data):  # transform by transform: the errors themselves, not Compose's wrapper
        for transform in transforms:
            data = transform(data)
        return data

    item = {"image": [files["t1w"], files["flair"]], "label": files["pet"], "mask": files["mask"], "id": "sub-01"}
    chain(dict(item))  # a good entry passes
    target = texture * 1.5
    target[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(target, AFFINE), str(tmp_path / "nan_pet.nii.gz"))
    with pytest.raises(ValueError, match=r"key 'pet': .*nan_pet.nii.gz"):
        chain({**item, "label": str(tmp_path / "nan_pet.nii.gz")})
    nib.save(nib.Nifti1Image(brain * 0, AFFINE), str(tmp_path / "empty_mask.nii.gz"))
    with pytest.raises(ValueError, match=r"empty_mask.nii.gz: the brain mask given as 'mask' is empty"):
        chain({**item, "mask": str(tmp_path / "empty_mask.nii.gz")})
