# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Synthesise a task's map for new subjects with a trained bundle, in one command and without a datalist.

    python -m custom_nets.predict --bundle bundle --task pet --input DIR --output DIR
    python -m custom_nets.predict --bundle bundle --task fa --input DIR --output DIR --layout flat \\
        --key t1w='{subject}_T1w.nii.gz' --key flair='{subject}_FLAIR.nii.gz' --brain-extraction deepbet

``DIR`` is a BIDS dataset (``--layout pybids``: read with pybids, brain masks from ``derivatives/`` as
``desc-brain_mask``), a BIDS-like folder (``sub-XX/[ses-YY/]anat/sub-XX[_ses-YY]_T1w.nii.gz``, ``..._FLAIR...``,
an optional ``..._mask...``; ``.nii``, ``.nii.gz``, ``.mgz`` and the formats ITK reads) or a flat folder with
``--key`` patterns.
Every file is checked first (readable, 3D, finite, the subject's files on one grid); then ``inference.json`` with the
task's overlay runs over all subjects with a progress bar and writes ``sub-XX[_ses-YY]_<task>.nii.gz`` on each
subject's input grid, plus a JSON sidecar (task, weights and their SHA-256, bundle version, preprocessing, inputs).
The same through MONAI: ``python -m monai.bundle run inferring --config_file "['bundle/configs/inference.json',
'bundle/configs/tasks/pet.json']" --bundle_root bundle --input_dir DIR --output_dir OUT``.

Python: ``custom_nets.predict.predict(bundle, task, {"t1w": file, "flair": file}, out_dir)`` for one subject.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from custom_nets.config_check import number_at_least
from custom_nets.datasets.folders import DatalistError, folder_items, parse_key
from custom_nets.evaluation.pipeline import bundle_workflow, configs_dir, task_settings
from custom_nets.io import atomic_write_json, read_json, sha256_of

__all__ = ["predict", "predict_folder"]

# inference.json ids recorded in each sidecar: what the synthesis depends on besides the weights
RECORDED_IDS = (
    "task",
    "target_key",
    "target_unit",
    "input_keys",
    "ckpt_name",
    "brain_extraction",
    "intensity_normalization",
    "pixdim",
    "degrade_factor",
    "per_voxel_prior",
    "residual_on_prior",
    "patch_size",
    "sw_overlap",
    "sw_mode",
)


def _run(bundle: Path, task: str, items: list[dict], output_dir: Path, overrides: dict, progress: bool) -> list[Path]:
    """Run ``inference.json`` + the task overlay with ``overrides`` and write one sidecar per output."""
    from ignite.handlers import ProgressBar

    workflow = bundle_workflow(
        bundle,
        "inference.json",
        [configs_dir(bundle) / "tasks" / f"{task}.json"],
        # the caller's ids are deliberate: one that a task overlay also sets (sr's degrade_factor) may differ from it
        **{"bundle_root": str(bundle), "output_dir": str(output_dir), **overrides, "task_overrides": sorted(overrides)},
    )
    workflow.initialize()
    if progress:
        ProgressBar(persist=True, desc=f"{task} synthesis").attach(workflow.parser.get_parsed_content("evaluator"))
    workflow.run()
    settings = {key: workflow.parser.get_parsed_content(key) for key in RECORDED_IDS}
    postfix = workflow.parser.get_parsed_content("output_postfix")
    workflow.finalize()
    weights = bundle / "models" / settings["ckpt_name"]
    record = {
        "task": task,
        "bundle": str(bundle),
        "bundle_version": read_json(configs_dir(bundle) / "metadata.json", "bundle metadata", "").get("version"),
        "weights": str(weights),
        "weights_sha256": sha256_of(weights),
        "prior_sha256": sha256_of(bundle / "models" / f"prior_{task}.json") if settings["per_voxel_prior"] else None,
        "settings": settings,
    }
    outputs = []
    for item in items:
        output = output_dir / f"{item['id']}_{postfix}.nii.gz"
        mask = "datalist" if "mask" in item else settings["brain_extraction"]
        inputs = dict(zip(settings["input_keys"], item["image"]))
        atomic_write_json(output_dir / f"{item['id']}_{postfix}.json", {**record, "inputs": inputs, "brain_mask": mask})
        outputs.append(output)
    return outputs


