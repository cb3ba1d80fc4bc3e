# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Knowledge distillation: the SC-GAN teacher (CPU preset) vs the distilled student (``models/student.json`` +
``teacher_weights``) vs the same student trained without a teacher vs the per-voxel baselines, on the held-out
synthetic subjects of the standard cohort (``benchmarks/paper_table.py --mode standard``'s data).

Quality: NRMSE / PSNR / SSIM in the brain mask with 95 % intervals, and paired differences (student − teacher,
student − best baseline). Cost: parameters, FLOPs of one 64³ window, whole-brain inference seconds and peak memory at
2 mm (91×109×91) and natively at 1 mm (182×218×182) with the bundle's sliding-window inferer, teacher and student
timed in the same run, each case in a fresh process.

    python benchmarks/distillation.py                     # PET, 2.5 min of training per model, ~20 min on 2 cores
    python benchmarks/distillation.py --teacher-minutes 10  # a teacher trained 4× longer than the students
    python benchmarks/distillation.py --task fa --minutes 5

Finished training runs with the same settings are reused. Prints a markdown table per part and one JSON line.
Targets (issue 16): student inference ≥ 5× faster than the teacher's, NRMSE within 5 % of the teacher's and below the
best per-voxel baseline's on ≥ 10 held-out subjects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, peak_mb_since, print_table, reset_peak, run_child, timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
GRIDS = {"2mm": (91, 109, 91), "1mm": (182, 218, 182)}
TARGET_SPEEDUP, TARGET_NRMSE_RATIO = 5.0, 1.05
INFERENCE_IDS = ("patch_size", "sw_batch_size", "sw_overlap", "sw_mode", "sw_sigma_scale", "input_keys", "out_act")


def run_case(preset: str, weights: str, grid: str, sw_overlap: float, task: str) -> dict:
    """Whole-brain inference of the deployed generator (``inference.json``'s network_def: spectral norm folded) with
    ``inference.json``'s sliding-window settings at ``sw_overlap``; seconds, peak memory, parameters, FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from custom_nets import build_generator
    from custom_nets.evaluation.pipeline import task_settings
    from custom_nets.inferers import SeamlessSlidingWindowInferer
    from custom_nets.io import read_checkpoint
    from custom_nets.precision import autocast_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = task_settings(BUNDLE, task, INFERENCE_IDS)
    channels = len(ids["input_keys"]) + 1  # the per-voxel prior
    generator = build_generator(
        preset, in_channels=channels, out_act=ids["out_act"], residual_channel=channels - 1, fold_spectral_norm=True
    )
    generator.load_state_dict(read_checkpoint(weights))
    generator = generator.to(device).eval()
    inferer = SeamlessSlidingWindowInferer(
        ids["patch_size"], ids["sw_batch_size"], sw_overlap, ids["sw_mode"], ids["sw_sigma_scale"]
    )
    image = torch.rand(1, channels, *GRIDS[grid], device=device)
    dtype = autocast_dtype(device)

    def infer() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            return inferer(image, generator)

    window = torch.rand(1, channels, *ids["patch_size"], device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        generator(window)
    infer()  # warm-up: one-off allocations and kernel selection
    base = reset_peak()
    seconds = timed(infer, 1, warmup=0, device=device)
    return {
        "seconds": seconds,
        "peak_mb": peak_mb_since(base, device),
        "params_m": sum(p.numel() for p in generator.parameters()) / 1e6,
        "gflops_per_window": counter.get_total_flops() / 1e9,
        "autocast": str(dtype),
    }


def _key(grid: str, overlap: float) -> str:
    return f"{grid}@{overlap:g}"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="pet", choices=["pet", "fa", "md"])
    parser.add_argument("--minutes", type=float, default=2.5, help="training minutes per model (equal wall clock)")
    parser.add_argument("--teacher-minutes", type=float, help="the teacher's training minutes (default: --minutes)")
    parser.add_argument("--data", default=str(ROOT / "data" / "benchmark"), help="the standard synthetic cohort")
    parser.add_argument("--out", default=str(ROOT / "bundle" / "eval" / "distillation"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.5, 0.25], help="sliding-window overlaps timed")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(**json.loads(args.case))))
        return 0

    from custom_nets.datasets.phantom.dataset import synthetic_datalist
    from custom_nets.evaluation.comparison import BASELINE_LABELS, best_baseline, markdown_table
    from custom_nets.evaluation.evaluate import evaluate_predictions, paired_difference
    from custom_nets.evaluation.pipeline import (
        RunSettings,
        model_overlays,
        run_baselines,
        task_settings,
        train_and_infer,
    )

    datalist = synthetic_datalist(args.data, 40, args.seed, (0.65, 0.05, 0.30))
    ids = task_settings(BUNDLE, args.task, ("target_key", "input_keys"))
    settings = RunSettings(minutes=args.minutes, patch_size=None, batch_size=None, num_samples=None, seed=args.seed)
    teacher_minutes = args.teacher_minutes or args.minutes
    teacher_settings = RunSettings(**{**settings, "minutes": teacher_minutes})
    longer = "" if teacher_minutes == args.minutes else f"_teacher{teacher_minutes:g}min"
    out = Path(args.out).absolute() / f"{args.task}_{args.minutes:g}min{longer}_seed{args.seed}"

    rows = run_baselines(datalist, out / "baselines", ids["target_key"], ids["input_keys"])
    student = model_overlays(BUNDLE, "student")
    runs = {}
    print(f"[{args.task}] training the teacher for {teacher_minutes:g} min", file=sys.stderr, flush=True)
    runs["teacher"] = train_and_infer(BUNDLE, args.task, [], datalist, out / "teacher", teacher_settings)
    teacher_weights = runs["teacher"]["checkpoint"]
    plans = {
        "student_distilled": (student, {"teacher_weights": teacher_weights}),
        "student_scratch": (student, None),
    }
    for name, (overlays, overrides) in plans.items():
        print(f"[{args.task}] training {name} for {args.minutes:g} min", file=sys.stderr, flush=True)
        runs[name] = train_and_infer(BUNDLE, args.task, overlays, datalist, out / name, settings, overrides=overrides)
    for name, run in runs.items():
        rows[name] = {
            "run": run,
            "scores": evaluate_predictions(
                run["predictions"], datalist, ids["target_key"], "test", out / name / "scores", name
            ),
        }
    labels = {
        **BASELINE_LABELS,
        "teacher": "SC-GAN teacher (CPU preset)",
        "student_distilled": "student, distilled from the teacher",
        "student_scratch": "student, trained without the teacher",
    }
    print(
        f"\n{args.task}: held-out test subjects; training: teacher {teacher_minutes:g} min, students "
        f"{args.minutes:g} min each (seed {args.seed})"
    )
    print("\n".join(markdown_table(rows, labels, interval=True)))

    best = best_baseline(rows)
    nrmse = {name: row["scores"]["summary"]["nrmse"]["mean"] for name, row in rows.items()}
    comparisons = {
        "distilled_vs_teacher": paired_difference(rows["student_distilled"]["scores"], rows["teacher"]["scores"]),
        "distilled_vs_best_baseline": paired_difference(rows["student_distilled"]["scores"], rows[best]["scores"]),
        "distilled_vs_scratch": paired_difference(
            rows["student_distilled"]["scores"], rows["student_scratch"]["scores"]
        ),
        "teacher_vs_best_baseline": paired_difference(rows["teacher"]["scores"], rows[best]["scores"]),
    }
    print()
    print_table(
        ["paired NRMSE difference", "mean [95 % interval]", "relative"],
        [
            [
                k.replace("_", " "),
                f"{c['mean']:+.4f} [{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]",
                f"{c['relative']:+.1%}",
            ]
            for k, c in comparisons.items()
        ],
    )
    print()
    print_table(
        ["network", "iterations", "s / iteration"],
        [[labels[n], r["iterations"], f"{r['seconds_per_iteration']:.2f}"] for n, r in runs.items()],
    )

    script = os.path.abspath(__file__)
    timing = []
    for grid in GRIDS:
        for overlap in args.overlaps:
            for name, preset in (("teacher", "cpu"), ("student_distilled", "student")):
                case = {"preset": preset, "weights": runs[name]["checkpoint"], "grid": grid, "sw_overlap": overlap}
                result = run_child(script, {**case, "task": args.task}, args.threads)
                timing.append({"network": name, "grid": grid, "overlap": overlap, **result})
                print(f"  {name} {grid} overlap {overlap}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    speedups = {}
    for grid in GRIDS:
        for overlap in args.overlaps:
            pair = {t["network"]: t for t in timing if t["grid"] == grid and t["overlap"] == overlap}
            speedups[_key(grid, overlap)] = pair["teacher"]["seconds"] / pair["student_distilled"]["seconds"]
    print()
    print_table(
        [
            "network",
            "grid",
            "overlap",
            "params (M)",
            "GFLOP / 64³ window",
            "seconds",
            "peak MB (upper bound)",
            "speed-up",
        ],
        [
            [
                labels[t["network"]],
                f"{t['grid']} {GRIDS[t['grid']]}",
                t["overlap"],
                f"{t['params_m']:.2f}",
                f"{t['gflops_per_window']:.1f}",
                f"{t['seconds']:.2f}",
                f"{t['peak_mb']:.0f}",
                "—" if t["network"] == "teacher" else f"{speedups[_key(t['grid'], t['overlap'])]:.1f}×",
            ]
            for t in timing
        ],
    )

    ratio = nrmse["student_distilled"] / nrmse["teacher"]
    targets = {
        "speedup_2mm_at_least_5x": min(v for k, v in speedups.items() if k.startswith("2mm")) >= TARGET_SPEEDUP,
        "nrmse_within_5pct_of_teacher": ratio <= TARGET_NRMSE_RATIO,
        "ahead_of_best_baseline": comparisons["distilled_vs_best_baseline"]["ci95_high"] < 0,
        "test_subjects": rows["teacher"]["scores"]["summary"]["nrmse"]["n"],
    }
    print(f"\nstudent / teacher NRMSE {ratio:.3f} (target ≤ {TARGET_NRMSE_RATIO}); speed-ups {speedups}; {targets}")
    summary = {
        "benchmark": "distillation",
        **machine(),
        "task": args.task,
        "minutes_per_student": args.minutes,
        "teacher_minutes": teacher_minutes,
        "seed": args.seed,
        "nrmse": {k: round(v, 5) for k, v in nrmse.items()},
        "best_baseline": best,
        "paired": {k: {m: round(v, 5) for m, v in c.items()} for k, c in comparisons.items()},
        "iterations": {n: r["iterations"] for n, r in runs.items()},
        "timing": timing,
        "speedups": {k: round(v, 2) for k, v in speedups.items()},
        "targets": targets,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
