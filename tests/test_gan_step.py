"""Behaviour of one ConditionalGanTrainer iteration (pix2pix order: D step on the detached synthesis, then G step
through a frozen D), of the losses and of the metrics it reports."""

from __future__ import annotations

import pytest
import torch

from custom_nets import build_discriminator, build_generator
from custom_nets.losses import MaskedRMSELoss
from custom_nets.metrics import masked_rmse, masked_ssim
from custom_nets.trainer import ConditionalGanTrainer

TINY_G = {"channels": [8, 16, 16], "encoder_attention_levels": [2], "decoder_attention_levels": [1]}


def _batch(size: int = 16) -> dict:
    torch.manual_seed(1)
    return {
        "image": torch.rand(2, 2, size, size, size),
        "label": torch.rand(2, 1, size, size, size),
        "mask": torch.ones(2, 1, size, size, size),
    }


def _trainer(with_discriminator: bool = True, **options) -> ConditionalGanTrainer:
    torch.manual_seed(0)
    generator = build_generator(in_channels=2, out_channels=1, output_attention_stride=4, **TINY_G)
    discriminator = build_discriminator(in_channels=3, channels=[8, 8, 16, 16]) if with_discriminator else None
    return ConditionalGanTrainer(
        "cpu",
        1,
        [_batch()],
        generator,
        torch.optim.Adam(generator.parameters(), lr=1e-3),
        discriminator,
        torch.optim.Adam(discriminator.parameters(), lr=1e-3) if with_discriminator else None,
        amp=False,
        **options,
    )


def _weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def test_d_step_gives_g_no_gradient_and_g_step_leaves_d_unchanged():
    trainer = _trainer()
    seen = {}
    d_step = trainer.d_optimizer.step

    def recording_step(*args, **kwargs):
        seen["g_grads_at_d_step"] = [p.grad for p in trainer.g_network.parameters()]
        result = d_step(*args, **kwargs)
        seen["d_after_d_step"] = _weights(trainer.d_network)
        return result

    trainer.d_optimizer.step = recording_step
    g_before = _weights(trainer.g_network)
    trainer._iteration(trainer, _batch())
    assert all(grad is None for grad in seen["g_grads_at_d_step"])  # D's loss sees G(A) detached
    d_after = _weights(trainer.d_network)
    changed = [name for name in d_after if not torch.equal(d_after[name], seen["d_after_d_step"][name])]
    # the G step runs D forward in training mode: only spectral norm's power-iteration vectors may move
    assert all(name.endswith(("._u", "._v")) for name in changed), changed
    assert any(not torch.equal(g_before[n], v) for n, v in _weights(trainer.g_network).items())
    assert all(p.requires_grad for p in trainer.d_network.parameters())  # D is trainable again afterwards


def test_generator_only_training_has_no_adversarial_terms():
    trainer = _trainer(with_discriminator=False)
    output = trainer._iteration(trainer, _batch())
    assert trainer.d_network is None and "adv" not in output and "d_loss" not in output
    assert torch.isfinite(torch.as_tensor(output["g_loss"]))


def test_discriminator_and_optimizer_come_together():
    generator = build_generator(in_channels=2, output_attention_stride=4, **TINY_G)
    discriminator = build_discriminator(in_channels=3, channels=[8, 8, 16, 16])
    with pytest.raises(ValueError, match="together"):
        ConditionalGanTrainer("cpu", 1, [], generator, torch.optim.Adam(generator.parameters()), discriminator, None)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("d_steps", 0, "d_steps must be at least 1, got 0"),
        ("lambda_adv", -1.0, "lambda_adv must be non-negative"),
        ("lambda_fm", -1.0, "lambda_fm must be non-negative"),
        ("lambda_l1", -0.5, "lambda_l1 must be non-negative"),
        ("lambda_rmse", -2.0, "lambda_rmse must be non-negative"),
        ("ema_decay", 1.0, r"ema_decay must be within \[0, 1\)"),
        ("adversarial_start", -0.1, r"adversarial_start must be a fraction of the run within \[0, 1\), got -0.1"),
        ("adversarial_start", 1.0, r"adversarial_start must be a fraction of the run within \[0, 1\), got 1.0"),
        ("adversarial_start", float("nan"), r"adversarial_start must be .*, got nan"),
        ("adversarial_interval", 0, r"adversarial_interval must be a whole number of iterations >= 1 .*, got 0"),
        ("adversarial_interval", 2.5, r"adversarial_interval must be .*, got 2.5"),
        ("adversarial_interval", float("nan"), r"adversarial_interval must be .*, got nan"),
        ("adversarial_interval", "4", r"adversarial_interval must be .*, got '4'"),
        ("adversarial_interval", True, r"adversarial_interval must be .*, got True"),
        ("instance_noise", -0.1, "instance_noise must be a finite non-negative standard deviation, got -0.1"),
        ("instance_noise", float("nan"), "instance_noise must be a finite non-negative standard deviation, got nan"),
        ("discriminator_roi_size", 0, "discriminator_roi_size must be a positive int or a sequence of them, got 0"),
        ("discriminator_roi_size", [8, -1, 8], r"discriminator_roi_size must be .*, got \[8, -1, 8\]"),
        ("discriminator_roi_size", [], r"discriminator_roi_size must be .*, got \[\]"),
        ("discriminator_roi_size", 8.5, "discriminator_roi_size must be .*, got 8.5"),
        (
            "discriminator_roi_size",
            [16, 8, 16],
            r"discriminator_roi_size \[16, 8, 16\]: every size must be at least 16",
        ),
    ],
)
def test_each_bad_option_is_named(option, value, message):
    with pytest.raises(ValueError, match=message):
        _trainer(**{option: value})


