"""ConditionalGanTrainer options that the bundle tests do not isolate: channels-last memory format, the generator's
weight average, the non-finite gradient guard; and the comparison models' overlays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from custom_nets import build_discriminator, build_generator
from custom_nets.handlers import training_losses
from custom_nets.trainer import ConditionalGanTrainer, averaged_copy

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"

TINY_G = {"channels": [8, 16, 16], "encoder_attention_levels": [2], "decoder_attention_levels": [1]}


def _trainer(spatial_dims: int, channels_last: bool, **options) -> ConditionalGanTrainer:
    torch.manual_seed(0)
    generator = build_generator(
        spatial_dims=spatial_dims, in_channels=2, out_channels=1, output_attention_stride=4, **TINY_G
    )
    discriminator = build_discriminator(spatial_dims=spatial_dims, in_channels=3, channels=[8, 8, 16, 16])
    batch = {
        "image": torch.rand(2, 2, 16, 16, 16),
        "label": torch.rand(2, 1, 16, 16, 16),
        "mask": torch.ones(2, 1, 16, 16, 16),
    }
    return (
        ConditionalGanTrainer(
            "cpu",
            1,
            [batch],
            generator,
            torch.optim.Adam(generator.parameters()),
            discriminator,
            torch.optim.Adam(discriminator.parameters()),
            channels_last=channels_last,
            **options,
        ),
        batch,
    )


@pytest.mark.parametrize("spatial_dims, expected", [(3, True), (2, False)])
def test_channels_last_applies_to_3d_networks_only(spatial_dims, expected):
    trainer, batch = _trainer(spatial_dims, channels_last=True)
    assert trainer.channels_last is expected
    if expected:
        weights = [m.weight for m in trainer.g_network.modules() if isinstance(m, torch.nn.Conv3d)]
        assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)
    trainer._iteration(trainer, batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in training_losses(trainer.state.output).values())


def test_channels_last_gives_the_same_losses():
    losses = []
    for channels_last in (False, True):
        trainer, batch = _trainer(3, channels_last)
        trainer._iteration(trainer, batch)
        losses.append(training_losses(trainer.state.output))
    for key in losses[0]:
        assert losses[0][key] == pytest.approx(
            losses[1][key], rel=5e-3, abs=1e-4
        ), key  # conv algorithms differ by layout


def test_weight_average_follows_the_generator_with_the_warm_up_decay():
    trainer, batch = _trainer(3, False)
    average = averaged_copy(trainer.g_network)
    trainer, batch = _trainer(3, False, g_network_ema=average, ema_decay=0.99)
    before = {k: v.clone() for k, v in average.named_parameters()}
    trainer.state.iteration = 1
    trainer._iteration(trainer, batch)
    decay = min(0.99, 2 / 11)
    for name, parameter in trainer.g_network.named_parameters():
        expected = decay * before[name] + (1 - decay) * parameter.detach()
        torch.testing.assert_close(dict(average.named_parameters())[name], expected, rtol=1e-5, atol=1e-7)
    assert not average.training and not any(p.requires_grad for p in average.parameters())


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_weight_average_decay_is_checked(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        _trainer(3, False, ema_decay=decay)


def test_non_finite_gradient_stops_before_the_step():
    trainer, batch = _trainer(3, False)
    weights = {k: v.clone() for k, v in trainer.g_network.named_parameters()}
    original = trainer.g_network.forward

    def poisoned(x):  # a finite output whose gradient is NaN, as the CPU bf16 conv3d backward produced
        return _NanGradient.apply(original(x))

    trainer.g_network.forward = poisoned
    with pytest.raises(FloatingPointError, match="gradient"):
        trainer._iteration(trainer, batch)
    for key, value in trainer.g_network.named_parameters():  # spectral-norm power iterations may move, weights not
        assert torch.equal(value, weights[key]), key


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@pytest.mark.parametrize(
    "overlay, spectral_norm, attention",
    [("cgan2d", False, False), ("cgan3d", False, False), ("attention_cgan", False, True), ("unet3d", True, True)],
)
def test_comparison_overlays_build_the_papers_models(overlay, spectral_norm, attention):
    settings = json.loads((CONFIGS / "models" / f"{overlay}.json").read_text())
    assert settings.get("spectral_norm", True) is spectral_norm
    assert settings.get("attention", True) is attention


@pytest.mark.parametrize("spatial, enabled", [((8, 8, 8), False), ((16, 16, 8), False), ((16, 16, 16), True)])
def test_cpu_bf16_is_refused_where_the_bottleneck_is_one_voxel(spatial, enabled):
    trainer, _ = _trainer(3, False)  # TINY_G: 3 levels, size divisor 8
    trainer.amp_dtype = torch.bfloat16  # as on a CPU with native bf16
    assert trainer._autocast(spatial)._enabled is enabled
