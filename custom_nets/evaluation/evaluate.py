# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Score synthesised maps against their targets inside the brain mask.

    python -m custom_nets.evaluation.evaluate --pred bundle/eval/demo_pet/predictions \\
        --datalist data/synthetic/datalist.json \\
        --target pet [--split test] [--out DIR] [--name SC-GAN]

For every entry of the split it finds the one prediction file in ``--pred`` named by the entry id
(``sub-0003_pet.nii.gz``, as the bundle and the baselines write them), checks it is on the target's grid (any voxel
order; another grid is refused), and computes NRMSE, RMSE, PSNR and SSIM inside the brain mask (definitions in
``custom_nets.metrics``; the data range is the target's range inside the mask). It writes ``metrics.csv`` (one row
per entry), ``summary.json`` (mean, standard deviation, 95 % t-interval of the mean) and ``summary.md`` (a markdown
table), each atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from custom_nets.data import resolve, split_entries
from custom_nets.evaluation.comparison import markdown_table
from custom_nets.io import atomic_write_json, atomic_write_text, check_same_grid, load_volume
from custom_nets.metrics import METRICS
from custom_nets.transforms import derive_brain_mask

__all__ = ["evaluate_predictions", "summarise", "paired_difference", "noise_free_predictions"]


def find_prediction(
    folder: str | Path, entry: str, other_entries: Sequence[str] = (), postfix: str | None = None
) -> Path:
    """The prediction of ``entry`` in ``folder``: ``<entry>_<postfix>.nii*`` (the name ``SavePredictiond`` gives with
    the task's ``output_postfix``, and the baselines with the target key) when ``postfix`` is given, so that another
    task's map in the same folder (``eval/`` holds every task's) is never scored; otherwise the one file
    ``<entry>_*.nii*`` or ``<entry>.nii*``, not counting files of other entries whose id extends this one (``sub-01``
    vs ``sub-01_ses-2``).

    Raises:
        FileNotFoundError: none or several files match; the message lists the entry's files.
    """
    folder = Path(folder)
    longer = [other for other in other_entries if other != entry and other.startswith(entry)]
    of_entry = sorted(
        p
        for p in folder.glob(f"{entry}*.nii*")
        if p.name[len(entry)] in "_."
        and not any(p.name.startswith(other) and p.name[len(other)] in "_." for other in longer)
    )
    if postfix is not None:
        matches = [p for p in of_entry if p.name in (f"{entry}_{postfix}.nii", f"{entry}_{postfix}.nii.gz")]
        if len(matches) == 1:
            return matches[0]
        found = ", ".join(p.name for p in of_entry) or "none"
        raise FileNotFoundError(
            f"{folder}: expected the prediction {entry}_{postfix}.nii.gz, found {found}. Predictions are matched by "
            "their postfix (the evaluate CLI's --postfix, default the target key): give the task's output_postfix "
            "(e.g. sr) to score another name."
        )
    if len(of_entry) != 1:
        found = ", ".join(p.name for p in of_entry) or "none"
        raise FileNotFoundError(f"{folder}: expected one prediction for {entry} ({entry}_*.nii.gz), found {found}.")
    return of_entry[0]


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation and the 95 % t-interval of the mean."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if array.size < 2:
        return {"mean": mean, "std": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"), "n": 1}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, array.size - 1)) * std / math.sqrt(array.size)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": int(array.size)}


def paired_difference(model: dict, reference: dict, metric: str = "nrmse") -> dict[str, float]:
    """``model − reference`` per subject (two ``evaluate_predictions`` results on the same split), summarised with the
    95 % t-interval of the mean difference, plus the relative change of the means (``relative``, negative = lower).

    Raises:
        ValueError: the two results do not cover the same subjects.
    """
    subjects = sorted(model["subjects"])
    if subjects != sorted(reference["subjects"]):
        raise ValueError(
            f"paired difference needs the same subjects, got {subjects} and {sorted(reference['subjects'])}."
        )
    differences = [model["subjects"][s][metric] - reference["subjects"][s][metric] for s in subjects]
    mine = float(np.mean([model["subjects"][s][metric] for s in subjects]))
    theirs = float(np.mean([reference["subjects"][s][metric] for s in subjects]))
    return {**summarise(differences), "relative": mine / theirs - 1}


