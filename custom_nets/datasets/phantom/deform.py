# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Random smooth deformations applied identically to every map of a subject, so the modalities stay co-registered."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["random_displacement", "sampling_grid", "warp", "upsample_smooth"]


def random_displacement(
    shape: tuple[int, int, int],
    voxel_mm: float,
    rng: np.random.Generator,
    control_spacing_mm: float = 28.0,
    control_sd_mm: float = 2.5,
    rotation_deg: float = 5.0,
    scale: float = 0.05,
    translation_mm: float = 5.0,
) -> np.ndarray:
    """A dense displacement field in voxels, ``(3, *shape)``: a small random affine plus a smooth nonlinear part.

    The nonlinear part is Gaussian noise on a control grid (``control_spacing_mm`` apart, ``control_sd_mm`` per axis)
    upsampled with cubic splines; the affine has rotations up to ``rotation_deg``, scalings up to ``scale`` and
    translations up to ``translation_mm``, about the volume's centre.
    """
    coarse = [max(int(round(s * voxel_mm / control_spacing_mm)) + 1, 2) for s in shape]
    dense = upsample_smooth(rng.normal(0.0, control_sd_mm / voxel_mm, size=(3, *coarse)), shape)

    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    matrix = rotation @ np.diag(1 + rng.uniform(-scale, scale, 3))
    shift = rng.uniform(-translation_mm, translation_mm, 3) / voxel_mm
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")).reshape(3, -1)
    offset = (matrix - np.eye(3)) @ (grid - centre[:, None]) + shift[:, None]
    return (dense + offset.reshape(3, *shape)).astype(np.float32)


def upsample_smooth(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Upsample ``(C, *coarse)`` control values to ``(C, *shape)``: cubic splines to a quarter of the target size,
    then trilinear (a full-size cubic spline costs ~0.6 s per channel at 2 mm; this is ~100× cheaper and as smooth)."""
    middle = [max(s // 4, n) for s, n in zip(shape, coarse.shape[1:])]
    smooth = np.stack([ndimage.zoom(c, [m / n for m, n in zip(middle, c.shape)], order=3) for c in coarse])
    out = F.interpolate(
        torch.from_numpy(smooth.astype(np.float32))[None], size=tuple(shape), mode="trilinear", align_corners=True
    )
    return out[0].numpy()


def sampling_grid(displacement: np.ndarray) -> torch.Tensor:
    """The ``grid_sample`` grid for ``x + displacement(x)``, ``displacement`` in voxels ``(3, *shape)``."""
    shape = displacement.shape[1:]
    axes = [torch.arange(s, dtype=torch.float32) for s in shape]
    position = torch.stack(torch.meshgrid(*axes, indexing="ij")) + torch.from_numpy(displacement)
    # grid_sample wants (x, y, z) = (last, middle, first) axis, normalised to [-1, 1] with align_corners=True.
    normalised = [2 * position[axis] / (shape[axis] - 1) - 1 for axis in (2, 1, 0)]
    return torch.stack(normalised, dim=-1)[None]


def warp(volumes: np.ndarray, grid: torch.Tensor, mode: str = "bilinear") -> np.ndarray:
    """Resample ``volumes`` ``(C, *shape)`` on a ``sampling_grid``; outside the volume is 0.

    ``mode`` is ``"bilinear"`` (trilinear, for intensities and probabilities) or ``"nearest"`` (for labels).
    """
    source = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[None]
    out = F.grid_sample(source, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0].numpy()
