# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training-seed spread of each model's test scores, and the reference model minus each other model over seeds.

    python benchmarks/seed_spread.py --metric nrmse scgan=out/seed0/scgan,out/seed1/scgan cgan3d=out/seed0/cgan3d,...

Each folder is a run scored by ``custom_nets.evaluation.evaluate`` (``<folder>/scores/summary.json``), one per
training seed, on the same test subjects. Prints per model the score of each seed, the mean and the SD over seeds,
and for every model but the first (the reference) the reference minus it: the 95 % t-interval over subjects of the
per-subject scores averaged over seeds, and Welch's interval with the seed as the unit; then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def _scores(folder: Path, metric: str) -> dict[str, float]:
    path = folder / "scores" / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scores (score the run with custom_nets.evaluation.evaluate first).")
    return {subject: row[metric] for subject, row in json.loads(path.read_text(encoding="utf-8"))["subjects"].items()}


def seed_spread(runs: dict[str, list[Path]], metric: str = "nrmse") -> dict:
    """``{model: {"seeds": [...], "mean", "sd", "minus_reference": {...}}}``; the first model is the reference.

    Raises:
        ValueError: the runs do not cover the same subjects.
    """
    tables = {model: [_scores(folder, metric) for folder in folders] for model, folders in runs.items()}
    subjects = sorted(next(iter(tables.values()))[0])
    for model, table in tables.items():
        for scores in table:
            if sorted(scores) != subjects:
                raise ValueError(f"{model}: the runs do not score the same subjects ({sorted(scores)} vs {subjects}).")
    arrays = {model: np.array([[s[k] for k in subjects] for s in table]) for model, table in tables.items()}
    reference = next(iter(arrays))
    result = {}
    for model, array in arrays.items():
        seeds = array.mean(axis=1)
        row = {"seeds": [float(v) for v in seeds], "mean": float(seeds.mean())}
        row["sd"] = float(seeds.std(ddof=1)) if len(seeds) > 1 else math.nan
        if model != reference:
            difference = arrays[reference].mean(axis=0) - array.mean(axis=0)
            half = stats.t.ppf(0.975, len(difference) - 1) * difference.std(ddof=1) / math.sqrt(len(difference))
            row["minus_reference"] = {
                "mean": float(difference.mean()),
                "subjects_ci95": [float(difference.mean() - half), float(difference.mean() + half)],
            }
            ref_seeds = arrays[reference].mean(axis=1)
            if len(seeds) > 1 and len(ref_seeds) > 1:
                interval = stats.ttest_ind(ref_seeds, seeds, equal_var=False).confidence_interval()
                row["minus_reference"]["seeds_welch_ci95"] = [float(interval.low), float(interval.high)]
        result[model] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/seed_spread.py", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="MODEL=FOLDER[,FOLDER...], one folder per training seed")
    parser.add_argument("--metric", default="nrmse", choices=("nrmse", "rmse", "psnr", "ssim"))
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        model, separator, folders = item.partition("=")
        if not separator or not folders:
            parser.error(f"{item!r}: expected MODEL=FOLDER[,FOLDER...]")
        runs[model] = [Path(f) for f in folders.split(",")]
    try:
        result = seed_spread(runs, args.metric)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"| model | {args.metric} per seed | mean | SD | first row minus this, per subject [95 % CI] |")
    print("|---|---|---|---|---|")
    for model, row in result.items():
        versus = row.get("minus_reference")
        paired = (
            f"{versus['mean']:+.4f} [{versus['subjects_ci95'][0]:+.4f}, {versus['subjects_ci95'][1]:+.4f}]"
            if versus
            else "—"
        )
        seeds = ", ".join(f"{v:.4f}" for v in row["seeds"])
        print(f"| {model} | {seeds} | {row['mean']:.4f} | {row['sd']:.4f} | {paired} |")
    print(json.dumps({"metric": args.metric, "models": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
