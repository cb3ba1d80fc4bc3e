"""SC-GAN (Lan, Toga, Sepehrband, Magn. Reson. Med. 2021) networks and tools for the MONAI bundle."""

from custom_nets.networks import (
    DISCRIMINATOR_PRESETS,
    GENERATOR_PRESETS,
    SCGANDiscriminator,
    SCGANGenerator,
    SelfAttention3d,
    SliceWise,
    bake_spectral_norm,
    build_discriminator,
    build_generator,
)

__version__ = "0.1.0"

__all__ = [
    "SCGANGenerator",
    "SCGANDiscriminator",
    "SelfAttention3d",
    "GENERATOR_PRESETS",
    "DISCRIMINATOR_PRESETS",
    "bake_spectral_norm",
    "SliceWise",
    "build_generator",
    "build_discriminator",
]
