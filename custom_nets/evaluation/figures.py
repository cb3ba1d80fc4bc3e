# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Figures with matplotlib: every panel titled, with a colour bar in its unit and the slice position in the title.

- ``comparison_figure``: one held-out subject's inputs and target, each model's synthesis and its absolute error
  (the layout of Lan et al., MRM 2021, Fig. 3).
- ``three_plane_figure``: axial, coronal and sagittal planes of several volumes of one subject (the phantom's check).

Volumes are ``(X, Y, Z)`` arrays in RAS voxel order; slices are rotated so that anterior and superior point up, as
radiological viewers show them. Files are written atomically (``custom_nets.io.atomic_write_bytes``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

from custom_nets.data import read_datalist, resolve, split_entries
from custom_nets.evaluation.evaluate import find_prediction
from custom_nets.io import atomic_write_bytes, load_volume

matplotlib.use("Agg")  # files only: no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

__all__ = ["Panel", "save_figure", "comparison_figure", "three_plane_figure"]


class Panel(dict):
    """One image of a figure: a 2D ``plane``, its ``title``, the display range ``(low, high)`` and the colour bar's
    ``unit`` (``cmap`` defaults to grey)."""

    def __init__(self, plane: np.ndarray, title: str, low: float, high: float, unit: str, cmap: str = "gray") -> None:
        super().__init__(plane=plane, title=title, low=low, high=high, unit=unit, cmap=cmap)


def save_figure(path: str | Path, rows: Sequence[Sequence[Panel | None]], title: str, dpi: int = 100) -> Path:
    """A grid of panels (``None`` leaves a cell empty) with a colour bar each, saved as PNG atomically; returns the
    path."""
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.5 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            axis = axes[r][c]
            axis.set_axis_off()
            panel = row[c] if c < len(row) else None
            if panel is None:
                continue
            image = axis.imshow(panel["plane"], cmap=panel["cmap"], vmin=panel["low"], vmax=panel["high"])
            axis.set_title(panel["title"], fontsize=8)
            bar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            bar.set_label(panel["unit"], fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def _axial(volume: np.ndarray, z: int, mask: np.ndarray | None = None) -> np.ndarray:
    plane = volume[:, :, z] if mask is None else np.where(mask[:, :, z], volume[:, :, z], 0)
    return np.rot90(plane)


def comparison_figure(
    path: str | Path,
    datalist: str | Path,
    input_keys: Sequence[str],
    target_key: str,
    prediction_folders: Mapping[str, str | Path],
    target_unit: str = "",
    split: str = "test",
    subject_index: int = 0,
    slice_index: int | None = None,
    score_mask_key: str = "mask",
) -> Path:
    """One axial slice of one held-out subject (default: the slice with the most brain). Row 1: the inputs (scaled to
    their 99.5th brain percentile) and the target; row 2: each synthesis (keyed by its label, in the order of
    ``prediction_folders``); row 3: its absolute error, on half the target's display range. Everything is masked to
    the brain, as it is scored.

    Raises:
        FileNotFoundError: a prediction or datalist file is missing (the message names it).
    """
    entries = split_entries(datalist, split, read_datalist(datalist))
    ids = list(entries)
    subject = ids[subject_index]
    entry = entries[subject]

    def load(key: str) -> tuple[np.ndarray, np.ndarray]:
        return load_volume(resolve(datalist, entry, key, subject), f"entry {subject}, key '{key}'", axcodes="RAS")

    mask_volume, affine = load(score_mask_key)
    mask = mask_volume > 0
    target = load(target_key)[0].astype(np.float32)
    z = int(np.argmax(mask.sum(axis=(0, 1)))) if slice_index is None else slice_index
    z_mm = float((affine @ np.array([0, 0, z, 1.0]))[2])
    high = float(np.percentile(target[mask], 99.5))
    top = []
    for key in input_keys:
        volume = load(key)[0].astype(np.float32)
        top.append(Panel(_axial(volume, z, mask), key, 0.0, float(np.percentile(volume[mask], 99.5)), "a.u."))
    top.append(Panel(_axial(target, z, mask), f"target ({target_key})", 0.0, high, target_unit))
    syntheses, errors = [], []
    for label, folder in prediction_folders.items():
        prediction = load_volume(find_prediction(folder, subject, ids), f"entry {subject}, prediction", axcodes="RAS")
        prediction = prediction[0].astype(np.float32)
        syntheses.append(Panel(_axial(prediction, z, mask), label, 0.0, high, target_unit))
        errors.append(
            Panel(_axial(np.abs(prediction - target), z, mask), f"|error| {label}", 0.0, high / 2, target_unit)
        )
    title = f"{subject}, axial slice z = {z} ({z_mm:.0f} mm), brain-masked"
    return save_figure(path, [top, syntheses, errors], title)


def three_plane_figure(
    path: str | Path,
    volumes: Mapping[str, np.ndarray],
    ranges: Mapping[str, tuple[float, float]],
    units: Mapping[str, str],
    title: str,
    centre: Sequence[int] | None = None,
) -> Path:
    """One row per volume: its axial, coronal and sagittal planes through ``centre`` (default: the middle voxel),
    each with the volume's display range and unit."""
    rows = []
    for name, volume in volumes.items():
        x, y, z = [s // 2 for s in volume.shape] if centre is None else centre
        low, high = ranges[name]
        unit = units.get(name, "")
        rows.append(
            [
                Panel(np.rot90(volume[:, :, z]), f"{name}, axial z={z}", low, high, unit),
                Panel(np.rot90(volume[:, y, :]), f"{name}, coronal y={y}", low, high, unit),
                Panel(np.rot90(volume[x, :, :]), f"{name}, sagittal x={x}", low, high, unit),
            ]
        )
    return save_figure(path, rows, title)