@pytest.mark.parametrize(
    "adversarial_start, adversarial_interval, iterations, expected",
    [
        (0.0, 1, 4, [True, True, True, True]),
        (0.5, 1, 4, [False, False, True, True]),
        (0.3, 1, 4, [False, False, True, True]),  # from the first iteration that starts with 30 % of the run done
        (0.75, 1, 4, [False, False, False, True]),
        (0.0, 2, 5, [True, False, True, False, True]),
        (0.0, 3, 7, [True, False, False, True, False, False, True]),
        (0.5, 2, 6, [False, False, False, False, True, False]),  # both: past the start and on the interval
    ],
)
def test_d_trains_only_when_scheduled(adversarial_start, adversarial_interval, iterations, expected):
    trainer = _trainer(adversarial_start=adversarial_start, adversarial_interval=adversarial_interval)
    trainer.state.max_epochs, trainer.state.epoch_length = 1, iterations
    used_d = []
    for iteration in range(1, iterations + 1):
        trainer.state.iteration = iteration  # ignite's counter, already incremented when an iteration runs
        d_before = _weights(trainer.d_network)
        output = trainer._iteration(trainer, _batch())
        d_moved = any(not torch.equal(d_before[n], v) for n, v in _weights(trainer.d_network).items())
        assert d_moved == ("d_loss" in output) == ("adv" in output)  # D trained exactly when its losses appear
        used_d.append(d_moved)
    assert used_d == expected


def test_adversarial_start_follows_the_time_budget():
    trainer = _trainer(adversarial_start=0.5)
    trainer.state.max_epochs, trainer.state.epoch_length, trainer.state.iteration = 100, 100, 2  # 0.01 % by count
    trainer.state.time_budget_fraction = 0.4
    assert not trainer.adversarial_now()
    trainer.state.time_budget_fraction = 0.5
    assert trainer.adversarial_now()
    assert not _trainer(with_discriminator=False, adversarial_start=0.5).adversarial_now()


def _pairs_seen_by_d(trainer: ConditionalGanTrainer, size: int = 16) -> list[torch.Tensor]:
    """Run one iteration and return every input D was given, in order."""
    seen = []
    forward = trainer.d_network.forward

    def recording_forward(x):
        seen.append(x.detach().clone())
        return forward(x)

    trainer.d_network.forward = recording_forward
    trainer._iteration(trainer, _batch(size))
    return seen


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.2])
def test_instance_noise_reaches_only_the_targets_d_sees(sigma):
    trainer = _trainer(instance_noise=sigma)
    batch = _batch()
    pairs = _pairs_seen_by_d(trainer)
    assert len(pairs) == 4  # D step: real, synthesised; G step: synthesised, real (feature matching)
    for pair in pairs:
        assert torch.equal(pair[:, :2], batch["image"])  # the condition is never perturbed
    for real in (pairs[0], pairs[3]):
        deviation = real[:, 2:] - batch["label"]
        if sigma == 0:
            assert torch.equal(deviation, torch.zeros_like(deviation))
        else:  # 8192 draws: the sample standard deviation is within a few per cent of sigma
            assert float(deviation.std()) == pytest.approx(sigma, rel=0.05)
            assert abs(float(deviation.mean())) < 0.1 * sigma
    if sigma > 0:  # fresh noise for every pair: the two views of the real target differ
        assert not torch.equal(pairs[0][:, 2:], pairs[3][:, 2:])
        assert not torch.equal(pairs[1][:, 2:], pairs[2][:, 2:])


