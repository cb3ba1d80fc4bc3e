# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The levers of SC-GAN's recipe, one at a time: the bundle's defaults, then one setting changed (generator weight
average, intensity normalisation, loss weights, learning rate), at equal iterations (robust to other jobs on the
machine; the s / iteration column gives the cost), next to the per-voxel baselines, with the paired difference to the
defaults and the test error split into a per-subject offset and the spatial rest.

    python benchmarks/tuning.py                       # PET, all 7 variants × 300 iterations
    python benchmarks/tuning.py --variants 0 1 6      # tuning.md's table (41 min of training on 2 cores)
    python benchmarks/tuning.py --task md --variants 0 1       # MD: the defaults and the per-voxel prior

The offset part of a subject's mean squared error is (mean error in the brain)²: a global over- or under-estimate,
which for PET is the subject's amyloid load. No model that sees only one subject's MRI at a time can know it where
the MRI does not show it, so a large offset share bounds what any of them can gain. Writes its section of
``bundle/docs/tuning.md`` (``tuning_<task>.md`` for other tasks; hand-written sections around it are kept), prints
the table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from custom_nets.data import resolve, split_entries
from custom_nets.datasets.phantom.dataset import synthetic_datalist
from custom_nets.evaluation.evaluate import evaluate_predictions, find_prediction, paired_difference
from custom_nets.evaluation.pipeline import RunSettings, model_overlays, run_baselines, task_settings, train_and_infer
from custom_nets.io import load_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check_generated_doc, provenance, write_generated_doc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
SCRIPT = "benchmarks/tuning.py"
DEFAULTS = "SC-GAN without the per-voxel prior (the paper's inputs)"
VARIANTS = {  # name: (model, config overrides); each lever against the first row; the most informative first
    DEFAULTS: ("scgan", {"per_voxel_prior": False}),
    "+ per-voxel prior channel (cubic polynomial)": ("scgan", {"per_voxel_prior": True, "residual_on_prior": False}),
    "+ generator weight average (ema_decay 0.99)": ("scgan", {"per_voxel_prior": False, "ema_decay": 0.99}),
    "+ augmentation (affine, bias field, gamma; p 0.3)": (
        "scgan",
        {"per_voxel_prior": False, "augmentation_prob": 0.3},
    ),
    "+ tissue-mode input normalisation": (
        "scgan",
        {"per_voxel_prior": False, "intensity_normalization": "tissue_mode"},
    ),
    "+ adversarial weight 0.1, feature matching 2": (
        "scgan",
        {"per_voxel_prior": False, "lambda_adv": 0.1, "lambda_fm": 2.0},
    ),
    "+ per-voxel prior as the residual base (train.json's default; output = prior + learned correction)": (
        "scgan",
        {"per_voxel_prior": True, "residual_on_prior": True},
    ),
}


def _load(path) -> np.ndarray:
    return load_volume(path)[0]


def offset_share(pred_dir: Path, datalist: Path, target_key: str) -> float:
    """Share of the test MSE (pooled over subjects) that is each subject's mean error in the brain."""
    entries = split_entries(datalist, "test")
    total = offset = 0.0
    for name, entry in entries.items():
        pred = _load(find_prediction(pred_dir, name, list(entries)))
        mask = _load(resolve(datalist, entry, "mask", name)) > 0
        error = (pred - _load(resolve(datalist, entry, target_key, name)))[mask]
        total += float((error**2).mean())
        offset += float(error.mean() ** 2)
    return offset / total


def _findings(rows: dict, lookup: float) -> list[str]:
    """What the table says, in words: which settings beat the lookup table, and the cost of the best one."""
    learned = {name: row for name, row in rows.items() if row["seconds_per_iteration"] is not None}
    better = {name: row for name, row in learned.items() if row["nrmse"] < lookup}
    best = min(learned, key=lambda name: learned[name]["nrmse"])
    lines = ["## Findings", ""]
    if better:
        lines.append(
            "Beat the intensity lookup table: "
            + "; ".join(
                f"{name} ({100 * (1 - row['nrmse'] / lookup):.1f} % lower NRMSE)" for name, row in better.items()
            )
            + "."
        )
    else:
        lines.append("No learned variant beat the intensity lookup table at this budget.")
    lines.append(
        f"Best: {best}, NRMSE {learned[best]['nrmse']:.4f} at {learned[best]['seconds_per_iteration']:.2f} s per "
        "iteration (the per-iteration cost differs between rows: equal iterations are not equal compute)."
    )
    return lines + [""]


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="pet")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--data", default=str(ROOT / "data" / "benchmark"), help="benchmarks/recipe.py's cohort")
    parser.add_argument("--out", default=str(ROOT / "bundle" / "eval" / "tuning"))
    parser.add_argument("--docs", default=str(ROOT / "bundle" / "docs"), help="where tuning.md goes ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", type=int, nargs="+", help="indices of VARIANTS to run (default: all)")
    return parser.parse_args(argv)


