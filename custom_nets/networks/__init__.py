from custom_nets.networks.blocks import SelfAttention3d
from custom_nets.networks.discriminator import DISCRIMINATOR_PRESETS, SCGANDiscriminator
from custom_nets.networks.factory import build_discriminator, build_generator
from custom_nets.networks.generator import GENERATOR_PRESETS, SCGANGenerator
from custom_nets.networks.layers import bake_spectral_norm
from custom_nets.networks.slicewise import SliceWise

__all__ = [
    "SelfAttention3d",
    "SCGANGenerator",
    "SCGANDiscriminator",
    "GENERATOR_PRESETS",
    "DISCRIMINATOR_PRESETS",
    "bake_spectral_norm",
    "SliceWise",
    "build_generator",
    "build_discriminator",
]
