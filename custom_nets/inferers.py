# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Sliding-window inference whose blending leaves no seams."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["hann_weight_map", "SeamlessSlidingWindowInferer", "size_divisor"]


def hann_weight_map(roi_size: Sequence[int]) -> torch.Tensor:
    """``∏_axes sin²(π (i + ½) / n)``: a separable Hann window of shape ``roi_size``, zero-tending at every border.

    Neighbouring windows at 50 % overlap sum to a constant (``sin² + cos² = 1``), so the blend is a partition of unity
    whose weights vanish where a window begins or ends (overlap-add with Hann windows, Harris, Proc. IEEE 66(1),
    1978)."""
    axes = [torch.sin(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2 for n in roi_size]
    weights = axes[0]
    for axis in axes[1:]:
        weights = weights[..., None] * axis
    return weights.float()


BLEND_MODES = ("hann", "gaussian", "constant")  # SeamlessSlidingWindowInferer's modes: ours, then MONAI's


class SeamlessSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` with ``mode="hann"``: windows blended by ``hann_weight_map``.

    Why: the generator's instance norms and its pooled-key self-attention take their statistics from the window they
    see, so overlapping windows predict different values for the same voxel (measured: the same voxel differs by
    window). With MONAI's Gaussian blending (σ = 0.125 × window) the weights switch from one window to the next within
    a few voxels, and with wider Gaussians a window's border still carries weight: either way a straight seam. Hann
    weights fall to zero at the window border and hand over across the whole overlap, so the disagreement becomes a
    smooth blend. Running the whole volume in one window avoids borders but is not an option for patch-trained
    networks: the norms then see other statistics than in training (``benchmarks/seams.py`` measures it).

    Args:
        roi_size, sw_batch_size, overlap: as ``SlidingWindowInferer`` (``overlap`` 0.5 gives the exact partition).
        mode: ``"hann"`` (default) or MONAI's ``"gaussian"``/``"constant"`` for comparison.
        sigma_scale: the Gaussian mode's width.
        kwargs: other ``SlidingWindowInferer`` arguments.

    Raises:
        ValueError: ``mode`` is not one of ``BLEND_MODES`` (the configs check ``sw_mode`` first, naming the id:
            ``custom_nets.config_check.check_settings``).
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        mode: str = "hann",
        sigma_scale: float = 0.125,
        **kwargs,
    ) -> None:
        if mode not in BLEND_MODES:
            raise ValueError(f"mode {mode!r}: expected one of {list(BLEND_MODES)}.")
        if mode == "hann":
            super().__init__(roi_size, sw_batch_size, overlap, mode="constant", **kwargs)
            self.roi_weight_map = hann_weight_map(roi_size)
        else:
            super().__init__(roi_size, sw_batch_size, overlap, mode=mode, sigma_scale=sigma_scale, **kwargs)


def size_divisor(network: torch.nn.Module) -> int:
    """The multiple every spatial input size of ``network`` must be (``SCGANGenerator.size_divisor``), looking
    through DDP and ``SliceWise`` wrappers; 1 for networks that do not say."""
    while not hasattr(network, "size_divisor"):
        inner = getattr(network, "module", None) or getattr(network, "network", None)  # DDP, SliceWise
        if not isinstance(inner, torch.nn.Module):
            return 1
        network = inner
    return int(network.size_divisor)