def _markdown(rows: dict, args: argparse.Namespace, recorded: float, seconds: float) -> tuple[list[str], list[str]]:
    lookup = rows["intensity_lookup"]["nrmse"]
    table = [
        "| model | NRMSE | vs lookup table | vs defaults: paired ΔNRMSE [95 % CI] | offset share of MSE "
        "| s / iteration |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        per_iteration = "—" if row["seconds_per_iteration"] is None else f"{row['seconds_per_iteration']:.2f}"
        versus = row.get("versus_defaults")
        paired = (
            "—"
            if not versus
            else f"{versus['mean']:+.4f} [{versus['ci95_low']:+.4f}, {versus['ci95_high']:+.4f}] "
            f"({100 * versus['relative']:+.1f} %)"
        )
        table.append(
            f"| {name} | {row['nrmse']:.4f} | {100 * (row['nrmse'] / lookup - 1):+.1f} % | {paired} | "
            f"{100 * row['offset_share']:.0f} % | {per_iteration} |"
        )
    lines = [
        f"# Tuning SC-GAN against the per-voxel baselines ({args.task.upper()})",
        "",
        f"Produced by `python benchmarks/tuning.py --task {args.task} --iterations {args.iterations}"
        + (f" --variants {' '.join(map(str, args.variants))}" if args.variants else "")
        + f"` (seed "
        f"{args.seed}) on this machine ({provenance()}): {recorded / 60:.1f} min of training and inference as "
        f"recorded in the runs' `run.json` (this invocation {seconds / 60:.1f} min; finished runs are reused; other "
        "jobs shared the cores for part of it, so the s / iteration column is indicative). Generated file.",
        "",
        f"Every variant: {args.iterations} iterations of `train.json`'s patches (64³, 1 subject × 2 patches) with the "
        "cosine schedule over them, final weights, `benchmarks/recipe.py`'s cohort (40 synthetic subjects: 26 "
        "training, 12 test), brain-masked NRMSE on the test subjects. "
        "'vs lookup table' is the relative NRMSE against the intensity lookup table (negative = better). "
        "'offset share' is the part of the test MSE that is each subject's mean error in the brain.",
        "",
        *table,
        "",
        *_findings(rows, lookup),
    ]
    return table, lines


def _doc_path(args: argparse.Namespace) -> Path:
    return Path(args.docs) / ("tuning.md" if args.task == "pet" else f"tuning_{args.task}.md")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.docs:
        check_generated_doc(_doc_path(args), SCRIPT)  # before an hour of training, not after
    datalist = synthetic_datalist(args.data, 40, args.seed, (0.65, 0.05, 0.30))
    task = task_settings(BUNDLE, args.task, ("target_key", "input_keys", "output_postfix"))
    target_key, input_keys = task["target_key"], task["input_keys"]
    out = Path(args.out).absolute() / f"{args.task}_{args.iterations}it_seed{args.seed}"
    # train.json's patches and batches (64³, 1 subject × 2 patches) and its inference settings
    settings = RunSettings(
        iterations=args.iterations, patch_size=None, batch_size=None, num_samples=None, sw_overlap=None, seed=args.seed
    )

    start = time.perf_counter()
    rows = {}
    baselines = run_baselines(datalist, out / "baselines", target_key, input_keys)
    for name in ("intensity_lookup", "cubic_polynomial"):
        folder = Path(baselines[name]["predictions"])
        rows[name] = {"nrmse": baselines[name]["scores"]["summary"]["nrmse"]["mean"], "seconds_per_iteration": None}
        rows[name]["versus_defaults"] = None
        rows[name]["offset_share"] = offset_share(folder, datalist, target_key)
    scores_of = {}
    for index, (name, (model, overrides)) in enumerate(VARIANTS.items()):
        if args.variants is not None and index not in args.variants and index != 0:
            continue
        print(f"[{args.task}] {name}", flush=True)
        overlays = model_overlays(BUNDLE, model)
        run = train_and_infer(
            BUNDLE, args.task, overlays, datalist, out / f"variant{index}", settings, overrides=overrides
        )
        scores = scores_of[name] = evaluate_predictions(
            run["predictions"], datalist, target_key, "test", postfix=task["output_postfix"]
        )
        versus = paired_difference(scores, scores_of[DEFAULTS]) if name != DEFAULTS else None
        rows[name] = {
            "versus_defaults": versus,
            "nrmse": scores["summary"]["nrmse"]["mean"],
            "seconds_per_iteration": run["seconds_per_iteration"],
            "offset_share": offset_share(Path(run["predictions"]), datalist, target_key),
        }
        print(f"  NRMSE {rows[name]['nrmse']:.4f}", flush=True)
    seconds = time.perf_counter() - start
    recorded = sum(
        record["train_seconds"] + record["infer_seconds"]
        for record in (json.loads(path.read_text(encoding="utf-8")) for path in out.glob("variant*/run.json"))
    )

    table, lines = _markdown(rows, args, recorded, seconds)
    print("\n".join(table))
    print(json.dumps({"benchmark": "tuning", "task": args.task, "iterations": args.iterations, "rows": rows}))
    if args.docs:
        write_generated_doc(_doc_path(args), "\n".join(lines), SCRIPT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
