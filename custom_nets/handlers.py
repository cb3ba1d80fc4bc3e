# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training handlers: a wall-clock budget, a resumable checkpoint, and a mid-slice image for TensorBoard."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["TimeBudget", "ResumeCheckpoint", "MidSliceImageHandler"]

logger = logging.getLogger(__name__)


class TimeBudget:
    """Stop training at the end of the first epoch that finishes after ``minutes`` (0 or less: no budget).

    Checked at epoch end, after validation, so the best checkpoint of every finished epoch is kept. Under
    torch.distributed rank 0's clock decides for all ranks."""

    def __init__(self, minutes: float = 0.0) -> None:
        self.seconds = float(minutes) * 60
        self.start = 0.0

    def attach(self, engine: Engine) -> None:
        if self.seconds <= 0:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _started(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def _check(self, engine: Engine) -> None:
        stop = torch.tensor([float(time.perf_counter() - self.start >= self.seconds)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank must stop at the same epoch, or the others would wait forever in the next all-reduce
            backend = torch.distributed.get_backend()
            stop = stop.cuda() if backend == "nccl" else stop
            torch.distributed.broadcast(stop, src=0)
        if stop.item() > 0:
            logger.info(
                f"time budget of {self.seconds / 60:.1f} min reached after epoch {engine.state.epoch}: stopping"
            )
            engine.terminate()


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
