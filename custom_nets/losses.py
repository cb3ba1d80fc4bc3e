# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Generator losses of SC-GAN besides the adversarial term (which comes from MONAI's ``PatchAdversarialLoss``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureMatchingLoss", "MaskedRMSELoss"]


class FeatureMatchingLoss(nn.Module):
    """Mean L1 distance between the discriminator's intermediate features on real and synthesised pairs (pix2pixHD;
    the SC-GAN code's ``_perceptual_fmap``). Takes the feature lists without the logits (``D(x)[:-1]``); the real
    features are detached so the loss only moves the generator."""

    def forward(self, fake_features: Sequence[torch.Tensor], real_features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(fake_features) != len(real_features) or not fake_features:
            raise ValueError(
                f"expected two equal, non-empty feature lists, got {len(fake_features)} and {len(real_features)}."
            )
        losses = [torch.mean(torch.abs(f - r.detach())) for f, r in zip(fake_features, real_features)]
        return torch.stack(losses).mean()


class MaskedRMSELoss(nn.Module):
    """Brain-masked RMSE, the paper's "B-RMSE": ``sqrt(sum(mask·(pred−target)²) / sum(mask))`` per batch.

    Shapes: ``pred``, ``target`` ``(B, C, *spatial)``; ``mask`` ``(B, 1, *spatial)`` (0/1) or ``None`` (whole volume).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        squared = (pred.float() - target.float()) ** 2
        if mask is None:
            return torch.sqrt(squared.mean() + self.eps)
        weight = mask.float().expand_as(squared)
        return torch.sqrt((squared * weight).sum() / weight.sum().clamp_min(1.0) + self.eps)
