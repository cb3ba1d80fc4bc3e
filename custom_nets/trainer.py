# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The conditional-GAN training step of SC-GAN as a MONAI ``Trainer``."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.losses import PatchAdversarialLoss
from monai.utils import CommonKeys
from torch import nn

from custom_nets.inferers import size_divisor
from custom_nets.losses import FeatureMatchingLoss, MaskedRMSELoss
from custom_nets.precision import autocast_dtype

__all__ = ["ConditionalGanTrainer", "GanKeys", "averaged_copy", "schedule_progress"]

logger = logging.getLogger(__name__)


class GanKeys:
    """Keys of a ``ConditionalGanTrainer`` iteration's output; ``LOSSES`` are the terms the stats handlers log."""

    G_LOSS, D_LOSS, ADV, FM, L1, RMSE, D_REAL, D_FAKE = (
        "g_loss",
        "d_loss",
        "adv",
        "fm",
        "l1",
        "rmse",
        "d_real",
        "d_fake",
    )
    DISTILL_OUTPUT, DISTILL_FEATURE = "distill_output", "distill_feature"
    LOSSES = (G_LOSS, D_LOSS, ADV, FM, L1, RMSE, DISTILL_OUTPUT, DISTILL_FEATURE)


def prepare_batch_with_mask(
    batchdata: dict, device: torch.device, non_blocking: bool = False, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, label, mask)`` on ``device``; the mask is all ones when the batch has none."""
    image = batchdata[CommonKeys.IMAGE].to(device, non_blocking=non_blocking, **kwargs)
    label = batchdata[CommonKeys.LABEL].to(device, non_blocking=non_blocking, **kwargs)
    mask = batchdata.get("mask")
    mask = torch.ones_like(label[:, :1]) if mask is None else mask.to(device, non_blocking=non_blocking, **kwargs)
    return image, label, mask


def averaged_copy(network: nn.Module) -> nn.Module:
    """A frozen copy of ``network`` (unwrapped from DDP) in eval mode, to hold the generator's weight average."""
    average = copy.deepcopy(getattr(network, "module", network)).eval()
    return average.requires_grad_(False)


