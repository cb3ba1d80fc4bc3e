# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Baselines that need no deep learning, fitted on training subjects only.

- ``PopulationMean``: the voxel-wise mean target of the training subjects (all on one grid), masked to the brain.
- ``IntensityLookup``: the mean target in each cell of a histogram of the input intensities (a per-voxel function of
  the inputs; empty cells fall back to the training mean).
- ``CubicPolynomial``: least-squares cubic polynomial (with cross terms) of the input intensities.

Inputs are normalised per subject and channel inside the brain exactly as the bundle does
(``custom_nets.transforms.normalize_intensity``).

    python -m custom_nets.evaluation.baselines --datalist data/synthetic/datalist.json --target pet --out baselines/pet
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from custom_nets.data import read_datalist, resolve, split_entries
from custom_nets.io import atomic_save_nifti, check_same_grid, load_volume
from custom_nets.prior import CubicPolynomial
from custom_nets.transforms import CONTRASTS, derive_brain_mask, normalize_intensity

__all__ = ["scaled_inputs", "PopulationMean", "IntensityLookup", "CubicPolynomial", "BASELINES", "predict_split"]


def scaled_inputs(
    channels: list[np.ndarray], mask: np.ndarray, method: str = "percentile", input_keys: list[str] | None = None
) -> np.ndarray:
    """``(C, N)`` brain-voxel intensities, each channel normalised as the bundle does
    (``custom_nets.transforms.normalize_intensity``; ``input_keys`` name the contrasts)."""
    keys = list(input_keys or [])
    contrasts = [CONTRASTS.get(keys[i].lower(), "other") if i < len(keys) else "other" for i in range(len(channels))]
    return np.stack(
        [normalize_intensity(c, mask, method, contrast)[mask] for c, contrast in zip(channels, contrasts)]
    ).astype(np.float64)


