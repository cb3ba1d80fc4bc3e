from custom_nets.networks.blocks import SelfAttention3d
from custom_nets.networks.discriminator import DISCRIMINATOR_PRESETS, SCGANDiscriminator
from custom_nets.networks.generator import GENERATOR_PRESETS, SCGANGenerator
from custom_nets.networks.layers import bake_spectral_norm

__all__ = [
    "SelfAttention3d",
    "SCGANGenerator",
    "SCGANDiscriminator",
    "GENERATOR_PRESETS",
    "DISCRIMINATOR_PRESETS",
    "bake_spectral_norm",
]