def _is_plain_3d(network: nn.Module) -> bool:
    """A network with 3D convolutions only and not wrapped for DDP (channels-last 3D applies to it)."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        return False
    convolutions = [m for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return bool(convolutions) and all(m.weight.ndim == 5 for m in convolutions)


def _check_roi_size(roi_size: Sequence[int] | int | None, d_network: nn.Module | None) -> None:
    """Raise a ``ValueError`` naming ``discriminator_roi_size`` unless it is ``None``, a positive int or a sequence of
    them, each at least ``d_network``'s ``min_size`` (looked up through DDP's ``module`` and ``SliceWise``'s
    ``network``)."""
    if roi_size is None:
        return
    sizes = roi_size if isinstance(roi_size, Sequence) and not isinstance(roi_size, str) else [roi_size]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"discriminator_roi_size must be a positive int or a sequence of them, got {roi_size!r}.")
    judge = getattr(d_network, "module", d_network)
    min_size = getattr(getattr(judge, "network", judge), "min_size", 1)
    if min(sizes) < min_size:
        raise ValueError(
            f"discriminator_roi_size {roi_size!r}: every size must be at least {min_size}, the smallest input the "
            "discriminator takes (its self-attention needs 2 voxels at its level)."
        )


def schedule_progress(iteration: int, total_iterations: int, time_fraction: float = 0.0) -> float:
    """The fraction of a training run done: ``iteration / total_iterations`` (iterations completed of those planned),
    or ``time_fraction`` (of a wall-clock budget, ``TimeBudget``) when larger, clipped to [0, 1]. The clock of
    ``CosineSchedule`` and of ``ConditionalGanTrainer``'s ``adversarial_start``: one definition, so that both follow
    the same run length (iteration-bound or time-bound, resumed or not)."""
    return min(max(iteration / total_iterations, time_fraction), 1.0)


class ConditionalGanTrainer(Trainer):
    """Paired conditional-GAN training of SC-GAN (Lan, Toga, Sepehrband, Magn. Reson. Med. 86(3), 2021), after
    pix2pix. MONAI's ``GanTrainer`` feeds G random latents and never shows D the (input, output) pair, hence this class.

    One iteration, for inputs ``x`` (B, C_in, *patch), targets ``y`` (B, C_out, *patch) and brain masks ``m``:

    1. ``fake = G(x)`` (autocast to bf16/fp16 when ``amp`` and the device supports it).
    2. Train D ``d_steps`` times: adversarial loss on ``D(cat[x, y])`` as real and ``D(cat[x, fake.detach()])`` as
       fake, averaged (D always runs in fp32: a PatchGAN under bf16 went NaN in a prototype). With ``instance_noise``
       σ > 0 every target D sees, real or synthesised, gets fresh Gaussian noise of standard deviation σ. With a
       ``discriminator_roi_size``, D sees one random crop of that size of every pair in this iteration (the same
       location for the real and the synthesised pair, so that feature matching compares aligned features).
    3. Train G: ``λ_adv·adv(D(cat[x, fake]))`` + ``λ_fm·L1(D features on the fake pair, on the real pair)`` +
       ``λ_l1·L1(fake, y)`` + ``λ_rmse·RMSE inside m`` (the paper's code: λ_l1 = λ_rmse = 200), and with a
       ``distillation`` (``custom_nets.distillation.GeneratorDistillation``) ``λ_distill_output·L1(fake, teacher(x))``
       + ``λ_distill_feature·attention-transfer distance`` to the frozen teacher.
    4. Put every loss term into ``engine.state.output`` with ``image``, ``label``, ``pred`` and ``mask``, and fire
       ``IterationEvents.MODEL_COMPLETED``.

    Before ``adversarial_start`` of the run, and on all but one iteration in every ``adversarial_interval``, steps 2 and
    3's adversarial and feature-matching terms are skipped: G is trained on its reconstruction losses alone and D is
    neither run nor updated.

    With ``d_network=None`` the trainer fits G alone (the paper's 3D U-Net baseline: L1 + brain RMSE). Setting a weight
    to 0 drops its term (the ablations: no adversarial loss, no feature matching, no brain RMSE).

    Args:
        device: where to train.
        max_epochs: epochs.
        train_data_loader: loader of dicts with ``image``, ``label`` and optionally ``mask``.
        g_network, g_optimizer: the generator and its optimiser.
        d_network, d_optimizer: the discriminator (returns [features..., logits]) and its optimiser, or ``None``.
        adversarial_criterion: ``"least_squares"`` (default), ``"bce"`` or ``"hinge"`` (MONAI ``PatchAdversarialLoss``).
        lambda_adv, lambda_fm, lambda_l1, lambda_rmse: loss weights.
        d_steps: discriminator updates per generator update.
        instance_noise: standard deviation σ of the Gaussian noise added to the target channels of every pair D sees,
            real and synthesised, in the scaled target's units ([0, 1] over ``target_min``–``target_max`` in the
            bundle); 0 (default) adds none. Instance noise (Sønderby et al., "Amortised MAP inference for image
            super-resolution", ICLR 2017; Arjovsky and Bottou, ICLR 2017) keeps D from separating the pairs by the
            target's measurement noise, which G cannot predict from the inputs: the noise is added to both
            distributions, so the optimum (synthesis distributed as the targets) is unchanged.
        adversarial_start: the fraction of the run (``schedule_progress``: iterations done of ``max_epochs ×
            epoch_length``, or the time budget spent when larger) before which G trains without D, in [0, 1); 0
            (default, the paper's) uses D from the first iteration. Pre-training the generator on its pixel losses and
            then training it adversarially is SRGAN's and ESRGAN's recipe (Ledig et al., CVPR 2017; Wang et al., ECCV
            Workshops 2018); under a wall-clock budget the G-only iterations also cost less (no D forward or backward).
        adversarial_interval: D is run and updated, and the adversarial and feature-matching terms join G's loss, on one
            iteration in every ``adversarial_interval`` (the first of each run of k); the others train G on its
            reconstruction losses alone. 1 (default, the paper's) uses D on every iteration. Lazy updates, as StyleGAN2
            applies its regularisers every 16 minibatches (Karras et al., "Analyzing and improving the image quality of
            StyleGAN", CVPR 2020), cut D's share of the cost by k; the loss weights are not rescaled.
        discriminator_roi_size: spatial size of the random crop of the patch that D judges each iteration (an int for
            every dimension, or one per dimension; a dimension at least the patch's takes all of it), or ``None``
            (default, the paper's: the whole patch). D's cost, and that of the adversarial and feature-matching
            gradients through it, scale with the crop's volume; adversarial training on random sub-volumes of the
            generator's output is HA-GAN's (Sun et al., "Hierarchical amortized GAN for 3D high resolution medical
            image synthesis", IEEE JBHI 26(8), 2022). Every size must be at least D's ``min_size`` (16 for the
            bundle's presets, whose attention needs 2 voxels after three stride-2 levels).
        g_network_ema: a copy of the generator (``averaged_copy``) that keeps an exponential moving average of its
            weights after every generator step (Karras et al., "Progressive growing of GANs", ICLR 2018; Yazıcı et
            al., "The unusual effectiveness of averaging in GAN training", ICLR 2019): validate and deploy this one.
        ema_decay: the average's decay; the effective decay ``min(ema_decay, (1 + t) / (10 + t))`` at update ``t``
            lets the average follow the fast early changes (TensorFlow's ``ExponentialMovingAverage`` warm-up).
        distillation: a ``GeneratorDistillation`` built on ``g_network`` (knowledge distillation from a trained
            teacher), or ``None``.
        lambda_distill_output, lambda_distill_feature: weights of its output L1 and attention-transfer terms.
        amp: mixed precision for G (CUDA autocast with gradient scaling; bf16 autocast on CPUs with native bf16).
        channels_last: keep 3D networks and batches in ``channels_last_3d`` memory format (8-10 % faster training
            steps on CPU in ``benchmarks/train_step.py``); ignored for 2D networks and for DDP-wrapped ones, whose
            gradient buckets are laid out at wrapping time.
        train_handlers: ignite/MONAI handlers.
        epoch_length, non_blocking, iteration_update, postprocessing, key_train_metric, additional_metrics,
        metric_cmp_fn, event_names, event_to_attr, decollate, to_kwargs: as MONAI's ``Trainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_network: nn.Module | None = None,
        d_optimizer: torch.optim.Optimizer | None = None,
        adversarial_criterion: str = "least_squares",
        lambda_adv: float = 1.0,
        lambda_fm: float = 10.0,
        lambda_l1: float = 200.0,
        lambda_rmse: float = 200.0,
        d_steps: int = 1,
        instance_noise: float = 0.0,
        discriminator_roi_size: Sequence[int] | int | None = None,
        adversarial_start: float = 0.0,
        adversarial_interval: int = 1,
        g_network_ema: nn.Module | None = None,
        ema_decay: float = 0.999,
        distillation: nn.Module | None = None,
        lambda_distill_output: float = 200.0,
        lambda_distill_feature: float = 20.0,
        amp: bool = False,
        channels_last: bool = False,
        train_handlers: Sequence | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        to_kwargs: dict | None = None,
    ) -> None:
        if (d_network is None) != (d_optimizer is None):
            raise ValueError("give d_network and d_optimizer together, or neither (generator-only training).")
        if d_steps < 1:
            raise ValueError(f"d_steps must be at least 1, got {d_steps}.")
        if not math.isfinite(instance_noise) or instance_noise < 0:
            raise ValueError(f"instance_noise must be a finite non-negative standard deviation, got {instance_noise}.")
        _check_roi_size(discriminator_roi_size, d_network)
        if not 0.0 <= adversarial_start < 1.0:  # also false for NaN
            raise ValueError(f"adversarial_start must be a fraction of the run within [0, 1), got {adversarial_start}.")
        whole = isinstance(adversarial_interval, (int, float)) and float(adversarial_interval).is_integer()
        if isinstance(adversarial_interval, bool) or not whole or adversarial_interval < 1:
            raise ValueError(
                f"adversarial_interval must be a whole number of iterations >= 1 (1: D on every iteration), got "
                f"{adversarial_interval!r}."
            )
        for name, value in (
            ("lambda_adv", lambda_adv),
            ("lambda_fm", lambda_fm),
            ("lambda_l1", lambda_l1),
            ("lambda_rmse", lambda_rmse),
            ("lambda_distill_output", lambda_distill_output),
            ("lambda_distill_feature", lambda_distill_feature),
        ):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}.")
        super().__init__(
            device,
            max_epochs,
            train_data_loader,  # MONAI's Trainer: device, max_epochs, data_loader first
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch_with_mask,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=False,  # the trainer handles precision itself (G only)
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
        )
        self.g_network, self.g_optimizer = g_network, g_optimizer
        self.d_network, self.d_optimizer = d_network, d_optimizer
        # MONAI handlers and MONAI Label look for engine.network / engine.optimizer
        self.network, self.optimizer = g_network, g_optimizer
        self.adversarial_loss = PatchAdversarialLoss(criterion=adversarial_criterion, reduction="mean")
        self.feature_matching = FeatureMatchingLoss()
        self.masked_rmse = MaskedRMSELoss()
        self.lambda_adv, self.lambda_fm, self.lambda_l1, self.lambda_rmse = (
            lambda_adv,
            lambda_fm,
            lambda_l1,
            lambda_rmse,
        )
        self.d_steps = d_steps
        self.instance_noise = float(instance_noise)
        self.discriminator_roi_size = discriminator_roi_size
        self.adversarial_start = float(adversarial_start)
        self.adversarial_interval = int(adversarial_interval)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be within [0, 1), got {ema_decay}.")
        self.g_network_ema, self.ema_decay = g_network_ema, ema_decay
        self.distillation = distillation
        self.lambda_distill_output, self.lambda_distill_feature = lambda_distill_output, lambda_distill_feature
        self.channels_last = channels_last and all(
            _is_plain_3d(network) for network in (g_network, d_network) if network is not None
        )
        if self.channels_last:
            for network in (g_network, d_network, distillation):
                if network is not None:
                    network.to(memory_format=torch.channels_last_3d)
        self.use_gan = d_network is not None and (lambda_adv > 0 or lambda_fm > 0)
        device_type = torch.device(device).type
        self.amp_dtype = autocast_dtype(device) if amp else None
        self.device_type = device_type
        scale = self.amp_dtype == torch.float16
        self.g_scaler = torch.amp.GradScaler(device_type, enabled=scale) if device_type == "cuda" else None
        self._warned_bf16 = False

    def adversarial_now(self) -> bool:
        """Whether this iteration trains with D: a GAN is configured, ``adversarial_start`` of the run is done and the
        iteration is one of every ``adversarial_interval`` (iterations 1, 1 + k, 1 + 2k, ...). Under DDP every rank
        agrees (the iteration counter and rank 0's time-budget fraction are shared)."""
        if not self.use_gan:
            return False
        if (self.state.iteration - 1) % self.adversarial_interval:
            return False
        if self.adversarial_start <= 0:
            return True
        total = self.state.max_epochs * self.state.epoch_length
        done = schedule_progress(self.state.iteration - 1, total, getattr(self.state, "time_budget_fraction", 0.0))
        return done >= self.adversarial_start

    def _autocast(self, spatial: Sequence[int]):
        """Autocast for G on a batch of ``spatial`` size. On CPU, bf16 is refused when the generator's bottleneck would
        be a single voxel: its norm then returns a constant map, and oneDNN's bf16 conv3d backward returned
        uninitialised (often NaN) gradients for the next convolution in 10-30 % of calls (32³ patches, CPU preset)."""
        enabled = self.amp_dtype is not None
        if enabled and self.device_type == "cpu" and any(s // size_divisor(self.g_network) <= 1 for s in spatial):
            if not self._warned_bf16:
                logger.warning(
                    f"amp: patches of {tuple(spatial)} reduce the generator to a single voxel; training in fp32 "
                    "(the CPU bf16 conv3d backward is unreliable there). Use patches of 2 × size_divisor or more."
                )
                self._warned_bf16 = True
            enabled = False
        return torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32, enabled=enabled)

    @torch.no_grad()
    def _update_average(self) -> None:
        """``ema ← d·ema + (1 − d)·G`` for parameters; buffers (spectral-norm vectors, norm statistics) copied."""
        t = self.state.iteration
        decay = min(self.ema_decay, (1 + t) / (10 + t))
        source = getattr(self.g_network, "module", self.g_network)
        average = dict(self.g_network_ema.named_parameters())
        for name, parameter in source.named_parameters():
            average[name].lerp_(parameter.detach().to(average[name].dtype), 1 - decay)
        buffers = dict(self.g_network_ema.named_buffers())
        for name, buffer in source.named_buffers():
            buffers[name].copy_(buffer)

    def _pair(self, condition: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pair D sees, ``cat[condition, target]`` on channels, the target with fresh ``instance_noise``."""
        if self.instance_noise > 0:
            target = target + self.instance_noise * torch.randn_like(target)
        return torch.cat((condition, target), dim=1)

    def _discriminator_crop(self, *volumes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The same random ``discriminator_roi_size`` crop of each of ``volumes`` (B, C, *spatial), all of them when
        no size is set. The location is drawn from torch's generator, so seeded runs repeat."""
        if self.discriminator_roi_size is None:
            return volumes
        spatial = volumes[0].shape[2:]
        roi = self.discriminator_roi_size
        roi = [roi] * len(spatial) if isinstance(roi, int) else list(roi)
        if len(roi) != len(spatial):
            raise ValueError(
                f"discriminator_roi_size {self.discriminator_roi_size!r} has {len(roi)} dimensions, the patches "
                f"{len(spatial)} ({tuple(spatial)})."
            )
        window = []
        for size, crop in zip(spatial, roi):
            crop = min(crop, size)
            start = int(torch.randint(0, size - crop + 1, ())) if crop < size else 0
            window.append(slice(start, start + crop))
        return tuple(volume[(slice(None), slice(None), *window)] for volume in volumes)

    def _check_finite(self, name: str, network: nn.Module, losses: dict[str, torch.Tensor]) -> None:
        """Raise before the optimiser step when a loss term or the gradient of ``network`` is not finite, so that a
        non-finite model is never trained on, validated or saved (a NaN in the data, or the CPU bf16 conv3d backward
        that returned uninitialised gradients for all-zero maps)."""
        bad_losses = sorted(key for key, value in losses.items() if not torch.isfinite(value).all())
        gradients = [p.grad for p in network.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients) if gradients else torch.zeros(())
        if not bad_losses and torch.isfinite(norm):
            return
        what = f"loss term(s) {bad_losses}" if bad_losses else f"the {name}'s gradient (norm {float(norm)})"
        hint = (
            "check the input and target volumes for NaN/Inf"
            if bad_losses
            else "rerun with --amp False (reduced precision)" if self.amp_dtype is not None else "lower lr_g / lr_d"
        )
        raise FloatingPointError(
            f"non-finite {what} at iteration {self.state.iteration} (epoch {self.state.epoch}) while training the "
            f"{name}; stopped before the optimiser step, so no saved model is affected: {hint}."
        )

    def _iteration(self, engine: ConditionalGanTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        real_a, real_b, mask = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        if engine.channels_last:
            real_a = real_a.contiguous(memory_format=torch.channels_last_3d)
            real_b = real_b.contiguous(memory_format=torch.channels_last_3d)
        engine.g_network.train()
        with engine._autocast(real_a.shape[2:]):
            fake_b = engine.g_network(real_a)  # G(A)
        fake_b32 = fake_b.float()
        losses: dict[str, torch.Tensor] = {}
        use_gan = engine.adversarial_now()

        # Train Discriminator
        if use_gan:
            engine.d_network.train()
            crop_a, crop_b, crop_fake = engine._discriminator_crop(real_a, real_b, fake_b32)
            for _ in range(engine.d_steps):
                engine.d_optimizer.zero_grad(set_to_none=True)
                real_logits = engine.d_network(engine._pair(crop_a, crop_b))[-1]  # D(A, B)
                fake_logits = engine.d_network(engine._pair(crop_a, crop_fake.detach()))[-1]  # D(A, G(A))
                d_real = engine.adversarial_loss(real_logits, target_is_real=True, for_discriminator=True)
                d_fake = engine.adversarial_loss(fake_logits, target_is_real=False, for_discriminator=True)
                d_loss = 0.5 * (d_real + d_fake)
                d_loss.backward()
                engine._check_finite(
                    "discriminator", engine.d_network, {GanKeys.D_REAL: d_real, GanKeys.D_FAKE: d_fake}
                )
                engine.d_optimizer.step()
            losses.update({GanKeys.D_LOSS: d_loss, GanKeys.D_REAL: d_real, GanKeys.D_FAKE: d_fake})

        # Train Generator
        engine.g_optimizer.zero_grad(set_to_none=True)
        g_loss = torch.zeros((), device=fake_b32.device)
        if use_gan:
            engine.d_network.requires_grad_(False)  # D needs no parameter gradients while G is optimised
            fake_out = engine.d_network(engine._pair(crop_a, crop_fake))  # D(A, G(A)), gradients flow to G
            adv = engine.adversarial_loss(fake_out[-1], target_is_real=True, for_discriminator=False)
            with torch.no_grad():
                real_features = engine.d_network(engine._pair(crop_a, crop_b))[:-1]
            fm = engine.feature_matching(fake_out[:-1], real_features)
            g_loss = g_loss + engine.lambda_adv * adv + engine.lambda_fm * fm
            losses.update({GanKeys.ADV: adv, GanKeys.FM: fm})
        l1 = torch.mean(torch.abs(fake_b32 - real_b))
        rmse = engine.masked_rmse(fake_b32, real_b, mask)
        g_loss = g_loss + engine.lambda_l1 * l1 + engine.lambda_rmse * rmse
        if engine.distillation is not None:
            with engine._autocast(real_a.shape[2:]):  # the teacher in the student's precision
                distill_output, distill_feature = engine.distillation(real_a, fake_b)
            g_loss = g_loss + engine.lambda_distill_output * distill_output
            g_loss = g_loss + engine.lambda_distill_feature * distill_feature
            losses.update({GanKeys.DISTILL_OUTPUT: distill_output, GanKeys.DISTILL_FEATURE: distill_feature})
        losses.update({GanKeys.L1: l1, GanKeys.RMSE: rmse, GanKeys.G_LOSS: g_loss})
        if engine.g_scaler is not None:
            engine.g_scaler.scale(g_loss).backward()
            engine.g_scaler.step(engine.g_optimizer)
            engine.g_scaler.update()
        else:
            g_loss.backward()
            engine._check_finite("generator", engine.g_network, losses)
            engine.g_optimizer.step()
        if use_gan:
            engine.d_network.requires_grad_(True)
        if engine.g_network_ema is not None:
            engine._update_average()

        engine.state.output = {
            CommonKeys.IMAGE: real_a,
            CommonKeys.LABEL: real_b,
            CommonKeys.PRED: fake_b32.detach(),
            "mask": mask,
            CommonKeys.LOSS: g_loss.item(),
            **{key: value.item() for key, value in losses.items()},
        }
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
