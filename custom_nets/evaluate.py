# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Score synthesised maps against their targets inside the brain mask.

    python -m custom_nets.evaluate --pred bundle/eval/demo_pet/predictions --datalist data/synthetic/datalist.json \\
        --target pet [--split test] [--out DIR] [--name SC-GAN]

For every subject of the split it finds the one prediction file in ``--pred`` whose name starts with the subject id
(``sub-0003_t1w_pet.nii.gz``, ``sub-0003_pet.nii.gz``, ...), and computes NRMSE, RMSE, PSNR and SSIM inside the brain
mask (definitions in ``custom_nets.metrics``; the data range is the target's range inside the mask). It writes
``metrics.csv`` (one row per subject), ``summary.json`` (mean, standard deviation, 95 % t-interval of the mean) and
``summary.md`` (a markdown table), each atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import stats

from custom_nets.io import atomic_write_json, atomic_write_text
from custom_nets.metrics import masked_nrmse, masked_psnr, masked_rmse, masked_ssim

__all__ = ["evaluate_predictions", "summarise"]

METRIC_FUNCTIONS = {"nrmse": masked_nrmse, "rmse": masked_rmse, "psnr": masked_psnr, "ssim": masked_ssim}


def _find_prediction(folder: Path, subject: str) -> Path:
    matches = sorted(p for p in folder.glob(f"{subject}*.nii*") if p.name[len(subject)] in "_.")
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "none"
        raise FileNotFoundError(f"{folder}: expected one prediction for {subject} ({subject}_*.nii.gz), found {found}.")
    return matches[0]


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation and the 95 % t-interval of the mean."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if array.size < 2:
        return {"mean": mean, "std": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"), "n": 1}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, array.size - 1)) * std / math.sqrt(array.size)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": int(array.size)}


def evaluate_predictions(
    pred_dir: str | Path,
    datalist: str | Path,
    target_key: str,
    split: str = "test",
    out_dir: str | Path | None = None,
    name: str = "model",
    mask_key: str = "mask",
) -> dict:
    """Score every subject of ``split`` inside the datalist's ``mask_key`` mask; returns ``{"subjects": {...},
    "summary": {...}}`` and, when ``out_dir`` is given, writes the CSV, JSON and markdown files there."""
    pred_dir, datalist = Path(pred_dir), Path(datalist)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred {pred_dir}: not a folder.")
    content = json.loads(datalist.read_text(encoding="utf-8"))
    if split not in content or not content[split]:
        raise ValueError(f"datalist {datalist}: no entries in '{split}'.")
    base = datalist.parent
    rows = {}
    for entry in content[split]:
        subject = entry.get("subject", entry.get("id"))
        for key in (target_key, mask_key):
            if key not in entry:
                raise ValueError(f"datalist {datalist}, entry {subject}: missing key '{key}'.")
        path = _find_prediction(pred_dir, subject)
        pred = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)
        target = np.asanyarray(nib.load(str(base / entry[target_key])).dataobj).astype(np.float64)
        mask = np.asanyarray(nib.load(str(base / entry[mask_key])).dataobj) > 0
        if pred.shape != target.shape:
            raise ValueError(f"{path}: shape {pred.shape} differs from the target's {target.shape}.")
        tensors = [torch.from_numpy(a)[None, None] for a in (pred, target, mask)]
        rows[subject] = {metric: fn(*tensors) for metric, fn in METRIC_FUNCTIONS.items()}
    summary = {metric: summarise([row[metric] for row in rows.values()]) for metric in METRIC_FUNCTIONS}
    result = {"name": name, "target": target_key, "split": split, "subjects": rows, "summary": summary}
    if out_dir is not None:
        out_dir = Path(out_dir)
        stream = io.StringIO()
        writer = csv.writer(stream)
        writer.writerow(["subject"] + list(METRIC_FUNCTIONS))
        for subject, row in rows.items():
            writer.writerow([subject] + [f"{row[m]:.6g}" for m in METRIC_FUNCTIONS])
        atomic_write_text(out_dir / "metrics.csv", stream.getvalue())
        atomic_write_json(out_dir / "summary.json", result)
        lines = [
            f"| {name} ({target_key}, {split}, n={len(rows)}) | "
            + " | ".join(m.upper() for m in METRIC_FUNCTIONS)
            + " |",
            "|---|" + "---|" * len(METRIC_FUNCTIONS),
            "| mean ± sd [95 % CI] | "
            + " | ".join(
                "{mean:.4g} ± {std:.2g} [{ci95_low:.4g}, {ci95_high:.4g}]".format(**summary[m])
                for m in METRIC_FUNCTIONS
            )
            + " |",
        ]
        atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, help="folder of predicted NIfTI files")
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--target", required=True, help="datalist key of the target")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="output folder (default: PRED/scores)")
    parser.add_argument("--name", default="model", help="row label in the markdown table")
    parser.add_argument("--mask-key", default="mask", help="datalist key of the mask the scores are computed in")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.pred) / "scores"
    try:
        evaluate_predictions(args.pred, args.datalist, args.target, args.split, out, args.name, args.mask_key)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}")
        return 2
    print((out / "summary.md").read_text(encoding="utf-8") + f"written: {out / 'metrics.csv'}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