def predict_folder(
    bundle: str | Path,
    task: str,
    input_dir: str | Path,
    output_dir: str | Path,
    layout: str = "bids",
    keys: Mapping[str, str] | None = None,
    brain_extraction: str | None = None,
    progress: bool = True,
    overrides: dict | None = None,
) -> list[Path]:
    """Synthesise every subject (and session) of ``input_dir``; returns the written files. ``overrides``: other
    ``inference.json`` ids (those the model was trained with, e.g. a smaller ``network_def``).

    Raises:
        DatalistError: every problem of the input folder, one line each (nothing is written then).
        ValueError: unknown task; FileNotFoundError: the bundle has no configs or no trained weights.
    """
    bundle, output_dir = Path(bundle).absolute(), Path(output_dir).absolute()
    input_keys = task_settings(bundle, task)["input_keys"]
    items = folder_items(input_dir, input_keys, layout, keys)  # every file checked before anything runs
    overrides = {**(overrides or {}), "input_dir": str(Path(input_dir).absolute()), "input_layout": layout}
    if keys:
        overrides["input_patterns"] = dict(keys)
    if brain_extraction:
        overrides["brain_extraction"] = brain_extraction
    return _run(bundle, task, items, output_dir, overrides, progress)


def predict(
    bundle: str | Path,
    task: str,
    inputs: Mapping[str, str | Path],
    output_dir: str | Path,
    mask: str | Path | None = None,
    subject: str = "sub-01",
    brain_extraction: str | None = None,
    overrides: dict | None = None,
) -> Path:
    """Synthesise one subject from its input files (``{"t1w": file, "flair": file}``, the task's input keys) and an
    optional brain mask; returns ``<output_dir>/<subject>_<task>.nii.gz`` (on the inputs' grid, with a sidecar).

    Raises:
        ValueError: an input key of the task is missing, or a file is unreadable, not 3D or not finite.
    """
    bundle, output_dir = Path(bundle).absolute(), Path(output_dir).absolute()
    input_keys = task_settings(bundle, task)["input_keys"]
    missing = [key for key in input_keys if key not in inputs]
    if missing:
        raise ValueError(f"task {task!r} needs input(s) {missing}; got {sorted(inputs)}.")
    entry = {"id": subject, **{key: str(Path(inputs[key]).absolute()) for key in input_keys}}
    if mask is not None:
        entry["mask"] = str(Path(mask).absolute())
    with tempfile.TemporaryDirectory() as folder:
        datalist = atomic_write_json(Path(folder) / "datalist.json", {"test": [entry]})
        items = [{"image": [entry[k] for k in input_keys], "id": subject} | ({"mask": entry["mask"]} if mask else {})]
        overrides = {**(overrides or {}), "datalist": str(datalist), "split": "test"}
        if brain_extraction:
            overrides["brain_extraction"] = brain_extraction
        return _run(bundle, task, items, output_dir, overrides, progress=False)[0]


USER_ERRORS = (DatalistError, ValueError, FileNotFoundError, FileExistsError)


def user_error(error: BaseException) -> BaseException | None:
    """The first error of ``error``'s chain (itself, then its causes: MONAI raises a config expression's error as the
    cause of a ``RuntimeError``) that describes bad input (``USER_ERRORS``: a file, key or value named), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the trained bundle folder (configs/, models/)")
    parser.add_argument("--task", required=True, help="pet, fa, md or sr (<bundle>/configs/tasks)")
    parser.add_argument("--input", required=True, help="folder of new subjects (BIDS-like, or flat with --key)")
    parser.add_argument("--output", required=True, help="folder for the syntheses and their JSON sidecars")
    parser.add_argument("--layout", choices=("bids", "flat", "pybids"), default="bids")
    parser.add_argument("--key", type=parse_key, action="append", default=[], help="NAME=PATTERN, repeatable")
    parser.add_argument("--brain-extraction", choices=("threshold", "deepbet"), help="for subjects without a mask")
    parser.add_argument(
        "--degrade-factor",
        type=number_at_least(1),
        help="the task's simulated loss of resolution of the input (default: the task's, sr: 2, which suits a "
        "high-resolution input); 1 for maps that are already at low resolution",
    )
    args = parser.parse_args(argv)
    overrides = {} if args.degrade_factor is None else {"degrade_factor": args.degrade_factor}
    try:
        outputs = predict_folder(
            args.bundle,
            args.task,
            args.input,
            args.output,
            args.layout,
            dict(args.key) or None,
            args.brain_extraction,
            overrides=overrides,
        )
    except Exception as error:  # MONAI wraps a config's errors in RuntimeError: report the user's
        cause = user_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    for output in outputs:
        print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