class PopulationMean:
    """Voxel-wise mean target of the training subjects. When the training volumes are not on the test grid (a split
    in space, as in the real-template case) there is no voxel correspondence, and the mean target over all training
    brain voxels is predicted everywhere in the brain."""

    def fit(self, inputs: list[np.ndarray], targets: list[np.ndarray], masks: list[np.ndarray]) -> PopulationMean:
        self.mean = None
        if len({t.shape for t in targets}) == 1:
            self.mean = np.mean([t * m for t, m in zip(targets, masks)], axis=0)
        self.brain_mean = float(np.concatenate([t[m] for t, m in zip(targets, masks)]).mean())
        return self

    def predict(self, inputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.mean is None or self.mean.shape != mask.shape:
            return self.brain_mean * mask
        return self.mean * mask


class IntensityLookup:
    """The intensity lookup table: the mean training target of each cell of a regular grid over the scaled input
    intensities (``bins`` per channel), the population mean in cells no training voxel reached. A per-voxel
    regression without spatial context, the baseline a synthesis network has to beat.
    """

    def __init__(self, bins: int = 32) -> None:
        self.bins = bins

    def _cells(self, x: np.ndarray) -> np.ndarray:
        index = np.minimum((x * self.bins).astype(np.int64), self.bins - 1)
        return np.ravel_multi_index(tuple(index), (self.bins,) * x.shape[0])

    def fit(self, inputs: list[np.ndarray], targets: list[np.ndarray], masks: list[np.ndarray]) -> IntensityLookup:
        """Fit on training subjects: ``inputs`` ``(C, N)`` in [0, 1] of each subject's N brain voxels, ``targets``
        and boolean ``masks`` the subject's volumes. Returns ``self``."""
        x = np.concatenate(inputs, axis=1)
        y = np.concatenate([t[m] for t, m in zip(targets, masks)])
        cells = self._cells(x)
        size = self.bins ** x.shape[0]
        counts = np.bincount(cells, minlength=size)
        self.fallback = float(y.mean())
        self.table = np.where(counts > 0, np.bincount(cells, y, size) / np.maximum(counts, 1), self.fallback)
        return self

    def predict(self, inputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The table's values for ``inputs`` ``(C, N)`` placed at the N voxels of ``mask``; 0 outside it."""
        out = np.zeros(mask.shape)
        out[mask] = self.table[self._cells(inputs)]
        return out


BASELINES = {
    "population_mean": PopulationMean,
    "intensity_lookup": IntensityLookup,
    "cubic_polynomial": CubicPolynomial,
}


def _subject(
    datalist: Path,
    entry: dict,
    name: str,
    input_keys: list[str],
    target_key: str | None,
    normalization: str = "percentile",
):
    """(scaled inputs ``(C, N)``, target or None, mask, affine) of one entry, each file checked on load (readable, 3D,
    finite, on the grid of the first input; ``custom_nets.io.load_volume``), errors naming the entry and file. An
    entry without ``mask`` gets the mask the bundle derives from skull-stripped inputs (``derive_brain_mask``)."""
    keys = list(input_keys) + ([target_key] if target_key else []) + (["mask"] if "mask" in entry else [])
    files = {key: resolve(datalist, entry, key, name) for key in keys}
    volumes, reference = {}, None
    for key in keys:
        label = f"entry {name}, key '{key}'"
        volumes[key], affine = load_volume(files[key], label)
        grid = (volumes[key].shape, affine)
        if reference is None:
            reference = (f"{label}: {files[key]}", *grid)
        else:
            check_same_grid(f"{label}: {files[key]}", *grid, *reference)
    if "mask" in volumes:
        mask = volumes["mask"] > 0
        where = f"key 'mask': {files['mask']}"
    else:
        mask = derive_brain_mask(np.stack([volumes[k] for k in input_keys]))
        where = f"the mask derived from {list(input_keys)} (give a 'mask' for whole-head inputs)"
    if not mask.any():
        raise ValueError(f"entry {name}, {where}: the brain mask is empty.")
    inputs = scaled_inputs([volumes[k] for k in input_keys], mask, normalization, input_keys)
    return inputs, volumes.get(target_key) if target_key else None, mask, reference[2]


def predict_split(
    datalist: str | Path,
    target_key: str,
    out_dir: str | Path,
    input_keys: Sequence[str] = ("t1w", "flair"),
    split: str = "test",
    normalization: str = "percentile",
) -> dict[str, Path]:
    """Fit every baseline on the training split and write its predictions for ``split`` as NIfTI files
    ``out_dir/<baseline>/<entry id>_<target>.nii.gz``; returns the folder of each baseline. Every file is read and
    checked before anything is written."""
    datalist, out_dir = Path(datalist), Path(out_dir)
    content = read_datalist(datalist)
    training = [
        _subject(datalist, e, name, list(input_keys), target_key, normalization)
        for name, e in split_entries(datalist, "training", content).items()
    ]
    tests = {
        name: _subject(datalist, e, name, list(input_keys), None, normalization)
        for name, e in split_entries(datalist, split, content).items()
    }
    folders = {}
    for name, cls in BASELINES.items():
        model = cls().fit([t[0] for t in training], [t[1] for t in training], [t[2] for t in training])
        folders[name] = out_dir / name
        for subject, (inputs, _, mask, affine) in tests.items():
            prediction = model.predict(inputs, mask).astype(np.float32)
            atomic_save_nifti(folders[name] / f"{subject}_{target_key}.nii.gz", prediction, affine)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m custom_nets.evaluation.baselines", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--target", required=True, help="datalist key of the target (pet, fa, md)")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per baseline)")
    parser.add_argument("--inputs", nargs="+", default=["t1w", "flair"])
    parser.add_argument("--split", default="test")
    parser.add_argument("--normalization", default="percentile", help="input normalisation (as the bundle's)")
    args = parser.parse_args(argv)
    try:
        folders = predict_split(args.datalist, args.target, args.out, args.inputs, args.split, args.normalization)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}")
        return 2
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
