# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Window seams and accuracy of one trained model under several sliding-window settings.

Re-synthesises the test split of a finished run (a bundle folder with ``models/<ckpt>``) with ``inference.json`` for
each setting, and reports the brain-masked NRMSE and the seam ratio (``custom_nets.metrics.seam_ratios``: the first
difference at a window border over that of the two planes beside it; 1 = no seam), the worst border per subject.

    python benchmarks/seams.py --run bundle/eval/recipe/pet/scgan --task pet --datalist data/benchmark/datalist.json

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from custom_nets.data import resolve, split_entries
from custom_nets.evaluation.evaluate import evaluate_predictions, find_prediction
from custom_nets.evaluation.pipeline import bundle_workflow
from custom_nets.io import load_volume
from custom_nets.metrics import seam_ratios

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
SETTINGS = {  # name: inference.json overrides
    "Gaussian σ 0.125, overlap 0.25 (the former default)": {"sw_mode": "gaussian", "sw_overlap": 0.25},
    "Gaussian σ 0.25, overlap 0.5": {"sw_mode": "gaussian", "sw_overlap": 0.5, "sw_sigma_scale": 0.25},
    "Hann, overlap 0.5 (default)": {"sw_mode": "hann", "sw_overlap": 0.5},
    # a 2 mm brain fits one 128³ window: no border at all, but the norms see whole-volume statistics
    "One 128³ window over the whole volume": {"sw_mode": "constant", "patch_size": [128, 128, 128]},
}


def measure(run: Path, task: str, datalist: Path, name: str, overrides: dict, extra: dict) -> dict:
    out = run / "seams" / name.split(" (")[0].replace(" ", "_").replace(",", "").replace("σ_", "")
    workflow = bundle_workflow(
        BUNDLE,
        "inference.json",
        [BUNDLE / "configs" / "tasks" / f"{task}.json"],
        bundle_root=str(run),
        datalist=str(datalist),
        output_dir=str(out),
        **extra,
        **overrides,
    )
    workflow.initialize()
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    roi = tuple(workflow.parser.get_parsed_content("patch_size"))
    overlap = workflow.parser.get_parsed_content("sw_overlap")
    target_key = workflow.parser.get_parsed_content("target_key")
    postfix = workflow.parser.get_parsed_content("output_postfix")
    workflow.finalize()
    scores = evaluate_predictions(out, datalist, target_key, "test", postfix=postfix)
    worst = []
    entries = split_entries(datalist, "test")
    for name, entry in entries.items():
        prediction = load_volume(find_prediction(out, name, list(entries)))[0]
        mask = load_volume(resolve(datalist, entry, "mask", name))[0] > 0
        # borders of the windows used; for one window, those of the default 64³ windows (where seams were)
        planes = ((64, 64, 64), 0.5) if all(r >= s for r, s in zip(roi, prediction.shape)) else (roi, overlap)
        ratios = seam_ratios(torch.from_numpy(prediction), torch.from_numpy(mask), *planes)
        worst.append(max(ratios.values()))
    return {
        "nrmse": scores["summary"]["nrmse"]["mean"],
        "worst_seam_median": float(np.median(worst)),
        "worst_seam_max": float(np.max(worst)),
        "seconds_per_subject": seconds / len(worst),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="bundle folder of a finished run (holds models/)")
    parser.add_argument("--task", default="pet")
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--overrides", default="{}", help="JSON of inference ids the run was trained with")
    args = parser.parse_args(argv)
    run, datalist = Path(args.run).absolute(), Path(args.datalist).absolute()
    extra = json.loads(args.overrides)
    rows = {name: measure(run, args.task, datalist, name, overrides, extra) for name, overrides in SETTINGS.items()}
    print("| blending | NRMSE | worst seam ratio per subject: median (max) | s / subject |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['nrmse']:.4f} | {row['worst_seam_median']:.2f} ({row['worst_seam_max']:.2f}) | "
            f"{row['seconds_per_subject']:.1f} |"
        )
    print(json.dumps({"benchmark": "seams", "run": str(run), "task": args.task, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
