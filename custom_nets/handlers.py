# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training handlers: a wall-clock budget, the cosine learning-rate schedule, a resumable checkpoint, the deployed
weights, and a mid-slice image for TensorBoard."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable, Transform
from torch.utils.data import Dataset, IterableDataset
from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

from custom_nets.io import atomic_torch_save, read_checkpoint, remove_stale_temporaries
from custom_nets.networks.layers import fold_spectral_norm_state
from custom_nets.trainer import GanKeys, schedule_progress

__all__ = [
    "TimeBudget",
    "CosineSchedule",
    "ResumeCheckpoint",
    "AtomicCheckpointSaver",
    "FinalWeightsSaver",
    "DeployedWeights",
    "CheckedCheckpointLoader",
    "MidSliceImageHandler",
]

logger = logging.getLogger(__name__)


class TimeBudget:
    """Stop training when ``minutes`` of wall-clock time have passed (0 or less: no budget).

    Checked after every iteration: when the budget is spent the current epoch is ended early, so that the epoch-level
    handlers (validation and the best checkpoint, the resume checkpoint) run once more on the final weights, and
    training stops after them. It publishes ``engine.state.time_budget_fraction`` (elapsed / budget), which
    ``CosineSchedule`` follows, and ``engine.state.time_budget_elapsed`` (seconds), which ``ResumeCheckpoint`` keeps:
    a resumed run starts its clock at the time already spent (the budget is for the whole run, and the cosine goes on
    from where it was), not at zero. Under
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
        spent = float(getattr(engine.state, "time_budget_elapsed", 0.0))  # restored by ResumeCheckpoint, else 0
        self.start, self.fraction, self._spent = time.perf_counter() - spent, min(spent / self.seconds, 1.0), False
        engine.state.time_budget_fraction = self.fraction

    def _check_iteration(self, engine: Engine) -> None:
        elapsed = torch.tensor([time.perf_counter() - self.start], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            elapsed = elapsed.cuda() if backend == "nccl" else elapsed
            torch.distributed.broadcast(elapsed, src=0)
        self.fraction = min(float(elapsed.item()) / self.seconds, 1.0)
        engine.state.time_budget_fraction = self.fraction
        engine.state.time_budget_elapsed = float(elapsed.item())
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
        progress = schedule_progress(iteration, self.total_iterations, time_fraction)
        cosine = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        warmup = min(1.0, (iteration + 1) / self.warmup_iterations) if self.warmup_iterations > 0 else 1.0
        return cosine * warmup

    def __call__(self, engine: Engine) -> None:
        # ignite counts the starting iteration already: the iterations completed before it are one fewer
        factor = self.factor(engine.state.iteration - 1, getattr(engine.state, "time_budget_fraction", 0.0))
        for optimizer, base_lrs in zip(self.optimizers, self.base_lrs):
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor


# the ignite Checkpoints a MONAI CheckpointSaver keeps (monai/handlers/checkpoint_saver.py): best, interval, final
_SAVER_CHECKPOINTS = ("_key_metric_checkpoint", "_interval_checkpoint", "_final_checkpoint")


class ResumeCheckpoint:
    """Save everything needed to continue training as if it had never stopped to ``path`` after each epoch,
    atomically; when ``resume`` is true and ``path`` exists, load it when training starts.

    Saved: the ``objects`` (networks, optimisers), epoch and iteration, the time spent (``TimeBudget``), the
    trainer's gradient scaler (``g_scaler``, fp16 only), the random states (torch CPU and current CUDA device,
    numpy, python ``random``, and every MONAI ``Randomizable`` reachable from ``transform``), the training loader's
    position (the torch random state its current iterator was created from, and how many batches were drawn from it),
    the ``evaluator``'s best metric and epoch, and the best-model records of the ``savers``. The resumed run thus
    draws the same shuffles and patches as an
    uninterrupted one, also when an epoch ends part-way through a pass over the data (``epoch_length``), and a worse
    validation does not overwrite the best model. Under torch.distributed each rank's random states are kept (rank 0
    writes the file for all). Files written before an entry existed still load: what is missing is skipped and logged.

    Args:
        path: checkpoint file.
        objects: name → object with ``state_dict``/``load_state_dict`` (``None`` values are skipped).
        resume: load ``path`` at start when it exists (when it does not, training starts from scratch, with a warning).
        transform: the training transform (or its dataset, or a list of them) whose random transforms to keep.
        evaluator: the validation engine whose ``state.best_metric`` and ``state.best_metric_epoch`` to keep.
        savers: MONAI ``CheckpointSaver``s whose ignite ``Checkpoint`` records (which file holds which score) to keep.

    Raises:
        ValueError: at load, when the file lacks one of ``objects``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        objects: dict[str, Any],
        resume: bool = False,
        transform: Any = None,
        evaluator: Engine | None = None,
        savers: Sequence[Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.objects = {name: obj for name, obj in objects.items() if obj is not None}
        self.resume = resume
        self.randomizables = _randomizables(transform)
        self.evaluator = evaluator
        self.savers = list(savers or [])
        self._loader_start: dict[str, Any] | None = None  # random state the loader's current iterator was made from
        self._consumed = 0  # batches drawn from that iterator
        self._iterator_pending = False  # ignite makes a new iterator at the next epoch start

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        # ignite makes a new loader iterator right after these two events
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._iterator_next)
        engine.add_event_handler(Events.TERMINATE_SINGLE_EPOCH, self._iterator_next)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_drawn)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _unwrap(self, obj: Any) -> Any:
        return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def _epoch_started(self, engine: Engine) -> None:
        if self._iterator_pending:
            self._iterator_pending = False
            self._iterator_next(engine)

    def _iterator_next(self, engine: Engine, *_: Any, **__: Any) -> None:
        """Note the random state a new loader iterator is about to be made from (its sampler and worker seeds)."""
        loader = engine.state.dataloader
        generator = getattr(loader, "generator", None)
        epoch = getattr(getattr(loader, "sampler", None), "epoch", None)  # DistributedSampler shuffles by epoch
        self._loader_start = {
            "torch": torch.get_rng_state(),
            "generator": None if generator is None else generator.get_state(),
            "sampler_epoch": None if epoch is None else int(epoch),
        }
        self._consumed = 0

    def _batch_drawn(self, engine: Engine) -> None:
        self._consumed += 1

    def _random_state(self, engine: Engine) -> dict[str, Any]:
        """This process's random states, in a form ``torch.load(weights_only=True)`` reads."""
        generator = getattr(engine.state.dataloader, "generator", None)
        return {
            "torch": torch.get_rng_state(),
            # the current device only: touching the others would make a CUDA context on each, in every DDP process;
            # none before CUDA is used (its seed is still pending then, and stays so in the resumed run)
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
            "numpy": _numpy_state(np.random.get_state()),
            "python": random.getstate(),
            "transforms": [_numpy_state(t.R.get_state()) for t in self.randomizables],
            "generator": None if generator is None else generator.get_state(),
            "loader": None if self._loader_start is None else {**self._loader_start, "consumed": self._consumed},
        }

    def save(self, engine: Engine) -> None:
        randoms = _gather(self._random_state(engine))  # a collective: every rank calls it
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return
        state = {name: self._unwrap(obj).state_dict() for name, obj in self.objects.items()}
        state["progress"] = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "time_budget_elapsed": float(getattr(engine.state, "time_budget_elapsed", 0.0)),  # TimeBudget's clock
        }
        state["random"] = randoms
        if self.evaluator is not None:
            state["evaluator"] = {
                "best_metric": _plain(getattr(self.evaluator.state, "best_metric", -1)),
                "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
            }
        if self.savers:
            state["savers"] = [_saver_state(saver) for saver in self.savers]
        scaler = getattr(engine, "g_scaler", None)
        if scaler is not None and scaler.is_enabled():
            state["g_scaler"] = scaler.state_dict()
        atomic_torch_save(self.path, _on_cpu(state))

    def load(self, engine: Engine) -> None:
        self._loader_start, self._consumed, self._iterator_pending = None, 0, True
        for stale in remove_stale_temporaries(self.path.parent):
            logger.warning(f"removed {stale}, left by a run killed while saving")
        if not self.resume:
            return
        if not self.path.is_file():
            logger.warning(f"resume requested but {self.path} does not exist: training starts from scratch")
            return
        state = read_checkpoint(self.path)
        missing = [name for name in self.objects if name not in state]
        if missing:
            raise ValueError(f"resume checkpoint {self.path} lacks {missing}; it has {sorted(state)}.")
        for name, obj in self.objects.items():
            self._unwrap(obj).load_state_dict(state[name])
        iteration = int(state["progress"]["iteration"])
        epoch_length = engine.state.epoch_length
        engine.state.iteration = iteration
        engine.state.time_budget_elapsed = float(state["progress"].get("time_budget_elapsed", 0.0))
        # completed epochs, as ignite counts them on resume: a run that stopped mid-epoch (time budget) finishes it
        engine.state.epoch = iteration // epoch_length if epoch_length else int(state["progress"]["epoch"])
        skipped = []
        if "evaluator" in state and self.evaluator is not None:
            self.evaluator.state.best_metric = state["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]
        elif self.evaluator is not None:
            skipped.append("the best validation metric")
        if "savers" in state and len(state["savers"]) == len(self.savers):
            for saver, checkpoints in zip(self.savers, state["savers"]):
                for name, checkpoint_state in checkpoints.items():
                    if getattr(saver, name, None) is not None:
                        getattr(saver, name).load_state_dict(checkpoint_state)
        elif self.savers:
            skipped.append("the best-model records of the checkpoint savers")
        scaler = getattr(engine, "g_scaler", None)
        if "g_scaler" in state and scaler is not None and scaler.is_enabled():
            scaler.load_state_dict(state["g_scaler"])
        randoms = self._this_rank(state.get("random"))
        if randoms is None:
            skipped.append("the random states (shuffles and patches differ from an uninterrupted run)")
        else:
            self._position_loader(engine, randoms.get("loader"), iteration)
            skipped += self._set_random_state(engine, randoms)
        if skipped:
            logger.warning(f"resume checkpoint {self.path} has no (usable) {'; '.join(skipped)}: not restored")
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def _this_rank(self, entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        if not entries:
            return None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        if len(entries) != world:
            logger.warning(f"{self.path} holds the random states of {len(entries)} process(es), resumed with {world}")
        return entries[rank] if rank < len(entries) else entries[0]

    def _position_loader(self, engine: Engine, loader_state: dict[str, Any] | None, iteration: int) -> None:
        """Remake the loader iterator the saved run was drawing from and skip the batches it had drawn, so that an
        epoch that ended part-way through a pass continues that pass (same order, same worker seeds)."""
        loader = engine.state.dataloader
        if loader is None or loader_state is None:
            return
        consumed = int(loader_state["consumed"])
        length = len(loader) if isinstance(loader, Sized) else None
        if length is not None and consumed >= length:
            return  # pass finished: ignite makes the next iterator from the restored state, as the saved run would
        torch.set_rng_state(loader_state["torch"])
        generator = getattr(loader, "generator", None)
        if generator is not None and loader_state.get("generator") is not None:
            generator.set_state(loader_state["generator"])
        sampler = getattr(loader, "sampler", None)
        if loader_state.get("sampler_epoch") is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(loader_state["sampler_epoch"])
        iterator = iter(loader)
        try:
            if isinstance(iterator, _SingleProcessDataLoaderIter) and not isinstance(loader.dataset, IterableDataset):
                # indices only: loading and augmenting the skipped batches is wasted, their random states are restored
                for _ in range(consumed):
                    iterator._next_index()
                iterator._num_yielded += consumed
            else:
                for _ in range(consumed):
                    next(iterator)
        except StopIteration:
            return
        # ignite's own resume would make a fresh iterator: hand it this one, and the position within the epoch
        engine._dataloader_iter = iterator
        engine._init_iter = iteration % engine.state.epoch_length if engine.state.epoch_length else 0
        self._loader_start = {key: value for key, value in loader_state.items() if key != "consumed"}
        self._consumed, self._iterator_pending = consumed, False

    def _set_random_state(self, engine: Engine, randoms: dict[str, Any]) -> list[str]:
        """Restore this process's random states; return what could not be restored."""
        skipped = []
        torch.set_rng_state(randoms["torch"])
        if randoms.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(randoms["cuda"])
        elif randoms.get("cuda") is not None:
            skipped.append("CUDA random state (no CUDA here)")
        np.random.set_state(_numpy_tuple(randoms["numpy"]))
        random.setstate(randoms["python"])
        transforms = randoms.get("transforms", [])
        if len(transforms) == len(self.randomizables):
            for transform, transform_state in zip(self.randomizables, transforms):
                transform.R.set_state(_numpy_tuple(transform_state))
        else:
            skipped.append(f"states for the {len(self.randomizables)} random transforms (it has {len(transforms)})")
        generator = getattr(engine.state.dataloader, "generator", None)
        if generator is not None and randoms.get("generator") is not None:
            generator.set_state(randoms["generator"])
        return skipped


def _randomizables(root: Any) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` reachable from ``root`` (a transform, a dataset with ``transform``, or a list of
    them), each once, in a fixed depth-first order. Nested ones count: ``RandCropByPosNegLabeld`` draws from its inner
    ``cropper``'s generator, not its own."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        if isinstance(obj, (list, tuple)):
            children = list(obj)
        elif isinstance(obj, Mapping):
            children = list(obj.values())
        elif isinstance(obj, (Transform, Randomizable)):
            children = list(vars(obj).values())
        elif isinstance(obj, Dataset) and hasattr(obj, "transform"):
            children = [obj.transform]
        else:
            return
        for child in children:
            visit(child)

    if root is not None:
        visit(root)
    return found


def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` outside torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _numpy_state(state: tuple) -> dict[str, Any]:
    """A legacy numpy ``RandomState`` state, without numpy arrays (``torch.load(weights_only=True)`` refuses them)."""
    kind, key, position, has_gauss, cached_gaussian = state
    return {
        "kind": kind,
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_tuple(state: dict[str, Any]) -> tuple:
    key = state["key"].numpy().astype(np.uint32)
    return state["kind"], key, state["pos"], state["has_gauss"], state["cached_gaussian"]


def _plain(value: Any) -> Any:
    """A Python number for a 0-d tensor or numpy scalar (which ``torch.load(weights_only=True)`` refuses)."""
    return value.item() if isinstance(value, (torch.Tensor, np.generic)) else value


def _saver_state(saver: Any) -> dict[str, dict[str, list]]:
    """The ``(priority, filename)`` records of the ignite ``Checkpoint``s inside a MONAI ``CheckpointSaver``."""
    checkpoints = {name: getattr(saver, name, None) for name in _SAVER_CHECKPOINTS}
    return {
        name: {key: [(_plain(p), str(f)) for p, f in items] for key, items in checkpoint.state_dict().items()}
        for name, checkpoint in checkpoints.items()
        if checkpoint is not None
    }


def training_losses(output: Any) -> dict[str, float]:
    """The loss terms of a ``ConditionalGanTrainer`` output, decollated (a list of per-sample dicts, as MONAI's
    trackers expect) or not (one dict): the ``output_transform`` of the stats, TensorBoard and tracking handlers."""
    item = output[0] if isinstance(output, list) else output
    return {key: float(item[key]) for key in GanKeys.LOSSES if key in item}


class DeployedWeights:
    """The weights a bundle ships in ``models/model.pt``: ``network``'s flat state dict as deployed, a DDP wrapper
    removed and every spectral-norm parametrisation folded into its weight
    (``custom_nets.networks.layers.fold_spectral_norm_state``), CPU tensors. It loads into ``inference.json``'s
    ``network_def`` (``fold_spectral_norm``: plain convolutions, scriptable) and so into MONAI's ``ckpt_export``,
    MONAI Label and the Model Zoo's checks, which copy weights by name. Give it to a checkpoint saver's
    ``save_dict`` in place of the network."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, torch.Tensor]:
        network = getattr(self.network, "module", self.network)
        return _on_cpu(fold_spectral_norm_state(network.state_dict(), network))


class FinalWeightsSaver:
    """At the end of training (ignite ``Events.COMPLETED``), save ``network``'s deployed weights
    (``DeployedWeights``) to ``path`` atomically: the weights a fixed-budget comparison scores, where no validation
    selects a model (``custom_nets.evaluation.pipeline``). An empty ``path`` saves nothing. Rank 0 only under DDP."""

    def __init__(self, path: str | os.PathLike, network: torch.nn.Module) -> None:
        self.path, self.network = str(path), network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.path and _rank() == 0:
            atomic_torch_save(self.path, DeployedWeights(self.network).state_dict())


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


class _AtomicSaveHandler:
    """An ignite save handler that writes each checkpoint atomically (``custom_nets.io.atomic_torch_save``) under a
    fixed ``filename`` when one is given, and never deletes that fixed file: the next save replaces it in one rename,
    where MONAI's handler deletes the old best model first and then writes the new one in place."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname, self.filename = Path(dirname), filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not torch.distributed.is_available() or not torch.distributed.is_initialized() or _rank() == 0:
            # CPU tensors: the file loads (and exports) on a machine without the GPU it was trained on
            atomic_torch_save(self.dirname / (self.filename or filename), _on_cpu(checkpoint))

    def remove(self, filename: str) -> None:
        if self.filename is None and (not torch.distributed.is_initialized() or _rank() == 0):
            (self.dirname / filename).unlink(missing_ok=True)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose every file (best model, interval and final checkpoints) is
    written atomically with the permissions of a plain ``open`` and never deleted before its replacement exists: a
    run killed during a save keeps the previous file. Stale temporaries of killed runs are removed at construction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in _SAVER_CHECKPOINTS:
            checkpoint = getattr(self, name, None)
            if checkpoint is not None:
                handler = checkpoint.save_handler
                checkpoint.save_handler = _AtomicSaveHandler(self.save_dir, getattr(handler, "filename", None))
        for stale in remove_stale_temporaries(self.save_dir):
            logger.warning(f"removed {stale}, left by a run killed while saving")


def _on_cpu(state: Any) -> Any:
    """``state`` with every tensor moved to the CPU (containers rebuilt, other values kept)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, Mapping):
        return type(state)((key, _on_cpu(value)) for key, value in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(value) for value in state)
    return state


def _first_weight(state: Mapping[str, Any]) -> tuple[str, torch.Tensor] | None:
    """The first convolution weight of a generator state dict (its input channels are dimension 1)."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 3 and key.endswith(("weight.original", "weight")):
            return key, value
    return None


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) whose errors name the checkpoint and say what does not fit: an
    unreadable file (``custom_nets.io.read_checkpoint``), or weights trained for another number of input channels
    (other ``input_keys``, or ``per_voxel_prior`` switched) or another network.

    Raises:
        FileNotFoundError, ValueError: when the checkpoint is loaded (at ``Events.STARTED``).
    """

    def __call__(self, engine: Engine) -> None:
        checkpoint = read_checkpoint(self.load_path, self.map_location)  # names the file when unreadable
        try:
            super().__call__(engine)
        except RuntimeError as error:
            if "size mismatch" not in str(error) and "Missing key" not in str(error):
                raise
            raise ValueError(self._explain(checkpoint, str(error))) from None

    def _explain(self, checkpoint: Mapping, error: str) -> str:
        name, network = next(iter(self.load_dict.items()))
        state = checkpoint.get(name, checkpoint) if isinstance(checkpoint, Mapping) else {}
        saved, current = _first_weight(state), _first_weight(getattr(network, "state_dict", dict)())
        if saved is not None and current is not None and saved[1].shape[1] != current[1].shape[1]:
            return (
                f"checkpoint {self.load_path} was trained with {saved[1].shape[1]} input channels, but this config "
                f"gives the network {current[1].shape[1]} (one per input key, plus one with per_voxel_prior). Use "
                "the input_keys, per_voxel_prior and residual_on_prior it was trained with."
            )
        first = error.strip().splitlines()[1:2] or error.strip().splitlines()[:1]
        return (
            f"checkpoint {self.load_path} does not fit network_def ({first[0].strip()[:300]}); use the network "
            "settings (preset, channels, attention, spectral_norm, residual_on_prior) it was trained with."
        )
