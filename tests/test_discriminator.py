from __future__ import annotations

import pytest
import torch
from monai.networks.nets import PatchDiscriminator
from parameterized import parameterized

from custom_nets import SCGANDiscriminator, SelfAttention3d
from custom_nets.networks.layers import has_spectral_norm

# [constructor arguments, input shape, feature shapes (all but the logits), logits shape]
CASES = [
    [
        dict(channels=(8, 16, 32, 64)),
        (2, 3, 32, 32, 32),
        [(2, 8, 16, 16, 16), (2, 16, 8, 8, 8), (2, 32, 4, 4, 4), (2, 32, 4, 4, 4), (2, 64, 2, 2, 2)],
        (2, 1, 2, 2, 2),
    ],
    [
        dict(in_channels=2, channels=(8, 16), attention_levels=(), kernel_size=5, last_kernel_size=5),
        (1, 2, 16, 16, 16),
        [(1, 8, 8, 8, 8), (1, 16, 4, 4, 4)],
        (1, 1, 4, 4, 4),
    ],
    [
        dict(spatial_dims=2, in_channels=4, channels=(8, 16, 32), attention_levels=(2,)),
        (3, 4, 32, 16),
        [(3, 8, 16, 8), (3, 16, 8, 4), (3, 16, 8, 4), (3, 32, 4, 2)],
        (3, 1, 4, 2),
    ],
]


@parameterized.expand(CASES)
def test_feature_list_contract(kwargs, input_shape, feature_shapes, logits_shape):
    out = SCGANDiscriminator(**kwargs)(torch.randn(input_shape))
    assert isinstance(out, list)
    assert [tuple(f.shape) for f in out[:-1]] == feature_shapes
    assert tuple(out[-1].shape) == logits_shape


def test_same_contract_as_monai_patch_discriminator():
    x = torch.randn(1, 3, 32, 32, 32)
    ours = SCGANDiscriminator(channels=(8, 16, 32, 64))(x)
    monai = PatchDiscriminator(spatial_dims=3, num_layers_d=3, channels=8, in_channels=3)(x)
    assert type(ours) is type(monai) and ours[-1].shape[1] == monai[-1].shape[1] == 1


def test_logits_are_unbounded_and_trainable():
    net = SCGANDiscriminator(channels=(8, 16, 32, 64))
    logits = net(torch.randn(1, 3, 32, 32, 32))[-1]
    logits.mean().backward()
    assert net.levels[0].block[0].parametrizations.weight.original.grad.abs().sum() > 0


@parameterized.expand([[True, 1], [False, 0]])
def test_spectral_norm_and_attention_switches(spectral, n_attention):
    net = SCGANDiscriminator(channels=(8, 16, 32, 64), spectral_norm=spectral, attention_levels=(3,) * n_attention)
    assert has_spectral_norm(net) == spectral
    assert sum(isinstance(m, SelfAttention3d) for m in net.modules()) == n_attention


def test_paper_preset():
    with torch.device("meta"):
        net = SCGANDiscriminator.from_preset("paper")
        out = net(torch.empty(1, 3, 256, 256, 256))
    assert tuple(out[-1].shape) == (1, 1, 16, 16, 16)
    assert [f.shape[1] for f in out[:-1]] == [64, 128, 256, 256, 512]


@parameterized.expand(
    [
        [dict(in_channels=1), "in_channels"],
        [dict(attention_levels=(5,)), "attention_levels"],
        [dict(strides=(2, 2)), "strides"],
    ]
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SCGANDiscriminator(**kwargs)
