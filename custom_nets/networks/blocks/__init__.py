from custom_nets.networks.blocks.self_attention import SelfAttention3d

__all__ = ["SelfAttention3d"]
