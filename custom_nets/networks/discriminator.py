# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
# Topology ported from Haoyulance/SC-GAN src/utils/discriminator.py (TF1). Changes: PyTorch, 2D or 3D, every constant an
# argument, logits returned (the paper normalises and squashes the 1-channel map; losses here take logits).
"""SC-GAN discriminator: a conditional PatchGAN with spectral normalisation and self-attention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, List

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from custom_nets.networks.blocks.self_attention import SelfAttention3d
from custom_nets.networks.layers import as_tuple, init_normal, make_conv, make_norm

__all__ = ["SCGANDiscriminator", "DISCRIMINATOR_PRESETS"]

DISCRIMINATOR_PRESETS: dict[str, dict[str, Any]] = {
    # The published discriminator: four 5³ stride-2 convolutions (64-512), attention after l3, a 5³ stride-1 head.
    "paper": {"channels": (64, 128, 256, 512), "kernel_size": 5, "last_kernel_size": 5, "attention_levels": (3,)},
    # Sized for 64³ patches on a CPU: the same depth and attention site with a quarter of the filters and 3³ kernels.
    "cpu": {"channels": (32, 64, 128, 256), "kernel_size": 3, "last_kernel_size": 3, "attention_levels": (3,)},
}


class SCGANDiscriminator(nn.Module):
    """Conditional PatchGAN discriminator of SC-GAN (Lan, Toga, Sepehrband, Magn. Reson. Med. 86(3), 2021; bioRxiv
    10.1101/2020.06.09.143297).

    It judges an (input, target) or (input, synthesis) pair concatenated along channels, so ``in_channels`` is the
    number of input modalities plus target channels. Level ``i`` is a strided convolution with ``channels[i]``
    filters, instance norm (none on the first level) and LeakyReLU(0.2), optionally followed by self-attention (the
    paper: after level 3). A stride-1 convolution then gives a map of patch logits.

    ``forward`` returns a list, the contract of MONAI's ``PatchDiscriminator``: the intermediate features (each level's
    output, plus the attention's output after a level with attention, as the paper's ``_perceptual_fmap``) with the
    last element being the logits. Feature matching uses ``out[:-1]``, adversarial losses ``out[-1]``.

    Shapes: input ``(B, in_channels, *spatial)``; logits ``(B, out_channels, *ceil(spatial / prod(strides)))``. With
    attention at level ``l`` every spatial size must reach at least ``attention_pool`` voxels there: ``min_size``
    (``attention_pool × prod(strides[:l])`` for the deepest such level, 16 for both presets; 1 without attention) is a
    size every dimension of the input may safely have.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input modalities + target channels (3 for T1w, FLAIR and one map).
        out_channels: logit channels.
        channels: filters per level.
        strides: stride per level (an int for all).
        kernel_size: kernel per level (an int for all).
        last_kernel_size: kernel of the stride-1 logit convolution.
        act: activation (MONAI name or ``(name, args)``).
        norm: normalisation after every convolution but the first and the last.
        spectral_norm: spectrally normalise every convolution.
        n_power_iterations: spectral-norm power iterations per training step.
        attention_levels: levels (1-based) followed by self-attention.
        attention_pool: max-pool factor of keys and values (1 = full attention).
        attention: ``False`` removes the attention (the paper's 3D cGAN).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: Sequence[int] = DISCRIMINATOR_PRESETS["cpu"]["channels"],
        strides: Sequence[int] | int = 2,
        kernel_size: Sequence[int] | int = 3,
        last_kernel_size: int = 3,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2}),
        norm: str | tuple = ("instance", {"affine": True}),
        spectral_norm: bool = True,
        n_power_iterations: int = 1,
        attention_levels: Sequence[int] = (3,),
        attention_pool: int = 2,
        attention: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 2:
            raise ValueError(
                f"in_channels counts input and target channels together, so at least 2; got {in_channels}."
            )
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}.")
        depth = len(channels)
        attention_levels = attention_levels if attention else ()
        bad = [level for level in attention_levels if not 1 <= level <= depth]
        if bad:
            raise ValueError(f"attention_levels must be within 1..{depth}, got {bad}.")
        strides = as_tuple(strides, depth, "strides")
        kernels = as_tuple(kernel_size, depth, "kernel_size")
        self.spatial_dims = spatial_dims
        deepest_attention = max(attention_levels, default=0)
        self.min_size = attention_pool * math.prod(strides[:deepest_attention]) if deepest_attention else 1

        def conv(cin: int, cout: int, kernel: int, stride: int, bias: bool = False) -> nn.Module:
            layer = make_conv(
                spatial_dims,
                cin,
                cout,
                kernel,
                stride,
                bias=bias,
                spectral_norm=spectral_norm,
                n_power_iterations=n_power_iterations,
            )
            init_normal(layer)
            return layer

        self.levels = nn.ModuleList()
        previous = in_channels
        for level, (ch, stride, kernel) in enumerate(zip(channels, strides, kernels), start=1):
            layers = [conv(previous, ch, kernel, stride)]
            if level > 1:
                layers.append(make_norm(norm, spatial_dims, ch))
            layers.append(get_act_layer(act))
            attention = None
            if level in attention_levels:
                attention = SelfAttention3d(
                    spatial_dims, ch, attention_pool, spectral_norm=spectral_norm, n_power_iterations=n_power_iterations
                )
            self.levels.append(_FeatureLevel(nn.Sequential(*layers), attention))
            previous = ch
        self.logits = conv(previous, out_channels, last_kernel_size, 1, bias=True)

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides: Any) -> SCGANDiscriminator:
        """Build a documented preset (``"paper"`` or ``"cpu"``, see ``DISCRIMINATOR_PRESETS``), overriding arguments."""
        if preset not in DISCRIMINATOR_PRESETS:
            raise ValueError(f"preset must be one of {sorted(DISCRIMINATOR_PRESETS)}, got {preset!r}.")
        return cls(**{**DISCRIMINATOR_PRESETS[preset], **overrides})

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims}D input (B, C, *spatial), got shape {x.shape}.")
        features: List[torch.Tensor] = []
        for level in self.levels:
            level_features = level(x)
            features.extend(level_features)
            x = level_features[-1]
        features.append(self.logits(x))
        return features


class _FeatureLevel(nn.Module):
    """One discriminator level: its features, then (optionally) the attention's output as a second feature map."""

    def __init__(self, block: nn.Module, attention: nn.Module | None) -> None:
        super().__init__()
        self.block = block
        self.attention = attention

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.block(x)
        if self.attention is None:
            return [x]
        return [x, self.attention(x)]
