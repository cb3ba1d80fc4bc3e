# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Config-friendly builders: one call gives the generator or discriminator of SC-GAN or of a comparison model."""

from __future__ import annotations

from typing import Any

from torch import nn

from custom_nets.networks.discriminator import SCGANDiscriminator
from custom_nets.networks.generator import SCGANGenerator
from custom_nets.networks.slicewise import SliceWise

__all__ = ["build_generator", "build_discriminator"]


def build_generator(preset: str = "cpu", spatial_dims: int = 3, slice_axis: int = 4, **overrides: Any) -> nn.Module:
    """``SCGANGenerator.from_preset(preset, **overrides)``; with ``spatial_dims=2`` a 2D generator applied slice by
    slice along ``slice_axis`` of 3D inputs (the paper's 2D cGAN), so it trains and infers on the same volumes."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    network = SCGANGenerator.from_preset(preset, spatial_dims=spatial_dims, **overrides)
    return SliceWise(network, slice_axis) if spatial_dims == 2 else network


def build_discriminator(preset: str = "cpu", spatial_dims: int = 3, slice_axis: int = 4, **overrides: Any) -> nn.Module:
    """``SCGANDiscriminator.from_preset(preset, **overrides)``, slice-wise when ``spatial_dims=2``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    network = SCGANDiscriminator.from_preset(preset, spatial_dims=spatial_dims, **overrides)
    return SliceWise(network, slice_axis) if spatial_dims == 2 else network
