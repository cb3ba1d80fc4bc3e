# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The one pipeline every experiment is a list of calls of: train a bundle configuration with a budget (validation
selection optional) → synthesise a split with the bundle's inference workflow → fit and predict the baselines without
deep learning → score everything inside the brain mask (``custom_nets.evaluation.evaluate``). ``make demo``,
``benchmarks/paper_table.py``, ``recipe.py``, ``tuning.py`` and ``real_case.py`` call these functions.

The configs are the only place that knows tasks and models: task settings are read with MONAI's ``ConfigParser`` from
``<bundle>/configs``, the bundle folder is always an explicit argument, and the final weights of a fixed-budget run
are saved by the config's ``FinalWeightsSaver`` handler (``final_weights_file``).

Every model of a comparison gets the same budget: either the same wall-clock minutes on the same machine (equal
compute; the iterations each model reached are recorded), or the iterations those minutes allow at each model's cost
per iteration measured with the models interleaved in one process (``interleaved_cost``: equal compute that a drift
of the machine's speed between runs cannot bias), or the same iterations, and the same patch size, patches per
iteration, seed and learning-rate schedule (a cosine over the budget); without ``model_selection`` there is no model
selection on validation data (the final weights are used), so that the only difference between runs is the model
overlay.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from custom_nets.evaluation.baselines import predict_split
from custom_nets.evaluation.evaluate import evaluate_predictions, noise_free_predictions
from custom_nets.io import atomic_write_json

if TYPE_CHECKING:
    from monai.bundle import ConfigWorkflow

__all__ = [
    "RunSettings",
    "configs_dir",
    "bundle_workflow",
    "task_settings",
    "model_overlays",
    "train_and_infer",
    "machine_speed_probe",
    "interleaved_iteration_seconds",
    "run_models",
    "run_baselines",
    "run_oracle",
    "compare",
]


def machine_speed_probe(repeats: int = 5) -> float:
    """Seconds for a fixed reference workload: one 3³ convolution, 16 → 16 channels on a 32³ map (fp32, seeded
    inputs), forward and backward, the median of ``repeats`` after one warm-up. The work never changes, so a change
    between two records measures the machine (clock, other tenants of the host), not a model: equal-wall-clock runs
    made one after another record it before and after training to show whether the machine's speed drifted between
    them (the same training ran 29 % slower three hours apart, ``bundle/docs/tuning.md``).

    Raises:
        ValueError: ``repeats`` is below 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    import torch  # the baselines and scoring in this module do not need torch

    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(1, 16, 32, 32, 32, generator=generator)
    weight = torch.randn(16, 16, 3, 3, 3, generator=generator).requires_grad_()
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.nn.functional.conv3d(maps, weight, padding=1).sum().backward()
        seconds.append(time.perf_counter() - start)
        weight.grad = None
    return float(statistics.median(seconds[1:]))


def configs_dir(bundle: str | Path) -> Path:
    """``<bundle>/configs``.

    Raises:
        FileNotFoundError: it has no ``train.json`` (the message names the folder).
    """
    configs = Path(bundle).absolute() / "configs"
    if not (configs / "train.json").is_file():
        raise FileNotFoundError(f"bundle {bundle}: no configs/train.json there; give the bundle folder (e.g. bundle).")
    return configs


def bundle_workflow(
    bundle: str | Path, config: str, overlays: Sequence[str | Path] = (), **overrides: object
) -> ConfigWorkflow:
    """A MONAI ``ConfigWorkflow`` of ``<bundle>/configs/<config>`` (``train.json``, ``inference.json``, ...) plus
    ``overlays`` (file paths) and config-id ``overrides``; its type is taken from the config's name."""
    from monai.bundle import ConfigWorkflow

    configs = configs_dir(bundle)
    workflow_type = "train" if config.startswith(("train", "multi_gpu")) else "infer"
    return ConfigWorkflow(
        config_file=[str(configs / config)] + [str(p) for p in overlays],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def _task_overlay(bundle: str | Path, task: str) -> Path:
    tasks = configs_dir(bundle) / "tasks"
    overlay = tasks / f"{task}.json"
    if not overlay.is_file():
        raise ValueError(f"unknown task {task!r}: expected one of {sorted(p.stem for p in tasks.glob('*.json'))}.")
    return overlay


def task_settings(bundle: str | Path, task: str, ids: Sequence[str] = ("target_key", "input_keys")) -> dict:
    """Config ids of ``inference.json`` + the task overlay, resolved by MONAI's ``ConfigParser``.

    Raises:
        ValueError: ``task`` has no overlay in ``<bundle>/configs/tasks`` (the message lists the tasks).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(configs_dir(bundle) / "inference.json"), str(_task_overlay(bundle, task))])
    return {key: parser.get_parsed_content(key) for key in ids}


def model_overlays(bundle: str | Path, model: str) -> list[Path]:
    """The overlays that turn ``train.json`` (SC-GAN) into ``model`` (``<bundle>/configs/models/<model>.json``).

    Raises:
        ValueError: no such model overlay.
    """
    if model == "scgan":
        return []
    overlay = configs_dir(bundle) / "models" / f"{model}.json"
    if not overlay.is_file():
        known = ["scgan"] + sorted(p.stem for p in overlay.parent.glob("*.json"))
        raise ValueError(f"unknown model {model!r}: expected one of {known}.")
    return [overlay]


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


def train_and_infer(
    bundle: str | Path,
    task: str,
    overlays: Sequence[str | Path],
    datalist: str | Path,
    out_dir: str | Path,
    settings: RunSettings,
    split: str = "test",
    overrides: dict | None = None,
    reuse: bool = True,
    model_selection: bool = False,
    outputs_root: str | Path | None = None,
) -> dict:
    """Train ``train.json`` + the task overlay + ``overlays`` for ``settings["iterations"]`` iterations or
    ``settings["minutes"]`` of wall-clock time, and synthesise ``split`` into ``out_dir/predictions`` with
    ``inference.json``.

    Without ``model_selection`` no validation runs and the final weights are scored (saved by the config's
    ``FinalWeightsSaver``). With it the run validates as the bundle's default command does (every ``val_interval``
    epochs of ``epoch_length`` iterations; an iteration budget is cut into epochs of about ``train.json``'s
    ``epoch_length``) and synthesises with the best validation checkpoint (the final weights when the budget ended
    before the first validation). Checkpoints go to ``<outputs_root>/models`` (``models/<model_variant>`` for a
    comparison model; default: ``out_dir``; the demo gives the bundle folder, so the user's trained model is where
    ``inference.json`` looks).

    Returns (and writes to ``out_dir/run.json``) the settings, the iterations run, the training seconds and seconds
    per iteration. A finished run with identical settings and config files is reused when ``reuse`` is true.

    Raises:
        ValueError: unknown task; FileNotFoundError: an overlay or the bundle's configs do not exist.
    """
    out_dir, datalist = Path(out_dir).absolute(), Path(datalist).absolute()
    outputs_root = Path(outputs_root).absolute() if outputs_root is not None else out_dir
    configs = configs_dir(bundle)
    overlays = [_task_overlay(bundle, task)] + [Path(p) for p in overlays]
    for path in overlays:
        if not path.is_file():
            raise FileNotFoundError(f"config overlay {path} does not exist.")
    record_path = out_dir / "run.json"
    # the configs' content belongs to the identity: a changed default must not reuse runs made under the old one
    digest = hashlib.sha256()
    for path in [configs / "train.json", configs / "inference.json", *overlays]:
        digest.update(path.read_bytes())
    identity = {
        "task": task,
        "overlays": [p.name for p in overlays],
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
    elif model_selection:  # validate every epoch_length iterations of train.json, as a time-budget run does
        per_epoch = int(json.loads((configs / "train.json").read_text(encoding="utf-8"))["epoch_length"])
        epochs = max(1, round(settings["iterations"] / per_epoch))
        budget = {
            "epochs": epochs,
            "epoch_length": math.ceil(settings["iterations"] / epochs),
            "time_budget_minutes": 0,
        }
    else:
        budget = {"epochs": 1, "epoch_length": settings["iterations"], "time_budget_minutes": 0}
    common, batch = _budget_overrides(settings, datalist, outputs_root)
    # the final weights: what a fixed-budget run scores, and the model of a run that ended before its first validation
    final_weights = out_dir / "final_weights.pt"
    final_weights.unlink(missing_ok=True)
    train = bundle_workflow(
        bundle,
        "train.json",
        overlays,
        **{
            **budget,
            # no model selection: every model is scored with its final weights
            **({} if model_selection else {"val_interval": budget["epochs"] + 1}),
            **batch,
            "seed": settings["seed"],
            "progress_bar": False,
            "final_weights_file": str(final_weights),
            **common,
            **(overrides or {}),
        },
    )
    train.initialize()
    trainer = train.parser.get_parsed_content("train#trainer")
    # where the config puts it: models/, or models/<model_variant>/ for a comparison model
    checkpoint = Path(train.parser.get_parsed_content("ckpt_dir")) / train.parser.get_parsed_content("ckpt_name")
    checkpoint.unlink(missing_ok=True)  # a former run's model must not pass for this run's selection
    probe_before = machine_speed_probe()
    start = time.perf_counter()
    train.run()
    seconds = time.perf_counter() - start
    probe_after = machine_speed_probe()
    if model_selection and checkpoint.is_file():  # the best validation checkpoint
        final_weights.unlink(missing_ok=True)
    else:
        final_weights.replace(checkpoint)
    iterations = trainer.state.iteration
    train.finalize()

    shutil.rmtree(out_dir / "predictions", ignore_errors=True)  # a former run's files would be scored as this one's
    # overrides of training-only ids (the discriminator, loss weights) do not exist in inference.json
    inference_ids = set(json.loads((configs / "inference.json").read_text(encoding="utf-8")))
    infer_overrides = {k: v for k, v in (overrides or {}).items() if k.split("#")[0] in inference_ids}
    infer = bundle_workflow(
        bundle,
        "inference.json",
        overlays,
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
        "probe_seconds": {"before": probe_before, "after": probe_after},
        "infer_seconds": infer_seconds,
        "checkpoint": str(checkpoint),
        "predictions": str(out_dir / "predictions"),
    }
    atomic_write_json(record_path, record)
    return record


def _budget_overrides(settings: RunSettings, datalist: Path, bundle_root: Path) -> tuple[dict, dict]:
    """(overrides every run of ``settings`` shares: paths, patch size, overlap; its batch ids)."""
    common = {"bundle_root": str(bundle_root), "datalist": str(datalist), "dataset_dir": str(datalist.parent)}
    if settings["patch_size"] is not None:
        common["patch_size"] = [settings["patch_size"]] * 3
    if settings["sw_overlap"] is not None:
        common["sw_overlap"] = settings["sw_overlap"]
    batch = {k: settings[k] for k in ("batch_size", "num_samples") if settings[k] is not None}
    return common, batch


def interleaved_iteration_seconds(
    bundle: str | Path,
    task: str,
    models: Sequence[str],
    datalist: str | Path,
    work_dir: str | Path,
    settings: RunSettings,
    overrides: dict | None = None,
    rounds: int = 6,
) -> dict[str, float]:
    """Seconds per training iteration of each of ``models``, measured in one process with their iterations interleaved.

    Every model's trainer is built from ``train.json`` + the task overlay + its model overlay with ``settings``' patch
    and batch sizes and ``overrides``, exactly as ``train_and_infer`` builds it; all of them then train on one batch of
    the training split, round after round, one iteration of each model per round (a first round to warm up, then
    ``rounds``), and each model's cost is the median of its rounds. A model whose discriminator does not join every
    iteration (``adversarial_interval`` k > 1 or ``adversarial_start`` s > 0) is timed in each round on one iteration
    of each kind, and its cost is their medians weighted by the share of the run's iterations that use D, (1 − s) / k
    (``schedule_progress`` counts iterations when the budget is in iterations). A drift of the machine's speed during
    the measurement reaches every model alike, so the ratios hold even where runs made one after another would not (the
    probe of ``machine_speed_probe`` varied 3× within one hour, ``bundle/docs/tuning.md``). Validation is not included:
    it costs every model the same. ``work_dir`` receives the fitted per-voxel prior and the configs' log folders, no
    weights.

    Returns:
        ``{model: seconds per iteration}``.

    Raises:
        ValueError: ``rounds`` below 1, an unknown model or task.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    datalist, work_dir = Path(datalist).absolute(), Path(work_dir).absolute()
    common, batch_ids = _budget_overrides(settings, datalist, work_dir)
    trainers, workflows, batch = {}, [], None
    for model in models:
        workflow = bundle_workflow(
            bundle,
            "train.json",
            [_task_overlay(bundle, task)] + model_overlays(bundle, model),
            **{
                "epochs": 1,
                "epoch_length": 1,
                "time_budget_minutes": 0,
                "cache_rate": 0.0,  # one batch is drawn: no need to load every training subject
                "seed": settings["seed"],
                "progress_bar": False,
                **batch_ids,
                **common,
                **(overrides or {}),
            },
        )
        workflow.initialize()
        workflows.append(workflow)
        trainers[model] = workflow.parser.get_parsed_content("train#trainer")
        if batch is None:  # the same patches for every model (one task, one preprocessing)
            batch = next(iter(trainers[model].data_loader))
    # the share of a run's iterations that train with D, for the models whose iterations come in two kinds
    adversarial_share = {
        model: (1.0 - trainer.adversarial_start) / trainer.adversarial_interval
        for model, trainer in trainers.items()
        if trainer.use_gan and (trainer.adversarial_interval > 1 or trainer.adversarial_start > 0)
    }
    seconds: dict[tuple[str, bool], list[float]] = {}
    for round_index in range(rounds + 1):
        for model, trainer in trainers.items():
            for with_d in (True, False) if model in adversarial_share else (trainer.use_gan,):
                trainer.adversarial_now = lambda with_d=with_d: with_d  # this round's kind of iteration
                start = time.perf_counter()
                trainer._iteration(trainer, batch)
                if round_index:  # round 0 warms up (allocations, kernel selection)
                    seconds.setdefault((model, with_d), []).append(time.perf_counter() - start)
    for workflow in workflows:
        workflow.finalize()
    median = {key: float(statistics.median(values)) for key, values in seconds.items()}
    return {
        model: (
            adversarial_share[model] * median[model, True] + (1 - adversarial_share[model]) * median[model, False]
            if model in adversarial_share
            else median[model, trainer.use_gan]
        )
        for model, trainer in trainers.items()
    }


def run_models(
    bundle: str | Path,
    task: str,
    models: Sequence[str],
    datalist: str | Path,
    out_dir: str | Path,
    settings: RunSettings,
    split: str = "test",
    score_mask_key: str = "mask",
    overrides: dict | None = None,
    model_selection: bool = False,
    log: Callable[[str], None] = print,
    interleaved_cost: bool = False,
) -> dict[str, dict]:
    """Train and score each model (``model_overlays``; ``overrides``: config ids for every run) in
    ``out_dir/<model>``; returns ``{model: {"run": run record, "scores": evaluate_predictions result}}``.

    With ``interleaved_cost`` and a budget in minutes, each model trains for ``round(minutes × 60 / cost)``
    iterations instead, its cost per iteration measured by ``interleaved_iteration_seconds`` (written to
    ``out_dir/iteration_costs.json`` and reused while the models, settings and overrides are the same); every run
    record then holds ``interleaved_seconds_per_iteration``.

    Raises:
        ValueError: ``interleaved_cost`` without a budget in minutes.
    """
    names = task_settings(bundle, task, ("target_key", "output_postfix"))
    target_key, postfix = names["target_key"], names["output_postfix"]  # sr writes <id>_sr for the target fa
    out_dir = Path(out_dir)
    budgets = {model: settings for model in models}
    costs: dict[str, float] = {}
    if interleaved_cost:
        if not settings.get("minutes"):
            raise ValueError("interleaved_cost converts a budget in minutes into iterations: give minutes > 0.")
        costs = _interleaved_costs(bundle, task, models, datalist, out_dir, settings, overrides, log)
        shared = {k: v for k, v in settings.items() if k not in ("iterations", "minutes")}
        budgets = {
            m: RunSettings(iterations=max(1, round(settings["minutes"] * 60 / costs[m])), **shared) for m in models
        }
    results = {}
    for model in models:
        run_settings = budgets[model]
        budget = (
            f"{run_settings['minutes']:g} min"
            if run_settings["minutes"]
            else f"{run_settings['iterations']} iterations"
        )
        log(f"[{task}] training {model} for {budget}")
        run = train_and_infer(
            bundle,
            task,
            model_overlays(bundle, model),
            datalist,
            out_dir / model,
            run_settings,
            split=split,
            overrides=overrides,
            model_selection=model_selection,
        )
        scores = evaluate_predictions(
            run["predictions"],
            datalist,
            target_key,
            split,
            out_dir / model / "scores",
            model,
            score_mask_key,
            postfix=postfix,
        )
        if costs:
            run = {**run, "interleaved_seconds_per_iteration": costs[model]}
        log(
            f"[{task}] {model}: NRMSE {scores['summary']['nrmse']['mean']:.4f}, "
            f"{run['seconds_per_iteration']:.2f} s/iteration"
        )
        results[model] = {"run": run, "scores": scores}
    return results


def _interleaved_costs(
    bundle: str | Path,
    task: str,
    models: Sequence[str],
    datalist: str | Path,
    out_dir: Path,
    settings: RunSettings,
    overrides: dict | None,
    log: Callable[[str], None],
) -> dict[str, float]:
    """``interleaved_iteration_seconds`` of ``models``, kept in ``out_dir/iteration_costs.json`` for reruns."""
    record_path = out_dir / "iteration_costs.json"
    identity = {"task": task, "models": list(models), **settings, **(overrides or {})}
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("identity") == identity:
            return record["seconds_per_iteration"]
    log(f"[{task}] measuring the cost per iteration of {', '.join(models)}, interleaved")
    costs = interleaved_iteration_seconds(
        bundle, task, models, datalist, out_dir / "iteration_costs", settings, overrides
    )
    atomic_write_json(
        record_path,
        {"identity": identity, "seconds_per_iteration": costs, "probe_seconds": machine_speed_probe()},
    )
    return costs


def run_baselines(
    datalist: str | Path,
    out_dir: str | Path,
    target_key: str,
    input_keys: Sequence[str],
    split: str = "test",
    score_mask_key: str = "mask",
) -> dict[str, dict]:
    """Fit the baselines on the training split, predict ``split`` and score it; returns ``{baseline: {"predictions":
    folder, "scores": evaluate_predictions result}}``."""
    folders = predict_split(datalist, target_key, out_dir, list(input_keys), split)
    return {
        name: {
            "predictions": str(folder),
            "scores": evaluate_predictions(
                folder, datalist, target_key, split, folder / "scores", name, score_mask_key
            ),
        }
        for name, folder in folders.items()
    }


def run_oracle(
    datalist: str | Path, out_dir: str | Path, target_key: str, split: str = "test", score_mask_key: str = "mask"
) -> dict:
    """Score the noise-free targets as predictions (``noise_free_predictions``): the oracle row."""
    folder = noise_free_predictions(datalist, target_key, out_dir, split)
    scores = evaluate_predictions(
        folder, datalist, target_key, split, Path(out_dir) / "scores", "oracle", score_mask_key
    )
    return {"predictions": str(folder), "scores": scores}


def compare(
    bundle: str | Path,
    task: str,
    datalist: str | Path,
    out_dir: str | Path,
    settings: RunSettings,
    models: Sequence[str] = ("scgan",),
    oracle: bool = False,
    split: str = "test",
    score_mask_key: str = "mask",
    overrides: dict | None = None,
    model_selection: bool = False,
    log: Callable[[str], None] = print,
    interleaved_cost: bool = False,
) -> dict:
    """One task's comparison: the oracle (with ``oracle``; synthetic data only), the baselines and the learned
    ``models``, each scored on ``split``, in ``out_dir/{oracle,baselines,<model>}``.

    Returns ``{"task", "target_key", "input_keys", "target_unit", "rows": {name: {"scores": ..., "predictions"
    or "run": ...}}}``, rows in the order oracle, baselines, models.
    """
    out_dir = Path(out_dir)
    result = {"task": task, **task_settings(bundle, task, ("target_key", "input_keys", "target_unit")), "rows": {}}
    target_key = result["target_key"]
    if oracle:
        result["rows"]["oracle"] = run_oracle(datalist, out_dir / "oracle", target_key, split, score_mask_key)
    result["rows"].update(
        run_baselines(datalist, out_dir / "baselines", target_key, result["input_keys"], split, score_mask_key)
    )
    learned = run_models(
        bundle,
        task,
        models,
        datalist,
        out_dir,
        settings,
        split,
        score_mask_key,
        overrides,
        model_selection,
        log,
        interleaved_cost,
    )
    for model, row in learned.items():
        row["predictions"] = row["run"]["predictions"]
    result["rows"].update(learned)
    return result