def noise_free_predictions(datalist: str | Path, target_key: str, out_dir: str | Path, split: str = "test") -> Path:
    """A prediction folder (links named ``<subject>_<target>.nii.gz``) holding each subject's noise-free target
    (``<target>_noisefree``, written by ``custom_nets.datasets.phantom``): scored like a model, it is the oracle row,
    the error that no synthesis can remove.

    Raises:
        ValueError: an entry has no ``<target>_noisefree`` key (data not generated by this version of the phantom).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = f"{target_key}_noisefree"
    for subject, entry in split_entries(datalist, split).items():
        if key not in entry:
            raise ValueError(
                f"datalist {datalist}, entry {subject}: no '{key}' (regenerate with custom_nets.datasets.phantom)."
            )
        link = out_dir / f"{subject}_{target_key}.nii.gz"
        link.unlink(missing_ok=True)
        link.symlink_to(resolve(datalist, entry, key, subject).absolute())
    return out_dir


def evaluate_predictions(
    pred_dir: str | Path,
    datalist: str | Path,
    target_key: str,
    split: str = "test",
    out_dir: str | Path | None = None,
    name: str = "model",
    mask_key: str = "mask",
    input_keys: Sequence[str] = ("t1w", "flair"),
    postfix: str | None = None,
    require_mask: bool = False,
) -> dict:
    """Score each subject's ``<id>_<postfix>.nii.gz`` (``postfix`` default: ``target_key``; a task whose
    ``output_postfix`` differs from its target key, ``sr``, gives it) against the target, inside the datalist's
    ``mask_key`` mask (for an entry without one, the mask the bundle derives from its skull-stripped ``input_keys``:
    ``custom_nets.transforms.derive_brain_mask``, unless ``require_mask``, which refuses such an entry); returns
    ``{"subjects": {...}, "summary": {...}, "masks": {given and derived counts}}`` and, when ``out_dir`` is given,
    writes the CSV, JSON and markdown files there.

    Raises:
        FileNotFoundError: ``pred_dir`` is not a folder, or a file is missing (named).
        ValueError: a file is unreadable or off the target's grid, a mask is empty, or an entry has neither
            ``mask_key`` nor the ``input_keys`` to derive a mask from (or no ``mask_key`` with ``require_mask``); the
            message names the entry and key.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred {pred_dir}: not a folder.")
    entries = split_entries(datalist, split)
    ids = list(entries)
    rows = {}
    derived_masks = 0
    for subject, entry in entries.items():
        target_file = resolve(datalist, entry, target_key, subject)
        derived = mask_key not in entry
        if derived and require_mask:
            raise ValueError(
                f"datalist {datalist}, entry {subject}: no key '{mask_key}' (the mask to score in); the entry has "
                f"{sorted(entry)}."
            )
        derived_masks += int(derived)
        if derived and not all(key in entry for key in input_keys):
            raise ValueError(
                f"datalist {datalist}, entry {subject}: no '{mask_key}' to score in, and not the inputs "
                f"{list(input_keys)} to derive one from; the entry has {sorted(entry)}. Give --mask-key or "
                "--input-keys."
            )
        mask_keys = list(input_keys) if derived else [mask_key]
        mask_files = [resolve(datalist, entry, key, subject) for key in mask_keys]
        path = find_prediction(pred_dir, subject, ids, target_key if postfix is None else postfix)
        # every file in RAS voxel order: a prediction on the target's grid stored in another axis order still scores
        target, target_affine = load_volume(target_file, f"entry {subject}, key '{target_key}'", axcodes="RAS")
        reference = (f"entry {subject}, key '{target_key}': {target_file}", target.shape, target_affine)
        pred, affine = load_volume(path, f"entry {subject}, prediction", axcodes="RAS")
        check_same_grid(f"prediction {path}", pred.shape, affine, *reference)
        volumes = []
        for key, file in zip(mask_keys, mask_files):
            volume, affine = load_volume(file, f"entry {subject}, key '{key}'", axcodes="RAS")
            check_same_grid(f"entry {subject}, key '{key}': {file}", volume.shape, affine, *reference)
            volumes.append(volume)
        mask = derive_brain_mask(np.stack(volumes)) if derived else volumes[0] > 0
        if not mask.any():
            where = f"the mask derived from {mask_keys}" if derived else f"key '{mask_key}': {mask_files[0]}"
            raise ValueError(f"entry {subject}, {where}: the brain mask is empty.")
        tensors = [torch.from_numpy(a)[None, None] for a in (pred, target, mask)]
        rows[subject] = {metric: fn(*tensors) for metric, fn in METRICS.items()}
    summary = {metric: summarise([row[metric] for row in rows.values()]) for metric in METRICS}
    masks = {"key": mask_key, "given": len(rows) - derived_masks, "derived_from_inputs": derived_masks}
    result = {"name": name, "target": target_key, "split": split, "masks": masks, "subjects": rows, "summary": summary}
    if out_dir is not None:
        out_dir = Path(out_dir)
        stream = io.StringIO()
        writer = csv.writer(stream)
        writer.writerow(["subject"] + list(METRICS))
        for subject, row in rows.items():
            writer.writerow([subject] + [f"{row[m]:.6g}" for m in METRICS])
        atomic_write_text(out_dir / "metrics.csv", stream.getvalue())
        atomic_write_json(out_dir / "summary.json", result)
        label = f"{name} ({target_key}, {split}, n={len(rows)})"
        lines = markdown_table({name: {"scores": result}}, {name: label}, interval=len(rows) > 1)
        atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m custom_nets.evaluation.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pred", required=True, help="folder of predicted NIfTI files")
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--target", required=True, help="datalist key of the target")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="output folder (default: PRED/scores)")
    parser.add_argument("--name", default="model", help="row label in the markdown table")
    parser.add_argument(
        "--mask-key",
        help="datalist key of the mask the scores are computed in, required in every entry when given (default: "
        "'mask' where an entry has it, else the mask derived from --input-keys)",
    )
    parser.add_argument(
        "--postfix",
        help="score the files <entry id>_<POSTFIX>.nii.gz (default: the target key; the sr task writes <id>_sr)",
    )
    parser.add_argument(
        "--input-keys",
        nargs="+",
        default=["t1w", "flair"],
        help="skull-stripped inputs a mask is derived from, as the bundle does, for entries without --mask-key",
    )
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.pred) / "scores"
    try:
        evaluate_predictions(
            args.pred,
            args.datalist,
            args.target,
            args.split,
            out,
            args.name,
            args.mask_key or "mask",
            args.input_keys,
            args.postfix,
            require_mask=args.mask_key is not None,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}")
        return 2
    print((out / "summary.md").read_text(encoding="utf-8") + f"written: {out / 'metrics.csv'}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
