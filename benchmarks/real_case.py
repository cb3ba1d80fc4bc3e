# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The real-image case: MRI (T1, T2, PD) → H2(15)O PET on SPM's population templates, trained on the left
hemisphere and scored on the right, SC-GAN and a 3D U-Net next to the baselines without deep learning.

    python benchmarks/real_case.py                    # fetches spm-runtime once (82 MB), ~10 min on 2 cores

The templates are real images but population averages, not subjects (see ``custom_nets/realdata.py``). Writes
``bundle/docs/results_real.md`` and a figure; prints the table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from custom_nets.comparison import (
    BASELINE_LABELS,
    MODEL_LABELS,
    comparison_figure,
    markdown_table,
    run_baselines,
    run_models,
)
from custom_nets.experiments import RunSettings
from custom_nets.io import atomic_write_text
from custom_nets.realdata import SPM_MEMBERS, SPM_REQUIREMENT, build_template_case

ROOT = Path(__file__).resolve().parent.parent
INPUT_KEYS = ["t1w", "t2w", "pd"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--models", nargs="+", default=["unet3d", "scgan"], choices=sorted(MODEL_LABELS))
    parser.add_argument("--guard-mm", type=float, default=8.0)
    parser.add_argument("--data", default=str(ROOT / "data" / "spm_case"))
    parser.add_argument("--out", default=str(ROOT / "bundle" / "eval" / "real_case"))
    parser.add_argument("--docs", default=str(ROOT / "bundle" / "docs"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    datalist = build_template_case(args.data, args.guard_mm)
    content = json.loads(datalist.read_text(encoding="utf-8"))
    # one training volume: 4 patches per iteration, all from the left hemisphere
    settings = RunSettings(iterations=args.iterations, batch_size=1, num_samples=4, seed=args.seed)
    out = Path(args.out).absolute() / f"{args.iterations}it_seed{args.seed}_guard{args.guard_mm:g}"
    overrides = {"input_keys": INPUT_KEYS, "target_min": 0.0, "target_max": 1.0}
    baselines = run_baselines(datalist, out / "baselines", "pet", INPUT_KEYS, score_mask_key="score_mask")
    learned = {}
    for model in args.models:
        learned.update(
            run_models("pet", [model], datalist, out, settings, "pet", score_mask_key="score_mask", overrides=overrides)
        )
    docs = Path(args.docs).absolute()
    figure = comparison_figure(
        docs / "figures" / "results_real_pet.png",
        datalist,
        INPUT_KEYS,
        "pet",
        {"intensity_lookup": baselines["intensity_lookup"]["predictions"]}
        | {m: row["run"]["predictions"] for m, row in learned.items()},
        score_mask_key="score_mask",
    )
    seconds = time.perf_counter() - start
    rows = {**baselines, **learned}
    table = markdown_table(rows, {**BASELINE_LABELS, **MODEL_LABELS})
    best_baseline = min(baselines, key=lambda n: baselines[n]["scores"]["summary"]["nrmse"]["mean"])
    command = "python benchmarks/real_case.py" + (f" --iterations {args.iterations}" if args.iterations != 400 else "")
    lines = [
        "# Results: a real-image case on SPM's population templates",
        "",
        f"Produced by `{command}` (seed {args.seed}) in {seconds / 60:.1f} min on this machine (2 CPU cores, no "
        "GPU). Generated file: rerun the command to refresh it.",
        "",
        f"- Data: `{SPM_REQUIREMENT}` from PyPI (GPL-2), fetched at run time and cached, never committed. Inputs: "
        f"{', '.join(SPM_MEMBERS[k] for k in INPUT_KEYS)} (ICBM-152 linear averages of the same 152 subjects, "
        f"2 mm); target: `{SPM_MEMBERS['pet']}` (H2(15)O PET, mean of 12 other subjects, 8 mm smoothed), all on "
        f"one 2 mm MNI grid, skull-stripped with `{SPM_MEMBERS['brainmask']}` > 0.5. **These are real templates "
        "(population averages), not real subjects**, and the PET comes from other people than the MRI: the case "
        "tests MRI → PET translation on real image statistics, not subject-level prediction.",
        f"- Split in space: training on the left hemisphere (x < −{args.guard_mm:g} mm; the volume is cropped so no "
        f"training patch sees a right-hemisphere target; {content['voxels']['train_brain']} brain voxels), scores on "
        f"the right hemisphere (x > +{args.guard_mm:g} mm; {content['voxels']['test_brain']} brain voxels). Inputs "
        "are scaled inside the whole brain at test time, as the bundle's inference does.",
        f"- Learned models: {settings['iterations']} iterations of {settings['num_samples']} patches of "
        f"{settings['patch_size']}³ voxels each, final weights, CPU presets, inputs T1/T2/PD (3 channels), target "
        "range [0, 1]. Baselines fitted on the left-hemisphere voxels only.",
        "- Metrics as in [results.md](results.md): brain-masked NRMSE (range of the target in the scored mask), "
        "PSNR, SSIM; one test volume, so no spread.",
        "",
        *table,
        "",
    ]
    for model, row in learned.items():
        gain = (
            1
            - row["scores"]["summary"]["nrmse"]["mean"] / baselines[best_baseline]["scores"]["summary"]["nrmse"]["mean"]
        )
        verdict = "" if gain > 0 else ": it does not beat this baseline here"
        lines.append(
            f"- {MODEL_LABELS[model]}: NRMSE {100 * abs(gain):.1f} % {'lower' if gain > 0 else 'higher'} than the best "
            f"baseline's ({BASELINE_LABELS[best_baseline]}){verdict}; {row['run']['seconds_per_iteration']:.2f} s per "
            "iteration as recorded (other jobs may have shared the cores)."
        )
    lines += [
        "",
        f"![real case](figures/{figure.name})",
        "",
        "Figure: axial slice with the most scored voxels, right hemisphere only (the scored region). Row 1: T1, T2, "
        "PD, PET target. Row 2: intensity lookup table, then " + ", ".join(MODEL_LABELS[m] for m in learned) + ". "
        "Row 3: absolute errors (display range half the target's).",
        "",
    ]
    atomic_write_text(docs / "results_real.md", "\n".join(lines) + "\n")
    print("\n".join(table))
    print(f"written: {docs / 'results_real.md'}")
    summary = {
        "benchmark": "real_case",
        "iterations": args.iterations,
        "seed": args.seed,
        "guard_mm": args.guard_mm,
        "minutes": round(seconds / 60, 2),
        "nrmse": {name: round(row["scores"]["summary"]["nrmse"]["mean"], 5) for name, row in rows.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