def _crop_location(volume: torch.Tensor, crop: torch.Tensor) -> list[tuple[int, ...]]:
    """Every start (z, y, x) at which ``crop`` equals a sub-volume of ``volume`` (both B, C, *spatial)."""
    size = crop.shape[2:]
    starts = [range(full - part + 1) for full, part in zip(volume.shape[2:], size)]
    return [
        (z, y, x)
        for z in starts[0]
        for y in starts[1]
        for x in starts[2]
        if torch.equal(volume[:, :, z : z + size[0], y : y + size[1], x : x + size[2]], crop)
    ]


@pytest.mark.parametrize("roi, expected", [(16, (16, 16, 16)), ([24, 16, 20], (24, 16, 20)), (48, (32, 32, 32))])
def test_discriminator_judges_one_random_crop_per_iteration(roi, expected):
    trainer = _trainer(discriminator_roi_size=roi)
    batch = _batch(32)
    pairs = _pairs_seen_by_d(trainer, 32)
    assert len(pairs) == 4 and all(tuple(pair.shape[2:]) == expected for pair in pairs)
    locations = [_crop_location(batch["image"], pair[:, :2]) for pair in pairs]
    # real and synthesised pairs, in the D step and the G step, are cut at one location
    assert len(locations[0]) == 1 and all(found == locations[0] for found in locations)
    z, y, x = locations[0][0]
    real_target = batch["label"][:, :, z : z + expected[0], y : y + expected[1], x : x + expected[2]]
    assert torch.equal(pairs[0][:, 2:], real_target) and torch.equal(pairs[3][:, 2:], real_target)
    assert not torch.equal(pairs[1][:, 2:], real_target)  # the synthesis, not the target


def test_discriminator_crop_moves_between_iterations_and_repeats_with_the_seed():
    batch = _batch(24)

    def locations(seed: int) -> list:
        trainer = _trainer(discriminator_roi_size=16)
        seen = []
        forward = trainer.d_network.forward
        trainer.d_network.forward = lambda x: seen.append(x.detach().clone()) or forward(x)
        torch.manual_seed(seed)
        for _ in range(4):
            trainer._iteration(trainer, batch)
        return [_crop_location(batch["image"], pair[:, :2])[0] for pair in seen[::4]]

    first = locations(3)
    assert len(set(first)) > 1 and locations(3) == first


def test_discriminator_crop_of_other_dimensionality_is_named():
    trainer = _trainer(discriminator_roi_size=[16, 16])
    with pytest.raises(ValueError, match=r"discriminator_roi_size \[16, 16\] has 2 dimensions, the patches 3"):
        trainer._iteration(trainer, _batch())


def test_an_iteration_without_data_is_refused():
    trainer = _trainer()
    with pytest.raises(ValueError, match="must provide batch data"):
        trainer._iteration(trainer, None)


@pytest.mark.parametrize("shape", [(1, 1, 8, 8, 8), (2, 1, 6, 7, 5), (3, 1, 10, 10)])
def test_masked_rmse_with_a_full_mask_is_plain_rmse(shape):
    pred, target = torch.rand(shape), torch.rand(shape)
    plain = torch.sqrt(((pred - target) ** 2).mean())
    loss = MaskedRMSELoss(eps=0.0)
    assert loss(pred, target, torch.ones(shape[0], 1, *shape[2:])) == pytest.approx(float(plain), rel=1e-6)
    assert loss(pred, target) == pytest.approx(float(plain), rel=1e-6)
    assert masked_rmse(pred[:1], target[:1], torch.ones_like(pred[:1])) == pytest.approx(
        float(torch.sqrt(((pred[:1] - target[:1]) ** 2).mean())), rel=1e-5
    )


def test_masked_rmse_ignores_voxels_outside_the_mask():
    pred, target = torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    mask = torch.zeros_like(pred)
    mask[..., :2] = 1
    target[..., 2:] = 100.0  # errors only outside the mask
    assert MaskedRMSELoss(eps=0.0)(pred, target, mask) == 0


def test_ssim_of_an_image_with_itself_is_one():
    image = torch.rand(1, 1, 16, 16, 16)
    mask = torch.ones_like(image)
    assert masked_ssim(image, image, mask) == pytest.approx(1.0, abs=1e-6)
    assert masked_ssim(image, torch.rand_like(image), mask) < 0.5
