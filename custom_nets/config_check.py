# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Validate a bundle configuration before anything runs: the first ``initialize`` expression of ``train.json`` and
``inference.json`` calls ``check_settings``, so a typo in an id, an unknown task or a patch size the generator cannot
take stops the run at once with one message naming the id and the value, instead of training on defaults."""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from custom_nets.inferers import BLEND_MODES

__all__ = ["check_settings", "unknown_cli_ids", "parse_overrides", "TASK_NAME", "SETTING_RULES"]

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _config_files(argv: Sequence[str]) -> list[Path]:
    """The files named by ``--config_file`` (a path, or a list as ``['a.json','b.json']``)."""
    for index, token in enumerate(argv):
        value = None
        if token == "--config_file" and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith("--config_file="):
            value = token.split("=", 1)[1]
        if value is not None:
            return [Path(p.strip(" '\"")) for p in value.strip("[]").split(",") if p.strip(" '\"")]
    return []


def _ids_of(path: Path) -> set[str]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(content) if isinstance(content, dict) else set()


def _tracking_ids(argv: Sequence[str]) -> set[str]:
    """Top-level ids that ``--tracking`` adds at run time (``monai.bundle.run`` patches the bundle with the ``configs``
    of MONAI's settings for a name such as ``mlflow``, or of the settings file given), so ``--tracking_uri`` and
    ``--experiment_name`` are the bundle's ids when tracking is on."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    for index, token in enumerate(argv):
        if token == "--tracking" and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith("--tracking="):
            value = token.split("=", 1)[1]
        else:
            continue
        if value in DEFAULT_EXP_MGMT_SETTINGS:
            settings = DEFAULT_EXP_MGMT_SETTINGS[value]
        else:
            try:
                settings = json.loads(Path(value).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return set()  # MONAI itself reports a tracking file it cannot read
        configs = settings.get("configs", {}) if isinstance(settings, dict) else {}
        return set(configs) if isinstance(configs, dict) else set()
    return set()


def _cli_ids(argv: Sequence[str]) -> set[str]:
    """Top-level ids set by ``--id`` arguments of a ``monai.bundle`` command line (none for any other program)."""
    if not argv or not argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return set()
    return {token[2:].split("=", 1)[0].split("#", 1)[0] for token in argv[1:] if token.startswith("--")}


def unknown_cli_ids(argv: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
    """``--id`` arguments of a ``python -m monai.bundle run …`` command line that name no top-level id of the configs
    given (``--lambda_adv`` with ``inference.json`` alone would be ignored), nor an argument of ``monai.bundle.run``,
    nor an id that ``--tracking`` adds; each with its closest known ids. Nested ids (``a#b``) are checked by their first
    part. Any other command line (tests, Python API) gives an empty list."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return []
    files = _config_files(argv)
    if not files:
        return []
    from monai.bundle.scripts import run

    known = set(inspect.signature(run).parameters) | _tracking_ids(argv)
    for path in files:  # only the configs given: MONAI adds an id no config defines and nothing reads it
        known |= _ids_of(path)
    unknown = []
    for token in argv[1:]:
        if not token.startswith("--") or len(token) <= 2:
            continue
        name = token[2:].split("=", 1)[0].split("#", 1)[0]
        if name not in known:
            unknown.append((token[2:].split("=", 1)[0], difflib.get_close_matches(name, sorted(known), n=3)))
    return unknown


def check_settings(
    task: str,
    patch_size: Sequence[int],
    size_divisor: int = 1,
    tasks_dir: str | Path | None = None,
    argv: Sequence[str] | None = None,
    files: Mapping[str, str | Path] | None = None,
    discriminator_roi_size: Sequence[int] | int | None = None,
    task_ids: Mapping[str, object] | None = None,
    model_variant: str = "scgan",
    settings: Mapping[str, object] | None = None,
    task_overrides: Sequence[str] = (),
) -> bool:
    """Raise one ``ValueError`` naming the id and value when the configuration cannot be what the user meant.

    Checks: every ``--id`` of a ``monai.bundle run`` command line is an id of the bundle (``--patch_sizee`` would
    otherwise be ignored); ``task`` is a plain name (it names files: ``models/model_<task>.pt``) with an overlay
    ``tasks/<task>.json`` when ``tasks_dir`` is given, and that overlay was applied: each of ``task_ids`` (the
    config's values of ids that define a task, e.g. ``target_key``, ``out_act``) equals the overlay's value unless the
    id is set on the command line or named in ``task_overrides`` (the ids another entry point sets on purpose, e.g.
    ``custom_nets.predict --degrade-factor``; ``--task fa`` with ``train.json`` alone would otherwise train the PET
    defaults under the name fa); ``model_variant`` is a plain name (a comparison model's weights go to
    ``models/<model_variant>``); ``patch_size`` is a list of positive integers, each a multiple of the generator's
    ``size_divisor`` (``prod(strides)``); ``discriminator_roi_size`` is null, a positive integer or one positive
    integer per dimension of ``patch_size``; every non-empty path of ``files`` (``{id: path}``, e.g.
    ``teacher_weights``) is an existing file; each value of ``settings`` (``{id: value}``, the config's
    ``checked_settings``) is one ``SETTING_RULES`` accepts, so that ``--sw_mode gausian`` or ``--val_interval 0`` fails
    before the prior is fitted or anything is written, rather than an epoch into training or deep inside ignite; no
    id of the command line has the value ``null`` (fire passes it as the text 'null': write ``None``).

    The configs call it after ``set_determinism``: reading ``size_divisor`` builds ``network_def``, whose weights
    must come from the seeded random state.

    Returns:
        True (so that it can stand in a config's ``initialize`` list).

    Raises:
        ValueError: the first problem found, with the accepted values or the closest known id.
        FileNotFoundError: a path of ``files`` does not exist (the message names the id and the path).
    """
    unknown = unknown_cli_ids(argv)
    if unknown:
        lines = [
            f"--{name}: no such id in the bundle's configs" + (f" (did you mean {', '.join(close)}?)" if close else "")
            for name, close in unknown
        ]
        raise ValueError("; ".join(lines) + ". Nothing was run.")
    nulls = _null_on_command_line(list(sys.argv if argv is None else argv))
    if nulls:
        raise ValueError(
            f"--{nulls[0]} null: on the command line write None (fire passes null as the text 'null'). Nothing was run."
        )
    if not isinstance(task, str) or not TASK_NAME.match(task):
        raise ValueError(f"task {task!r}: expected a plain name of letters, digits, '_' or '-' (it names files).")
    if not isinstance(model_variant, str) or not TASK_NAME.match(model_variant):
        raise ValueError(
            f"model_variant {model_variant!r}: expected a plain name of letters, digits, '_' or '-' (it names the "
            "folder models/<model_variant>)."
        )
    if tasks_dir is not None:
        tasks = sorted(p.stem for p in Path(tasks_dir).glob("*.json"))
        if tasks and task not in tasks:
            raise ValueError(
                f"task {task!r} has no overlay {Path(tasks_dir) / (task + '.json')}; known tasks: {tasks}. Select a "
                "task with its overlay (--config_file \"['configs/train.json','configs/tasks/fa.json']\"), or add one."
            )
        overlay_path = Path(tasks_dir) / f"{task}.json"
        overlay = json.loads(overlay_path.read_text(encoding="utf-8")) if overlay_path.is_file() else {}
        on_command_line = _cli_ids(list(sys.argv if argv is None else argv))
        for name, value in (task_ids or {}).items():
            deliberate = name in on_command_line or name in task_overrides
            if name in overlay and not deliberate and value != overlay[name]:
                raise ValueError(
                    f"task {task!r}: {name} is {value!r}, but the task's overlay {overlay_path} sets "
                    f"{overlay[name]!r}: the overlay is not among the configs, or a later one overrides it. Give it "
                    "(--config_file "
                    f"\"['configs/train.json','configs/tasks/{task}.json']\"), or set --{name} on the command line "
                    "(from Python: list it in the id task_overrides) to override it on purpose."
                )
    if isinstance(patch_size, (str, bytes)) or not isinstance(patch_size, Sequence) or not patch_size:
        raise ValueError(f"patch_size {patch_size!r}: expected a list of positive integers, e.g. [64,64,64].")
    if not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch_size):
        raise ValueError(f"patch_size {list(patch_size)!r}: expected positive integers, e.g. [64,64,64].")
    if len(patch_size) != 3:  # the volumes are 3D for every model, the slice-wise 2D cGAN included
        raise ValueError(f"patch_size {list(patch_size)!r}: expected 3 sizes (the volumes are 3D), e.g. [64,64,64].")
    bad = [p for p in patch_size if p % size_divisor]
    if bad:
        fitting = [max(size_divisor, p // size_divisor * size_divisor) for p in patch_size]
        raise ValueError(
            f"patch_size {list(patch_size)}: every size must be a multiple of {size_divisor} (the generator's "
            f"prod(strides)), e.g. {fitting}."
        )
    if discriminator_roi_size is not None:
        roi = [discriminator_roi_size] if isinstance(discriminator_roi_size, int) else discriminator_roi_size
        valid = isinstance(roi, Sequence) and not isinstance(roi, (str, bytes))
        valid = valid and (isinstance(discriminator_roi_size, int) or len(roi) == len(patch_size))
        if not valid or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in roi):
            raise ValueError(
                f"discriminator_roi_size {discriminator_roi_size!r}: expected null (D judges the whole patch), a "
                f"positive integer or {len(patch_size)} of them (one per dimension of patch_size {list(patch_size)}), "
                "e.g. 32."
            )
    _check_values(settings or {})
    for name, path in (files or {}).items():
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{name} {str(path)!r}: no such file. Give the path of an existing file.")
    return True


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rule(accepts: Callable[[object], bool], description: str) -> tuple[Callable[[object], bool], str]:
    return accepts, description


_POSITIVE_INTEGER = _rule(lambda v: _integer(v) and v > 0, "a positive integer")
_NON_NEGATIVE = _rule(lambda v: _number(v) and v >= 0, "a number >= 0")
_POSITIVE = _rule(lambda v: _number(v) and v > 0, "a number > 0")
_FRACTION = _rule(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
_PROBABILITY = _rule(lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
_BOOLEAN = _rule(lambda v: isinstance(v, bool), "True or False")
_LIMIT = _rule(lambda v: v is None or (_integer(v) and v > 0), "None (every entry) or a positive integer")


def _choices(*names: str) -> tuple[Callable[[object], bool], str]:
    return _rule(lambda v: v in names, f"one of {list(names)}")


# What each scalar id of the configs accepts (the ids a config passes to ``check_settings(settings=...)``); a wrong
# value would otherwise fail deep inside MONAI or ignite without naming the id, often an epoch into training, or be
# used silently (``epochs`` 1.5, ``augmentation_prob`` 2).
SETTING_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": _POSITIVE_INTEGER,
    "epoch_length": _POSITIVE_INTEGER,
    "val_interval": _POSITIVE_INTEGER,
    "num_samples": _POSITIVE_INTEGER,
    "batch_size": _POSITIVE_INTEGER,
    "val_batch_size": _POSITIVE_INTEGER,
    "d_steps": _POSITIVE_INTEGER,
    "adversarial_interval": _POSITIVE_INTEGER,
    "seed": _rule(lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "num_workers": _rule(lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "train_limit": _LIMIT,
    "val_limit": _LIMIT,
    "time_budget_minutes": _rule(lambda v: _number(v) and v >= 0, "a number of minutes >= 0 (0: no budget)"),
    "lr_g": _POSITIVE,
    "lr_d": _POSITIVE,
    "lambda_adv": _NON_NEGATIVE,
    "lambda_fm": _NON_NEGATIVE,
    "lambda_l1": _NON_NEGATIVE,
    "lambda_rmse": _NON_NEGATIVE,
    "lambda_distill_output": _NON_NEGATIVE,
    "lambda_distill_feature": _NON_NEGATIVE,
    "instance_noise": _NON_NEGATIVE,
    "adversarial_start": _FRACTION,
    "ema_decay": _FRACTION,
    "augmentation_prob": _PROBABILITY,
    "cache_rate": _PROBABILITY,
    "degrade_factor": _rule(lambda v: _number(v) and v >= 1, "a number >= 1 (1: no degradation)"),
    "target_min": _rule(_number, "a number"),
    "target_max": _rule(_number, "a number"),
    "adversarial_criterion": _choices("least_squares", "bce", "hinge"),  # MONAI PatchAdversarialLoss
    "sw_mode": _choices(*BLEND_MODES),
    "sw_overlap": _rule(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.5"),
    "sw_batch_size": _POSITIVE_INTEGER,
    "sw_sigma_scale": _rule(
        lambda v: _number(v) and v > 0, "a positive number (the Gaussian mode's width), e.g. 0.125"
    ),
    "pixdim": _rule(
        lambda v: v is None
        or (isinstance(v, Sequence) and not isinstance(v, str) and all(_number(x) and x > 0 for x in v)),
        "None (the input's grid) or positive voxel sizes in mm, e.g. [1.0,1.0,1.0]",
    ),
    **{
        name: _BOOLEAN
        for name in (
            "amp",
            "resume",
            "spectral_norm",
            "attention",
            "use_discriminator",
            "per_voxel_prior",
            "residual_on_prior",
            "channels_last",
            "progress_bar",
            "fold_spectral_norm",
        )
    },
}


def _check_values(settings: Mapping[str, object]) -> None:
    """Raise a ValueError naming the first id of ``settings`` whose value ``SETTING_RULES`` refuses."""
    for name, value in settings.items():
        accepts, description = SETTING_RULES[name]
        if not accepts(value):
            close = difflib.get_close_matches(str(value), BLEND_MODES, n=1) if name == "sw_mode" else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name} {value!r}: expected {description}{hint}.")
    if {"target_min", "target_max"} <= set(settings) and not settings["target_min"] < settings["target_max"]:
        raise ValueError(
            f"target_min {settings['target_min']!r} and target_max {settings['target_max']!r}: expected "
            "target_min < target_max (the target's range in its unit)."
        )


def _null_on_command_line(argv: Sequence[str]) -> list[str]:
    """The ``--id`` arguments of a ``monai.bundle`` command line whose value is ``null``: fire reads it as the text
    'null', not JSON's null."""
    if not _cli_ids(argv):
        return []
    names = []
    for index, token in enumerate(argv):
        if not token.startswith("--") or len(token) <= 2:
            continue
        name, separator, value = token[2:].partition("=")
        if not separator:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if value.strip().lower() == "null":
            names.append(name)
    return names


def number_at_least(minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse ``type`` for a finite number >= ``minimum`` (> when not ``inclusive``): a bad value is refused by
    argparse naming the option (``--voxel-size 0: expected a number > 0``) instead of failing later in a traceback."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number {'>=' if inclusive else '>'} {minimum:g}")
        return value

    return parse


def parse_overrides(items: Sequence[str], option: str = "--override") -> dict:
    """``{id: value}`` from command-line items ``ID=JSON`` (a value that is not JSON is taken as a plain string), as
    ``python -m custom_nets.release --override`` and ``benchmarks/paper_table.py --override`` take them.

    Raises:
        ValueError: an item without ``=`` (the message names it and shows the form).
    """
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"{option} {item!r}: expected ID=JSON, e.g. network_def#channels=[16,32,64].")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a plain string
    return overrides
