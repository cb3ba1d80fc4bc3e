# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Train one bundle configuration for a fixed number of iterations and synthesise a split with the bundle's own
inference workflow: the building block of the comparison and ablation runs (``benchmarks/paper_table.py``) and of
the real-template case (``benchmarks/real_case.py``).

Every model of a comparison gets the same budget: either the same wall-clock minutes on the same machine (equal
compute; the iterations each model reached are recorded) or the same iterations, and the same patch size, patches per
iteration, seed and learning-rate schedule (a cosine over the budget); no model selection on validation data (the
final weights are used), so that the only difference between runs is the model overlay.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import torch

from custom_nets.io import atomic_write_bytes, atomic_write_json

__all__ = ["CONFIGS", "RunSettings", "train_and_infer"]

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"


class RunSettings(dict):
    """The budget shared by every run of a comparison (stored beside each run, to reuse finished runs): ``iterations``
    or wall-clock ``minutes``; ``patch_size`` (cube edge), ``batch_size``, ``num_samples`` and ``sw_overlap`` set to
    ``None`` keep ``train.json``'s and ``inference.json``'s defaults."""

    def __init__(
        self,
        iterations: int = 0,
        minutes: float = 0.0,
        patch_size: int | None = 32,
        batch_size: int | None = 2,
        num_samples: int | None = 2,
        seed: int = 0,
        sw_overlap: float | None = 0.25,
    ) -> None:
        if (iterations >= 1) == (minutes > 0):
            raise ValueError(
                f"give either iterations >= 1 or minutes > 0, got iterations {iterations}, minutes {minutes}."
            )
        super().__init__(
            iterations=int(iterations),
            minutes=float(minutes),
            patch_size=None if patch_size is None else int(patch_size),
            batch_size=None if batch_size is None else int(batch_size),
            num_samples=None if num_samples is None else int(num_samples),
            seed=int(seed),
            sw_overlap=None if sw_overlap is None else float(sw_overlap),
        )


def _overlays(task: str, model_overlays: list[str | Path]) -> list[str]:
    files = [CONFIGS / "tasks" / f"{task}.json"] + [Path(p) for p in model_overlays]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"config overlay {path} does not exist.")
    return [str(p) for p in files]


def train_and_infer(
    task: str,
    model_overlays: list[str | Path],
    datalist: str | Path,
    out_dir: str | Path,
    settings: RunSettings,
    split: str = "test",
    overrides: dict | None = None,
    reuse: bool = True,
    model_selection: bool = False,
) -> dict:
    """Train ``train.json`` + the task overlay + ``model_overlays`` for ``settings["iterations"]`` iterations or
    ``settings["minutes"]`` of wall-clock time, save the final generator to ``out_dir/models/`` and synthesise
    ``split`` into ``out_dir/predictions``.

    With ``model_selection`` the run validates as the bundle's default command does (every ``val_interval`` epochs of
    ``epoch_length`` iterations) and synthesises with the best validation checkpoint instead of the final weights.

    Returns (and writes to ``out_dir/run.json``) the settings, the iterations run, the training seconds and seconds
    per iteration. A finished run with identical settings and config files is reused when ``reuse`` is true.
    """
    from monai.bundle import ConfigWorkflow

    out_dir, datalist = Path(out_dir).absolute(), Path(datalist).absolute()
    overlays = _overlays(task, model_overlays)
    record_path = out_dir / "run.json"
    # the configs' content belongs to the identity: a changed default must not reuse runs made under the old one
    digest = hashlib.sha256()
    for path in [CONFIGS / "train.json", CONFIGS / "inference.json", *map(Path, overlays)]:
        digest.update(Path(path).read_bytes())
    identity = {
        "task": task,
        "overlays": [Path(p).name for p in overlays],
        "configs_sha256": digest.hexdigest()[:16],
        **settings,
        **(overrides or {}),
        **({"model_selection": True} if model_selection else {}),
    }
    if reuse and record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("identity") == identity and (out_dir / "predictions").is_dir():
            return record

    if settings["minutes"] > 0:
        # the time budget ends the run (epochs of train.json's epoch_length); the cosine follows the elapsed fraction
        budget = {"epochs": 10**6, "time_budget_minutes": settings["minutes"]}
    else:
        budget = {"epochs": 1, "epoch_length": settings["iterations"], "time_budget_minutes": 0}
    common = {"bundle_root": str(out_dir), "datalist": str(datalist), "dataset_dir": str(datalist.parent)}
    if settings["patch_size"] is not None:
        common["patch_size"] = [settings["patch_size"]] * 3
    if settings["sw_overlap"] is not None:
        common["sw_overlap"] = settings["sw_overlap"]
    batch = {k: settings[k] for k in ("batch_size", "num_samples") if settings[k] is not None}
    # overrides of training-only ids (the discriminator, loss weights) do not exist in inference.json
    inference_ids = set(json.loads((CONFIGS / "inference.json").read_text(encoding="utf-8")))
    infer_overrides = {k: v for k, v in (overrides or {}).items() if k.split("#")[0] in inference_ids}
    logging_file = str(CONFIGS / "logging.conf")
    train = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json")] + overlays,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=logging_file,
        workflow_type="train",
        **{
            **budget,
            # no model selection: every model is scored with its final weights
            **({} if model_selection else {"val_interval": budget["epochs"] + 1}),
            **batch,
            "seed": settings["seed"],
            "progress_bar": False,
            **common,
            **(overrides or {}),
        },
    )
    train.initialize()
    trainer = train.parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    train.run()
    seconds = time.perf_counter() - start
    ckpt_name = train.parser.get_parsed_content("ckpt_name")
    if not (model_selection and (out_dir / "models" / ckpt_name).is_file()):  # else the best checkpoint is there
        network = train.parser.get_parsed_content("validation_network")  # the weight average when ema_decay > 0
        weights = getattr(network, "module", network).state_dict()
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        atomic_write_bytes(out_dir / "models" / ckpt_name, buffer.getvalue())
    iterations = trainer.state.iteration
    train.finalize()

    shutil.rmtree(out_dir / "predictions", ignore_errors=True)  # a former run's files would be scored as this one's
    infer = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json")] + overlays,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=logging_file,
        workflow_type="infer",
        **{"output_dir": str(out_dir / "predictions"), "split": split, **common, **infer_overrides},
    )
    infer.initialize()
    start_infer = time.perf_counter()
    infer.run()
    infer_seconds = time.perf_counter() - start_infer
    infer.finalize()
    record = {
        "identity": identity,
        "iterations": iterations,
        "epochs": trainer.state.epoch,
        "train_seconds": seconds,
        "seconds_per_iteration": seconds / max(iterations, 1),
        "infer_seconds": infer_seconds,
        "checkpoint": str(out_dir / "models" / ckpt_name),
        "predictions": str(out_dir / "predictions"),
    }
    atomic_write_json(record_path, record)
    return record
