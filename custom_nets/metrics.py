# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Brain-masked image-synthesis metrics: NRMSE, RMSE, PSNR and SSIM computed inside the brain mask only.

Definitions (all on the target's scale, voxels where ``mask > 0``):
    RMSE  = sqrt(mean((pred − target)²))
    NRMSE = RMSE / (max(target) − min(target))        (range-normalised)
    PSNR  = 20·log10(data_range / RMSE), data_range = max(target) − min(target) unless given
    SSIM  = mean over mask voxels of the SSIM map (Gaussian window σ = 1.5 voxels, K1 = 0.01, K2 = 0.03)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction

__all__ = [
    "masked_rmse",
    "masked_nrmse",
    "masked_psnr",
    "masked_ssim",
    "BrainMaskedMetric",
    "pred_and_label_with_mask",
    "window_starts",
    "seam_ratios",
]


def _checked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
    mask = mask.expand_as(target) > 0
    if not mask.any():
        raise ValueError("the brain mask is empty.")
    return mask


def masked_rmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Root mean squared error over the voxels where ``mask > 0``, in the target's unit.

    Args:
        pred: synthesis, any shape (e.g. ``(C, H, W, D)`` or ``(B, C, H, W, D)``).
        target: reference of ``pred``'s shape.
        mask: brain mask broadcastable to ``target``.

    Raises:
        ValueError: ``pred`` and ``target`` shapes differ, or the mask is empty.
    """
    mask = _checked(pred, target, mask)
    return float(torch.sqrt(((pred.double() - target.double())[mask] ** 2).mean()))


def masked_nrmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """``masked_rmse`` divided by the target's range (max − min) inside the mask: unitless. Arguments and errors as
    ``masked_rmse``."""
    values = target[_checked(pred, target, mask)].double()
    return masked_rmse(pred, target, mask) / max(float(values.max() - values.min()), 1e-12)


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``20·log10(data_range / masked_rmse)``; ``data_range`` defaults to the
    target's range inside the mask. Arguments and errors as ``masked_rmse``."""
    values = target[_checked(pred, target, mask)].double()
    data_range = float(values.max() - values.min()) if data_range is None else data_range
    return 20 * math.log10(data_range / max(masked_rmse(pred, target, mask), 1e-12))


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """Separable Gaussian filter over the spatial dims of ``(B, C, *spatial)``, zero padding."""
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    spatial_dims = x.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]
    channels = x.shape[1]
    for axis in range(spatial_dims):
        shape = [channels, 1] + [1] * spatial_dims
        shape[2 + axis] = kernel.numel()
        padding = [0] * spatial_dims
        padding[axis] = radius
        x = conv(x, kernel.reshape(shape), padding=padding, groups=channels)
    return x


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004) averaged over the mask's voxels: the SSIM map of both images
    set to zero outside the mask (the brain-extracted images: what lies outside, e.g. a target's extracerebral signal
    that the masked synthesis never holds, does not enter the windows at the brain's border, and the bundle's
    validation, whose target is masked in preprocessing, gives the same value), with a Gaussian window (σ 1.5 voxels,
    zero padding), K1 0.01, K2 0.03, ``data_range`` by default the target's range in the mask. Shapes
    ``(B, C, *spatial)`` with 2 or 3 spatial dims. Errors as ``masked_rmse``."""
    mask = _checked(pred, target, mask)
    values = target[mask].double()
    data_range = float(values.max() - values.min()) if data_range is None else data_range
    x, y = pred.double() * mask, target.double() * mask
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
    var_x = _gaussian_blur(x * x) - mu_x**2
    var_y = _gaussian_blur(y * y) - mu_y**2
    cov = _gaussian_blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map[mask].mean())


METRICS = {"nrmse": masked_nrmse, "rmse": masked_rmse, "psnr": masked_psnr, "ssim": masked_ssim}


class BrainMaskedMetric(CumulativeIterationMetric):
    """A MONAI cumulative metric (for ``IgniteMetricHandler``) of one of ``METRICS`` inside the brain mask.

    ``y`` carries the mask as its last channel: ``y = cat([target, mask], dim=1)`` (see ``pred_and_label_with_mask``).
    ``scale`` converts the error of a scaled target back to the target's units (the bundle gives ``target_max −
    target_min``, undoing the preprocessing's [0, 1] scaling, so ``val_rmse`` reads in SUVR, FA or 10⁻³ mm²/s as
    ``custom_nets.evaluation.evaluate`` reports it); it multiplies ``rmse`` and leaves the scale-free metrics (NRMSE,
    and PSNR and SSIM with the default ``data_range`` = the target's range in the brain) unchanged.

    Raises:
        ValueError: ``metric`` is not one of ``METRICS``, or ``scale`` is not positive.
    """

    def __init__(self, metric: str = "rmse", data_range: float | None = None, scale: float = 1.0) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}.")
        if not scale > 0:
            raise ValueError(f"scale must be positive (target_max - target_min), got {scale!r}.")
        self.metric, self.data_range, self.scale = metric, data_range, float(scale)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore
        target, mask = y[:, :-1], y[:, -1:]
        kwargs = {"data_range": self.data_range} if self.metric in ("psnr", "ssim") and self.data_range else {}
        values = [METRICS[self.metric](p[None], t[None], m[None], **kwargs) for p, t, m in zip(y_pred, target, mask)]
        if self.metric == "rmse":
            values = [v * self.scale for v in values]
        return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        return data.float().mean() if isinstance(data, torch.Tensor) else torch.tensor(float("nan"))


def pred_and_label_with_mask(output: dict | list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Output transform for an evaluator: ``(pred list, [cat(label, mask)] list)`` from decollated items.

    The mask is read from ``pred_mask`` (copied into the output by the postprocessing, since MONAI keeps batch keys
    such as ``mask`` out of the engine output) or else from ``mask``."""
    items = output if isinstance(output, list) else [output]
    preds = [item["pred"] for item in items]
    labels = [
        torch.cat([item["label"], item.get("pred_mask", item.get("mask")).to(item["label"].dtype)], dim=0)
        for item in items
    ]
    return preds, labels


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start index of every sliding window along one axis, as MONAI's ``SlidingWindowInferer`` places them (a stride
    of ``int(roi · (1 − overlap))``, the last window flush with the end)."""
    if roi >= size:
        return [0]
    stride = max(int(roi * (1 - overlap)), 1)
    count = math.ceil((size - roi) / stride) + 1
    return sorted({min(i * stride, size - roi) for i in range(count)})


def seam_ratios(
    pred: torch.Tensor,
    mask: torch.Tensor,
    roi_size: tuple[int, ...],
    overlap: float,
    neighbours: int = 1,
    min_coverage: float = 0.5,
) -> dict[tuple[int, int], float]:
    """How much the synthesis jumps where a sliding window begins or ends, relative to the planes around it.

    For every spatial axis ``a`` and every window border plane ``k`` (a window starts at ``k`` or ends just before it),
    the mean absolute first difference ``|p[k] − p[k − 1]|`` along ``a`` over voxel pairs inside ``mask``, divided by
    the median of the same mean over the ``neighbours`` planes on each side. A seam is a step: it raises the first
    difference at one plane only, while a smooth hand-over between windows (and anatomy) changes it gradually over
    several planes, so the immediate neighbours are the reference. A seam-free synthesis gives about 1. Planes with
    fewer than ``min_coverage`` × the largest plane's voxel pairs (the edge of the brain) are skipped.

    Args:
        pred: ``(*spatial)`` synthesis.
        mask: ``(*spatial)`` brain mask.
        roi_size, overlap: the sliding window's, as given to ``SlidingWindowInferer``.
        neighbours: reference planes on each side.
        min_coverage: skip border planes covering less of the brain than this share of the largest plane.

    Returns:
        ``{(axis, plane): ratio}`` for the border planes that cut the brain.
    """
    pred, mask = torch.as_tensor(pred).double(), torch.as_tensor(mask) > 0
    ratios = {}
    for axis, (size, roi) in enumerate(zip(pred.shape, roi_size)):
        difference = torch.diff(pred, dim=axis).abs()
        both = torch.logical_and(mask.narrow(axis, 1, size - 1), mask.narrow(axis, 0, size - 1))
        other = tuple(d for d in range(pred.ndim) if d != axis)
        counts = both.sum(dim=other)
        per_plane = (difference * both).sum(dim=other) / counts.clamp_min(1)  # index k - 1 ↔ pair (k - 1, k)
        borders = set()
        for start in window_starts(size, roi, overlap):
            borders.update({start, start + roi})
        for plane in sorted(borders):
            index = plane - 1
            if not 0 <= index < size - 1 or counts[index] < min_coverage * counts.max():
                continue
            around = [i for i in range(index - neighbours, index + neighbours + 1) if i != index and 0 <= i < size - 1]
            reference = per_plane[around][counts[around] > 0]
            if reference.numel():
                ratios[(axis, plane)] = float(per_plane[index] / reference.median().clamp_min(1e-12))
    return ratios
