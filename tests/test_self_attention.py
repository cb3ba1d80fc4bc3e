from __future__ import annotations

import pytest
import torch
from parameterized import parameterized
from torch.nn.attention import SDPBackend, sdpa_kernel

from custom_nets import SelfAttention3d

# [spatial_dims, channels, spatial size, pool_size, pool_stride]
CASES = [
    [3, 64, 8, 2, None],
    [3, 16, 6, 1, None],
    [3, 1, 16, 2, 8],
    [3, 2, 8, 2, None],
    [2, 32, 12, 2, None],
    [2, 4, 8, 1, None],
]


def _with_open_gate(block: SelfAttention3d, sigma: float = 0.7) -> SelfAttention3d:
    with torch.no_grad():
        block.sigma.fill_(sigma)
    return block.eval()


@parameterized.expand(CASES)
def test_shape_and_identity_at_init(spatial_dims, channels, size, pool_size, pool_stride):
    block = SelfAttention3d(spatial_dims, channels, pool_size, pool_stride).eval()
    x = torch.randn(2, channels, *([size] * spatial_dims))
    y = block(x)
    assert y.shape == x.shape
    # σ starts at 0, so (x + 0·o) / 1 = x: the block starts as the identity, as in the paper's code.
    assert torch.equal(y, x)


@parameterized.expand(CASES)
def test_fused_matches_naive(spatial_dims, channels, size, pool_size, pool_stride):
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(spatial_dims, channels, pool_size, pool_stride))
    x = torch.randn(2, channels, *([size] * spatial_dims))
    # Forcing the flash kernel turns a silent fallback to the N×M math path into an error.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused = block(x)
    block.implementation = "naive"
    naive = block(x)
    assert torch.linalg.vector_norm(fused - naive) <= 1e-5 * torch.linalg.vector_norm(naive)


def test_gradients_reach_gate_and_projections():
    block = SelfAttention3d(3, 16).train()
    x = torch.randn(1, 16, 8, 8, 8, requires_grad=True)
    (block(x) * torch.randn_like(x)).sum().backward()
    assert block.sigma.grad is not None and block.sigma.grad.abs() > 0
    # With σ = 0 the projections get no gradient yet; once σ moves they do.
    with torch.no_grad():
        block.sigma.fill_(0.1)
    block.zero_grad()
    (block(x) * torch.randn_like(x)).sum().backward()
    assert block.theta.parametrizations.weight.original.grad.abs().sum() > 0


def test_spectral_norm_on_projections():
    block = SelfAttention3d(3, 32).train()
    x = torch.randn(1, 32, 8, 8, 8)
    # One power iteration per training step, as the paper's code: the estimate converges within ~20 steps.
    for _ in range(20):
        block(x)
    for conv in (block.theta, block.phi, block.g, block.out_proj):
        sigma_max = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert abs(sigma_max.item() - 1.0) < 1e-2


def test_without_spectral_norm():
    block = SelfAttention3d(3, 16, spectral_norm=False)
    assert not hasattr(block.theta, "parametrizations")


@parameterized.expand(
    [
        [dict(spatial_dims=1, in_channels=8), "spatial_dims"],
        [dict(spatial_dims=3, in_channels=0), "in_channels"],
        [dict(spatial_dims=3, in_channels=8, pool_size=0), "pool_size"],
        [dict(spatial_dims=3, in_channels=8, implementation="flash"), "implementation"],
    ]
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SelfAttention3d(**kwargs)


def test_too_small_input():
    with pytest.raises(ValueError, match="pool_size=4"):
        SelfAttention3d(3, 8, pool_size=4)(torch.randn(1, 8, 2, 8, 8))
