# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
# Ported from Haoyulance/SC-GAN src/utils/util.py::sn_attention (TF1). Changes: PyTorch, 2D or 3D, the pooling factor
# and stride are arguments, and the core runs through the fused scaled_dot_product_attention kernel.
"""BigGAN-style self-attention with pooled keys and values, as used by SC-GAN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Pool
from torch import nn

from custom_nets.networks.layers import make_conv

__all__ = ["SelfAttention3d"]

ATTENTION_IMPLEMENTATIONS = ("fused", "naive")


class SelfAttention3d(nn.Module):
    """Self-attention block of SC-GAN (Lan, Toga, Sepehrband, Magn. Reson. Med. 86(3), 2021; bioRxiv
    10.1101/2020.06.09.143297), after SAGAN (Zhang et al., 2019) as modified by BigGAN: keys and values are max-pooled.

    With ``x`` of ``C`` channels and ``N`` voxels::

        q = θ(x)                      C -> C/8 (4 if C < 8),       N queries
        k = maxpool(φ(x))             C -> C/8 (4 if C < 8),       M = N / pool_stride**d keys
        v = maxpool(g(x))             C -> C/2 (16 if C < 2)
        o = W_o · softmax(q kᵀ) v     C/2 -> C, no 1/sqrt(d) scaling (as in the paper's code)
        y = (x + σ o) / (1 + σ)       σ a learnable scalar, initialised to 0, so the block starts as the identity

    All four projections are 1×1(×1) convolutions, spectrally normalised by default. Despite its name the block works
    for ``spatial_dims`` 2 and 3.

    The core runs through :func:`torch.nn.functional.scaled_dot_product_attention` on contiguous tensors, so that a
    fused kernel keeps memory O(N + M) instead of materialising the N×M score matrix. PyTorch's CPU flash kernel needs
    equal widths for q, k and v: there q and k are zero-padded to v's width (``q kᵀ`` is unchanged), otherwise PyTorch
    would silently fall back to the N×M math path. On CUDA the memory-efficient kernel accepts the unequal widths. The
    ``"naive"`` implementation materialises the matrix and is kept as the reference for tests.

    Shapes: input ``(B, C, *spatial)``, output the same. Every spatial size must be at least ``pool_size``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: ``C``.
        pool_size: max-pool kernel for keys and values; 1 gives full attention (M = N).
        pool_stride: max-pool stride, defaults to ``pool_size``. The paper's output-layer attention uses
            ``pool_size=2, pool_stride=64`` (64 keys for a 256³ volume).
        spectral_norm: spectrally normalise the projections.
        n_power_iterations: power iterations of spectral normalisation per training step.
        implementation: ``"fused"`` (SDPA kernel) or ``"naive"`` (explicit score matrix, for reference).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        pool_size: int = 2,
        pool_stride: int | None = None,
        spectral_norm: bool = True,
        n_power_iterations: int = 1,
        implementation: str = "fused",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if pool_size < 1 or (pool_stride is not None and pool_stride < 1):
            raise ValueError(f"pool_size and pool_stride must be positive, got {pool_size} and {pool_stride}.")
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}.")
        self.spatial_dims = spatial_dims
        self.pool_size = pool_size
        self.pool_stride = pool_size if pool_stride is None else pool_stride
        self.implementation = implementation
        # The paper's code: C//8 or 4, and C//2 or 16 (so a 1-channel output layer still gets 4-wide keys).
        self.qk_channels = in_channels // 8 or 4
        self.v_channels = in_channels // 2 or 16

        def projection(cin: int, cout: int) -> nn.Module:
            return make_conv(
                spatial_dims, cin, cout, 1, spectral_norm=spectral_norm, n_power_iterations=n_power_iterations
            )

        self.theta = projection(in_channels, self.qk_channels)
        self.phi = projection(in_channels, self.qk_channels)
        self.g = projection(in_channels, self.v_channels)
        self.out_proj = projection(self.v_channels, in_channels)
        self.pool = (
            nn.Identity()
            if self.pool_size == 1 and self.pool_stride == 1
            else Pool[Pool.MAX, spatial_dims](kernel_size=self.pool_size, stride=self.pool_stride)
        )
        self.sigma = nn.Parameter(torch.zeros(()))
        for conv in (self.theta, self.phi, self.g, self.out_proj):
            weight = conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
            nn.init.xavier_uniform_(weight)  # the paper's code initialises the 1x1 projections with Xavier

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``softmax(q kᵀ) v`` for ``q (B, N, Dqk)``, ``k (B, M, Dqk)``, ``v (B, M, Dv)``; returns ``(B, N, Dv)``."""
        if self.implementation == "naive":
            scores = torch.bmm(query, key.transpose(1, 2))
            return torch.bmm(torch.softmax(scores, dim=-1), value)
        if query.device.type != "cuda":
            # The CPU flash kernel needs one width for q, k and v; zero columns leave q kᵀ unchanged.
            width = max(self.qk_channels, self.v_channels)
            query = F.pad(query, (0, width - self.qk_channels))
            key = F.pad(key, (0, width - self.qk_channels))
            value = F.pad(value, (0, width - self.v_channels))
        # A singleton head dimension: (B, 1, N, D). contiguous() keeps SDPA off the strided math fallback.
        out = F.scaled_dot_product_attention(
            query.unsqueeze(1).contiguous(), key.unsqueeze(1).contiguous(), value.unsqueeze(1).contiguous(), scale=1.0
        )
        return out.squeeze(1)[..., : self.v_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        if not torch.jit.is_tracing() and (len(spatial) != self.spatial_dims or min(spatial) < self.pool_size):
            raise ValueError(
                f"expected a {self.spatial_dims}D input (B, C, *spatial) with every spatial size >= "
                f"pool_size={self.pool_size}, got shape {x.shape}."
            )
        # "b c *s -> b (*s) c" for queries, pooled keys and values
        query = self.theta(x).flatten(2).transpose(1, 2)
        key = self.pool(self.phi(x)).flatten(2).transpose(1, 2)
        value = self.pool(self.g(x)).flatten(2).transpose(1, 2)
        attended = self.attend(query, key, value)
        # "b (*s) c -> b c *s"
        attended_shape = list(x.shape)
        attended_shape[1] = self.v_channels
        attended = attended.transpose(1, 2).reshape(attended_shape)
        out = self.out_proj(attended)
        # (x + σ·o) / (1 + σ), written so that autograd keeps one N×C tensor instead of two
        return x + (self.sigma / (1 + self.sigma)) * (out - x)
