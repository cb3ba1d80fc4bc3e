"""ConditionalGanTrainer options that the bundle tests do not isolate: channels-last memory format."""

from __future__ import annotations

import pytest
import torch

from custom_nets import build_discriminator, build_generator
from custom_nets.handlers import training_losses
from custom_nets.trainer import ConditionalGanTrainer

TINY_G = {"channels": [8, 16, 16], "encoder_attention_levels": [2], "decoder_attention_levels": [1]}


def _trainer(spatial_dims: int, channels_last: bool) -> ConditionalGanTrainer:
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
