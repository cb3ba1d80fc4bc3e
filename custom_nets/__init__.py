"""SC-GAN (Lan, Toga, Sepehrband, Magn. Reson. Med. 2021) networks and tools for the MONAI bundle."""

from custom_nets import networks
from custom_nets.networks import *  # noqa: F401,F403  (the networks are the package's public API)

__version__ = "0.1.0"

__all__ = list(networks.__all__)
