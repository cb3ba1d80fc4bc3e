# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training handlers: a wall-clock budget, the cosine learning-rate schedule, a resumable checkpoint, and a mid-slice
image for TensorBoard."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["TimeBudget", "CosineSchedule", "ResumeCheckpoint", "MidSliceImageHandler"]

logger = logging.getLogger(__name__)


class TimeBudget:
    """Stop training when ``minutes`` of wall-clock time have passed (0 or less: no budget).

    Checked after every iteration: when the budget is spent the current epoch is ended early, so that the epoch-level
    handlers (validation and the best checkpoint, the resume checkpoint) run once more on the final weights, and
    training stops after them. It publishes ``engine.state.time_budget_fraction`` (elapsed / budget), which
    ``CosineSchedule`` follows. Under
    torch.distributed rank 0's clock decides for all ranks, so every rank stops at the same iteration and uses the
    same learning rate.
    """

    def __init__(self, minutes: float = 0.0) -> None:
        self.seconds = float(minutes) * 60
        self.start = 0.0
        self.fraction = 0.0
        self._spent = False

    def attach(self, engine: Engine) -> None:
        if self.seconds <= 0:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_epoch)

    def _started(self, engine: Engine) -> None:
        self.start, self.fraction, self._spent = time.perf_counter(), 0.0, False

    def _check_iteration(self, engine: Engine) -> None:
        elapsed = torch.tensor([time.perf_counter() - self.start], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            elapsed = elapsed.cuda() if backend == "nccl" else elapsed
            torch.distributed.broadcast(elapsed, src=0)
        self.fraction = min(float(elapsed.item()) / self.seconds, 1.0)
        engine.state.time_budget_fraction = self.fraction
        if self.fraction >= 1.0 and not self._spent:
            self._spent = True
            logger.info(
                f"time budget of {self.seconds / 60:.1f} min reached at iteration {engine.state.iteration}: ending "
                f"epoch {engine.state.epoch} now and stopping after it"
            )
            engine.terminate_epoch()

    def _check_epoch(self, engine: Engine) -> None:
        if self._spent:
            engine.terminate()


class CosineSchedule:
    """Cosine annealing of every optimiser's learning rate, from its value at construction to ``min_lr_ratio`` times
    it, over the run as it actually happens (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts).

    Progress is the larger of ``iteration / total_iterations`` and ``engine.state.time_budget_fraction`` (set by
    ``TimeBudget``): an iteration-bound
    run ends its cosine at its last iteration, a time-bound run when its budget is spent, so the schedule never ends
    half-way. It is a pure function of the iteration counter (and the budget), so a resumed run with more ``epochs``
    follows the re-planned, longer schedule, and every DDP rank computes the same value. Optional linear warm-up over
    ``warmup_iterations``.

    Args:
        optimizers: optimisers to schedule (``None`` entries are skipped).
        total_iterations: the planned length, ``epochs × epoch_length``.
        min_lr_ratio: final learning rate as a fraction of the initial one.
        warmup_iterations: linear warm-up length.

    Raises:
        ValueError: ``total_iterations`` < 1 or ``min_lr_ratio`` outside [0, 1].
    """

    def __init__(
        self,
        optimizers: list,
        total_iterations: int,
        min_lr_ratio: float = 0.0,
        warmup_iterations: int = 0,
    ) -> None:
        if total_iterations < 1:
            raise ValueError(f"total_iterations must be >= 1, got {total_iterations}.")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be within [0, 1], got {min_lr_ratio}.")
        self.optimizers = [o for o in optimizers if o is not None]
        # the configured rates, read before a resume checkpoint overwrites the optimisers' param groups
        self.base_lrs = [[group["lr"] for group in o.param_groups] for o in self.optimizers]
        self.total_iterations = int(total_iterations)
        self.min_lr_ratio, self.warmup_iterations = float(min_lr_ratio), int(warmup_iterations)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def factor(self, iteration: int, time_fraction: float = 0.0) -> float:
        """Learning-rate multiplier before iteration ``iteration + 1`` (``iteration`` completed so far), with
        ``time_fraction`` of the time budget spent."""
        progress = min(max(iteration / self.total_iterations, time_fraction), 1.0)
        cosine = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        warmup = min(1.0, (iteration + 1) / self.warmup_iterations) if self.warmup_iterations > 0 else 1.0
        return cosine * warmup

    def __call__(self, engine: Engine) -> None:
        factor = self.factor(engine.state.iteration, getattr(engine.state, "time_budget_fraction", 0.0))
        for optimizer, base_lrs in zip(self.optimizers, self.base_lrs):
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor


class ResumeCheckpoint:
    """Save everything needed to resume (networks, optimisers, schedulers, epoch and iteration) to ``path`` after each
    epoch, atomically; when ``resume`` is true and ``path`` exists, load it when training starts.

    Args:
        path: checkpoint file.
        objects: name → object with ``state_dict``/``load_state_dict`` (``None`` values are skipped).
        resume: load ``path`` at start when it exists.
    """

    def __init__(self, path: str | os.PathLike, objects: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.objects = {name: obj for name, obj in objects.items() if obj is not None}
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _unwrap(self, obj: Any) -> Any:
        return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def save(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return
        state = {name: self._unwrap(obj).state_dict() for name, obj in self.objects.items()}
        state["progress"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            torch.save(state, temporary)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, engine: Engine) -> None:
        if not self.resume or not self.path.is_file():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = [name for name in self.objects if name not in state]
        if missing:
            raise ValueError(f"resume checkpoint {self.path} lacks {missing}; it has {sorted(state)}.")
        for name, obj in self.objects.items():
            self._unwrap(obj).load_state_dict(state[name])
        engine.state.epoch = int(state["progress"]["epoch"])
        engine.state.iteration = int(state["progress"]["iteration"])
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")


LOSS_KEYS = ("g_loss", "d_loss", "adv", "fm", "l1", "rmse")


def training_losses(output: Any) -> dict[str, float]:
    """The loss terms of a ``ConditionalGanTrainer`` output, decollated (a list of per-sample dicts, as MONAI's
    trackers expect) or not (one dict): the ``output_transform`` of the stats, TensorBoard and tracking handlers."""
    item = output[0] if isinstance(output, list) else output
    return {key: float(item[key]) for key in LOSS_KEYS if key in item}


class MidSliceImageHandler:
    """After each validation run, write the mid axial slice of the first subject's input (channel 0), target,
    synthesis and absolute error to TensorBoard, side by side (each scaled to the target's range)."""

    def __init__(self, summary_writer: Any = None, log_dir: str = "./runs", tag: str = "validation/mid_slice") -> None:
        self.writer, self.log_dir, self.tag = summary_writer, log_dir, tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self._grab)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)
        self._slice = None

    def _grab(self, engine: Engine) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        z = item["pred"].shape[-1] // 2
        image, label, pred = (torch.as_tensor(item[k])[0, ..., z].float().cpu() for k in ("image", "label", "pred"))
        low, high = float(label.min()), float(label.max())
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8) * (high - low) + low
        self._slice = torch.cat([image, label, pred, (pred - label).abs() + low], dim=0)
        self._range = (low, high)

    def _write(self, engine: Engine) -> None:
        if self._slice is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=self.log_dir)
        low, high = self._range
        picture = ((self._slice - low) / max(high - low, 1e-8)).clamp(0, 1)
        step = engine.state.epoch if not hasattr(engine, "trainer_epoch") else engine.trainer_epoch
        self.writer.add_image(self.tag, picture.T.flip(0)[None], global_step=step)
        self.writer.flush()
        self._slice = None
