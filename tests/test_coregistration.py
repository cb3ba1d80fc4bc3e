"""Rigid co-registration, N4 and resampling (``custom_nets.datasets.preprocessing``) recover known transforms of a
real image: nilearn's MNI152 (ICBM 2009a) T1 at 2 mm, shipped in its wheel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nilearn.datasets import load_mni152_gm_template, load_mni152_template
from scipy import ndimage

from custom_nets.datasets.preprocessing import (
    n4_correct,
    preprocess_subject,
    resample,
    rigid_matrix,
    rigid_register,
    transform_error,
)
from custom_nets.io import atomic_save_nifti, load_volume
from custom_nets.preprocess import main as preprocess_cli


@pytest.fixture(scope="module")
def t1w() -> tuple[np.ndarray, np.ndarray]:
    image = load_mni152_template(resolution=2)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _moved(image: tuple[np.ndarray, np.ndarray], matrix: np.ndarray) -> np.ndarray:
    """The image as seen through ``matrix`` (fixed point → moving point): moving(q) = fixed(matrix⁻¹ q)."""
    return resample(image, image[1], image[0].shape, np.linalg.inv(matrix))


def _centre(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (affine @ np.append(ndimage.center_of_mass(array > 0), 1.0))[:3]


@pytest.mark.parametrize(
    "degrees, shift",
    [((0, 0, 10), (5, -3, 8)), ((7, -4, 0), (-10, 0, 6)), ((-5, 6, -8), (4, 9, -7)), ((0, 0, 0), (0, 0, 0))],
)
def test_known_rigid_transforms_of_a_real_t1w_are_recovered(t1w, degrees, shift):
    true = rigid_matrix(degrees, shift, _centre(*t1w))
    result = rigid_register(t1w, (_moved(t1w, true), t1w[1]))
    distance, angle = transform_error(result.matrix, true, t1w[0] > 0.2 * t1w[0].max(), t1w[1])
    assert distance <= 1.0 and angle <= 1.0, (distance, angle, result.stop)


def test_a_smooth_pet_like_map_registers_to_the_t1w(t1w):
    gm = load_mni152_gm_template(resolution=2)
    pet_like = ndimage.gaussian_filter(np.asarray(gm.dataobj, dtype=np.float32), 8 / 2.355 / 2)  # 8 mm FWHM at 2 mm
    true = rigid_matrix((4, 0, -6), (6, -5, 3), _centre(*t1w))
    result = rigid_register(t1w, (_moved((pet_like, gm.affine), true), gm.affine))
    distance, angle = transform_error(result.matrix, true, t1w[0] > 0.2 * t1w[0].max(), t1w[1])
    assert distance <= 2.0 and angle <= 2.0, (distance, angle, result.stop)


def test_n4_removes_a_smooth_bias_field(t1w):
    array, affine = t1w
    brain = array > 0.2 * array.max()
    x = np.linspace(0.7, 1.3, array.shape[0])[:, None, None]
    biased = array * np.broadcast_to(x, array.shape)
    corrected = n4_correct((biased, affine))

    def spread(values: np.ndarray) -> float:  # the brain's intensity spread relative to its median
        inside = values[brain]
        return float(np.std(inside / np.median(inside)))

    assert corrected.shape == array.shape and np.isfinite(corrected).all()
    assert spread(corrected) < spread(biased) - 0.02
    assert np.corrcoef(corrected[brain], array[brain])[0, 1] > np.corrcoef(biased[brain], array[brain])[0, 1]


def test_preprocess_brings_every_modality_onto_the_t1w_grid(t1w, tmp_path):
    array, affine = t1w
    true = rigid_matrix((0, 0, 6), (4, 0, -3), _centre(array, affine))
    flair_like = _moved(((array.max() - array) * (array > 0), affine), true)  # another contrast, in another position
    files = {
        "t1w": atomic_save_nifti(tmp_path / "in" / "t1.nii.gz", array, affine),
        "flair": atomic_save_nifti(tmp_path / "in" / "flair.nii.gz", flair_like, affine),
        "mask": atomic_save_nifti(
            tmp_path / "in" / "mask.nii.gz", (array > 0.2 * array.max()).astype(np.uint8), affine
        ),
    }
    written = preprocess_subject(files, tmp_path / "out", "sub-01", voxel_size=3.0)
    assert sorted(written) == ["flair", "mask", "sidecar", "t1w"]
    grids = {key: load_volume(written[key]) for key in ("t1w", "flair", "mask")}
    assert len({v[0].shape for v in grids.values()}) == 1 and np.allclose(np.diag(grids["t1w"][1])[:3], 3.0)
    sidecar = json.loads(written["sidecar"].read_text(encoding="utf-8"))
    assert abs(sidecar["images"]["flair"]["rotation_deg"] - 6.0) < 1.0 and sidecar["software"]["itk"]
    assert "rigid_ras_mm" not in sidecar["images"]["mask"]  # masks follow the reference, never registered
    back = grids["flair"][0]
    expected = resample(((array.max() - array) * (array > 0), affine), grids["t1w"][1], back.shape)
    brain = grids["mask"][0] > 0
    assert np.corrcoef(back[brain], expected[brain])[0, 1] > 0.95


def test_errors_name_the_subject_and_key(t1w, tmp_path, capsys):
    t1 = atomic_save_nifti(tmp_path / "t1.nii.gz", *t1w)
    with pytest.raises(ValueError, match="sub-02: the reference modality 't1w' is missing"):
        preprocess_subject({"flair": t1}, tmp_path / "out", "sub-02")
    bad = tmp_path / "flair.nii.gz"
    bad.write_bytes(b"not an image")
    code = preprocess_cli(
        ["--subject", "sub-03", "--image", f"t1w={t1}", "--image", f"flair={bad}", "--out", str(tmp_path)]
    )
    assert code == 2 and "sub-03, key 'flair'" in capsys.readouterr().err
    assert not (tmp_path / "sub-03_T1w.nii.gz").exists()  # nothing half-written
