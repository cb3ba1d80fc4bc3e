# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Apply a 2D network slice by slice to 3D volumes: the paper's 2D cGAN comparison on the same 3D data."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SliceWise"]


class SliceWise(nn.Module):
    """Runs a 2D ``network`` on every slice along ``axis`` of a 3D input and restacks the result.

    Lan et al. (MRM 2021) compare SC-GAN with a 2D cGAN trained and applied slice-wise; wrapping the 2D generator and
    discriminator keeps the trainer, the patch sampler and the sliding-window inferer unchanged. A network that returns
    a list (a discriminator) gets each list element restacked.

    Shapes: input ``(B, C, H, W, D)`` → the 2D network sees ``(B·S, C, ., .)`` with ``S`` the size along ``axis``
    (2, 3 or 4) → output ``(B, C', H', W', D')`` with the slice axis restored.
    """

    def __init__(self, network: nn.Module, axis: int = 4) -> None:
        super().__init__()
        if axis not in (2, 3, 4):
            raise ValueError(f"axis must be a spatial axis of (B, C, H, W, D): 2, 3 or 4; got {axis}.")
        self.network, self.axis = network, axis

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(self.axis, 1).flatten(0, 1)  # (B, S, C, a, b) -> (B·S, C, a, b)

    def _unfold(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        return y.unflatten(0, [batch, -1]).movedim(1, self.axis)

    def forward(self, x: torch.Tensor):  # -> Tensor or list[Tensor]; unannotated so that torch.jit.script takes both
        """``x`` ``(B, C, H, W, D)`` → the 2D network's output per slice, restacked along ``axis``.

        Raises:
            ValueError: ``x`` is not 5D.
        """
        # written for torch.jit.script too (a generator's Tensor output; the list branch is a discriminator's)
        if x.ndim != 5:
            raise ValueError(f"SliceWise expects a 3D input (B, C, H, W, D), got shape {list(x.shape)}.")
        out = self.network(self._fold(x))
        if isinstance(out, (list, tuple)):
            return [self._unfold(o, x.shape[0]) for o in out]
        return self._unfold(out, x.shape[0])
