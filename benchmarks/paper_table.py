# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The paper's comparison and ablation on the default synthetic subjects, next to baselines without deep learning.

For PET, FA and MD, trains the 3D U-Net, 2D cGAN, 3D cGAN, attention cGAN and SC-GAN (and SC-GAN's ablations) with
the same budget (wall-clock minutes on this machine in the standard mode, iterations in the others; the same patches,
seed and schedule; final weights, no model selection unless ``--model-selection``), synthesises the held-out test
subjects with the bundle's inference workflow, scores them inside the brain mask next to the oracle (the noise-free
target), the population mean, an intensity lookup table and a cubic polynomial fitted on the training subjects, and
writes ``bundle/docs/results.md`` and one figure per task.

    python benchmarks/paper_table.py --mode standard  # 40 subjects (12 test), 2.5 min per model, ~75 min on 2 cores
    python benchmarks/paper_table.py                  # quick mode: 20 subjects, 48 iterations of 32³, smoke scale
    python benchmarks/paper_table.py --mode full      # every model on every task, 2000 iterations each
    python benchmarks/paper_table.py --mode standard --tasks pet --no-ablations \
        --override generator_preset=student --docs /tmp/narrow   # every model with another shared setting
    python benchmarks/paper_table.py --mode standard --minutes 15 --tasks fa --no-ablations --model-selection \
        --interleaved-cost    # equal compute from per-iteration costs measured together: immune to speed drift

Finished runs with the same settings are reused (delete ``bundle/eval/paper_table`` to start over). Prints a table
per task and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from custom_nets.config_check import parse_overrides
from custom_nets.datasets.phantom.dataset import synthetic_datalist
from custom_nets.evaluation.comparison import (
    ABLATION_MODELS,
    BASELINE_LABELS,
    COMPARISON_MODELS,
    MODEL_LABELS,
    ORACLE_LABEL,
    PAPER_GAIN_OVER_2D_CGAN,
    best_baseline,
    markdown_table,
)
from custom_nets.evaluation.evaluate import paired_difference
from custom_nets.evaluation.figures import comparison_figure
from custom_nets.evaluation.pipeline import RunSettings, compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check_generated_doc, provenance, write_generated_doc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
SCRIPT = "benchmarks/paper_table.py"
LABELS = {"oracle": ORACLE_LABEL, **BASELINE_LABELS, **MODEL_LABELS}
MODES = {
    "quick": {"iterations": 48, "ablation_tasks": ("pet",), "subjects": 20, "split": (0.8, 0.1, 0.1)},
    # equal wall-clock on this machine, train.json's patches and batches, ≥ 10 held-out subjects
    "standard": {"minutes": 2.5, "ablation_tasks": ("pet",), "subjects": 40, "split": (0.65, 0.05, 0.30)},
    "full": {"iterations": 2000, "ablation_tasks": ("pet", "fa", "md"), "subjects": 40, "split": (0.65, 0.05, 0.30)},
}


def _gain(results: dict, model: str, reference: str) -> float:
    mine = results[model]["scores"]["summary"]["nrmse"]["mean"]
    theirs = results[reference]["scores"]["summary"]["nrmse"]["mean"]
    return 1 - mine / theirs


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--tasks", nargs="+", default=["pet", "fa", "md"])
    parser.add_argument("--iterations", type=int, help="iterations per model instead of the mode's budget")
    parser.add_argument("--minutes", type=float, help="wall-clock minutes per model instead of the mode's budget")
    parser.add_argument("--data", help="dataset folder, generated when it has no datalist (default: by mode)")
    parser.add_argument("--out", default=str(ROOT / "bundle" / "eval" / "paper_table"))
    parser.add_argument(
        "--docs", default=str(ROOT / "bundle" / "docs"), help="where results.md and figures go ('' for none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ablations", action="store_true", help="the comparison models only")
    parser.add_argument(
        "--model-selection",
        action="store_true",
        help="select each model's checkpoint on the validation subjects, as the bundle's default command does",
    )
    parser.add_argument(
        "--interleaved-cost",
        action="store_true",
        help="equal compute without drift: each model trains for the iterations the minutes allow at its cost per "
        "iteration, measured with all models interleaved in one process before training",
    )
    parser.add_argument(
        "--override", action="append", default=[], metavar="ID=JSON", help="a config id set for every model's run"
    )
    args = parser.parse_args(argv)
    try:
        args.overrides = parse_overrides(args.override)
    except ValueError as error:
        parser.error(str(error))
    if args.interleaved_cost and args.iterations:
        parser.error("--interleaved-cost turns a budget in minutes into iterations: give --minutes, not --iterations")
    unknown = [t for t in args.tasks if t not in PAPER_GAIN_OVER_2D_CGAN]
    if unknown:
        parser.error(f"--tasks: {unknown} not among {sorted(PAPER_GAIN_OVER_2D_CGAN)}")
    return args


def _settings(args: argparse.Namespace, mode: dict) -> RunSettings:
    if args.iterations or args.minutes:
        budget = {"iterations": args.iterations or 0, "minutes": args.minutes or 0.0}
    else:
        budget = {"iterations": mode.get("iterations", 0), "minutes": mode.get("minutes", 0.0)}
    if budget["minutes"] > 0:  # equal wall clock: train.json's own patches and batches
        return RunSettings(**budget, patch_size=None, batch_size=None, num_samples=None, seed=args.seed)
    return RunSettings(**budget, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.docs:
        check_generated_doc(Path(args.docs) / "results.md", SCRIPT)  # before the hours of training, not after
    mode = MODES[args.mode]
    settings = _settings(args, mode)
    default_data = "synthetic" if mode["subjects"] == 20 else "benchmark"  # the demo's cohort, or recipe.py's
    datalist = synthetic_datalist(args.data or ROOT / "data" / default_data, mode["subjects"], args.seed, mode["split"])
    content = json.loads(datalist.read_text(encoding="utf-8"))
    size = f"{settings['minutes']:g}min" if settings["minutes"] > 0 else f"{settings['iterations']}it"
    shared = "".join(
        re.sub(r"[^A-Za-z0-9.-]+", "-", f"_{key.replace('#', '.')}-{value}") for key, value in args.overrides.items()
    )
    selected = ("_selected" if args.model_selection else "") + ("_interleaved" if args.interleaved_cost else "")
    out = Path(args.out).absolute() / f"{args.mode}_{size}_seed{settings['seed']}{selected}{shared}"

    start = time.perf_counter()
    report: dict = {"mode": args.mode, "settings": dict(settings), "tasks": {}}
    for task in args.tasks:
        ablations = task in mode["ablation_tasks"] and not args.no_ablations
        models = list(COMPARISON_MODELS) + (list(ABLATION_MODELS) if ablations else [])
        entry = compare(
            BUNDLE,
            task,
            datalist,
            out / task,
            settings,
            models,
            oracle=True,
            overrides=args.overrides,
            model_selection=args.model_selection,
            interleaved_cost=args.interleaved_cost,
        )
        rows = entry["rows"]
        shown = {"intensity_lookup": "lookup table", **{m: MODEL_LABELS[m].split(" (")[0] for m in COMPARISON_MODELS}}
        entry["figure"] = comparison_figure(
            out / "figures" / f"results_{task}.png",  # copied beside results.md with it, at the end
            datalist,
            entry["input_keys"],
            entry["target_key"],
            {label: rows[name]["predictions"] for name, label in shown.items()},
            entry["target_unit"],
        )
        entry["baselines"] = {k: v for k, v in rows.items() if k not in MODEL_LABELS}
        entry["models"] = {k: v for k, v in rows.items() if k in MODEL_LABELS}
        report["tasks"][task] = entry
        print(f"\n{task}:\n" + "\n".join(markdown_table(rows, LABELS, interval=True)))
    seconds = time.perf_counter() - start

    lines = _results_markdown(report, content, args, seconds)
    summary = _summary(report, args, seconds)
    print(json.dumps(summary))
    if args.docs:
        figures = [entry["figure"] for entry in report["tasks"].values()]
        document = write_generated_doc(Path(args.docs) / "results.md", "\n".join(lines), SCRIPT, figures)
        print(f"written: {document}", file=sys.stderr)
    return 0


def _summary(report: dict, args: argparse.Namespace, seconds: float) -> dict:
    settings = report["settings"]
    return {
        "benchmark": "paper_table",
        "mode": args.mode,
        "iterations": settings["iterations"],
        "minutes_per_model": settings["minutes"],
        "seed": settings["seed"],
        "model_selection": args.model_selection,
        "minutes": round(seconds / 60, 2),
        "nrmse": {
            task: {name: round(row["scores"]["summary"]["nrmse"]["mean"], 5) for name, row in entry["rows"].items()}
            for task, entry in report["tasks"].items()
        },
        "scgan_gain_over_cgan2d": {
            task: round(_gain(entry["models"], "scgan", "cgan2d"), 4) for task, entry in report["tasks"].items()
        },
        "scgan_minus_learned_nrmse": {
            task: {
                model: {
                    key: round(value, 5)
                    for key, value in paired_difference(
                        entry["models"]["scgan"]["scores"], entry["models"][model]["scores"]
                    ).items()
                    if key in ("mean", "ci95_low", "ci95_high", "relative")
                }
                for model in COMPARISON_MODELS
                if model != "scgan"
            }
            for task, entry in report["tasks"].items()
        },
    }


def _train_json_batch(overrides: dict) -> str:
    """'64³, 1 subject × 2 patches': train.json's patch and batch as ``overrides`` (``--override``) leave them, the
    equal-wall-clock runs' own."""
    train = {**json.loads((BUNDLE / "configs" / "train.json").read_text(encoding="utf-8")), **overrides}
    size = train["patch_size"] if isinstance(train["patch_size"], (list, tuple)) else [train["patch_size"]] * 3
    patch = f"{size[0]}³" if len(set(size)) == 1 else "×".join(map(str, size))
    subjects = train["batch_size"]
    return f"{patch}, {subjects} subject{'s' if subjects > 1 else ''} × {train['num_samples']} patches"


def _relative(gain: float) -> str:
    """'12.3 % lower' for a relative reduction of 0.123, '4.0 % higher' for -0.04."""
    return f"{100 * abs(gain):.1f} % {'lower' if gain > 0 else 'higher'}"


def _results_markdown(report: dict, content: dict, args, seconds: float) -> list[str]:
    settings = report["settings"]
    runs = [row["run"] for entry in report["tasks"].values() for row in entry["models"].values()]
    per_iteration = float(np.median([r["seconds_per_iteration"] for r in runs]))
    overhead = float(np.median([r["infer_seconds"] for r in runs]))
    full_runs = len(MODES["full"]["ablation_tasks"]) * (len(COMPARISON_MODELS) + len(ABLATION_MODELS))
    full_hours = full_runs * (MODES["full"]["iterations"] * per_iteration + overhead) / 3600
    recorded_minutes = sum(r["train_seconds"] + r["infer_seconds"] for r in runs) / 60
    command = "python benchmarks/paper_table.py" + ("" if args.mode == "quick" else f" --mode {args.mode}")
    if args.iterations:
        command += f" --iterations {args.iterations}"
    if args.minutes:
        command += f" --minutes {args.minutes:g}"
    if args.tasks != ["pet", "fa", "md"]:
        command += " --tasks " + " ".join(args.tasks)
    if args.no_ablations:
        command += " --no-ablations"
    if args.model_selection:
        command += " --model-selection"
    if args.interleaved_cost:
        command += " --interleaved-cost"
    command += "".join(f" --override {item}" for item in args.override)
    if Path(args.docs).absolute() != ROOT / "bundle" / "docs":
        command += f" --docs {args.docs}"
    first_models = next(iter(report["tasks"].values()))["models"]
    if settings["minutes"] > 0 and args.interleaved_cost:
        costs = {
            MODEL_LABELS[m]: f"{row['run']['iterations']} ({row['run']['interleaved_seconds_per_iteration']:.3f} s)"
            for m, row in first_models.items()
        }
        budget = (
            f"the iterations {settings['minutes']:g} min allow each model at its own cost per iteration, measured "
            "with all models' iterations interleaved in one process before training, so that a drift of the "
            "machine's speed between runs cannot favour one (equal compute; iterations and measured cost on "
            f"{next(iter(report['tasks'])).upper()}: " + ", ".join(f"{k} {v}" for k, v in costs.items()) + "), "
            f"`train.json`'s patches and batches ({_train_json_batch(args.overrides)})"
        )
    elif settings["minutes"] > 0:
        iterations = {MODEL_LABELS[m]: row["run"]["iterations"] for m, row in first_models.items()}
        budget = (
            f"{settings['minutes']:g} min of training on this machine each (equal wall clock; iterations reached on "
            f"{next(iter(report['tasks'])).upper()}: " + ", ".join(f"{k} {v}" for k, v in iterations.items()) + "), "
            f"`train.json`'s patches and batches ({_train_json_batch(args.overrides)})"
        )
    else:
        budget = (
            f"{settings['iterations']} iterations of {settings['batch_size'] * settings['num_samples']} patches of "
            f"{settings['patch_size']}³ voxels ({settings['batch_size']} subjects × {settings['num_samples']} patches)"
        )
    lines = [
        "# Results: the paper's comparison and ablation on synthetic subjects",
        "",
        f"Produced by `{command}` (mode **{args.mode}**, seed {settings['seed']}) on this machine ({provenance()}): "
        f"training and inference of the {len(runs)} learned runs took {recorded_minutes:.1f} min as recorded "
        f"in their `run.json` files (this invocation: {seconds / 60:.1f} min; finished runs with the same settings "
        "are reused). Generated file: rerun the command to refresh it.",
        "",
        f"- Data: synthetic subjects (`custom_nets.datasets.phantom`, seed {args.seed}): "
        f"{len(content['training'])} training subjects, {len(content['test'])} held-out test subjects, 2 mm MNI grid. "
        + (
            f"Each model's checkpoint is selected on the {len(content['validation'])} validation subjects as the "
            "bundle's default command does (validation every `epoch_length` iterations, the best brain-masked "
            "validation score kept; "
            + (
                "validation time is not part of the budget)."
                if args.interleaved_cost
                else "validation time counts against the budget)."
            )
            if args.model_selection
            else "Validation subjects are not used: every model is scored with its final weights."
        ),
        f"- Equal budget for every learned model: {budget}; Adam with the cosine schedule over the budget, the loss "
        "weights and precision of `train.json`, "
        + (
            "and for every model " + ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in args.overrides.items())
            if args.overrides
            else "CPU preset networks (`generator_preset: cpu`)"
        )
        + ". Inference: `inference.json`"
        + (
            f" with sliding-window overlap {settings['sw_overlap']:g} instead of its own default."
            if settings.get("sw_overlap") is not None
            else "."
        ),
        "- Baselines without deep learning, fitted on the training subjects only "
        "(`custom_nets.evaluation.baselines`); "
        "the oracle row scores the noise-free target (`<target>_noisefree` of the phantom): the error no synthesis "
        "can remove.",
        "- Metrics inside the brain mask, over the whole volume (`custom_nets/metrics.py`): NRMSE = RMSE / (max − min "
        "of the target in the mask); PSNR = 20 log10(data range / RMSE) with the same data range; SSIM averaged over "
        "mask voxels (Gaussian window σ 1.5 voxels; both images zero outside the mask). The paper's code "
        "(`testing.py` of Haoyulance/SC-GAN) rescales "
        "each target to [−1, 1] by its min–max, averages per-slice RMSE and PSNR over the target's non-zero voxels "
        "along the three axes (NRMSE = that RMSE / 2), and SSIM over whole slices of one axis, background included "
        "(11-voxel Gaussian window): other absolute values, the same ranking idea. Mean [95 % t-interval] over test "
        "subjects; best NRMSE in bold.",
        "",
    ]
    if args.mode == "quick":
        lines += [
            f"**Quick mode is a smoke-scale run, not the paper's experiment.** {settings['iterations']} iterations "
            "are far too few for any network to converge; the numbers show that the pipeline works end to end and "
            "how far each model gets on a tiny budget. They do not support or refute the paper's claims. "
            f"The full mode (`--mode full`: {full_runs} runs of {MODES['full']['iterations']} iterations) would take "
            f"about **{full_hours:.0f} h on this CPU** — an estimate from this run's measured median "
            f"{per_iteration:.2f} s per iteration and {overhead:.0f} s of inference per run, not a measurement; on "
            "a GPU it is a matter of minutes per run.",
            "",
        ]
    for task, entry in report["tasks"].items():
        results = entry["models"]
        lines += [f"## {task.upper()} (target `{entry['target_key']}`)", ""]
        comparison = {**entry["baselines"], **{m: results[m] for m in COMPARISON_MODELS}}
        lines += markdown_table(comparison, LABELS, interval=True)
        gain = _gain(results, "scgan", "cgan2d")
        best = best_baseline(entry["baselines"])
        paired = paired_difference(results["scgan"]["scores"], entry["baselines"][best]["scores"])
        versus_baseline = -paired["relative"]
        ranked = sorted(COMPARISON_MODELS, key=lambda m: results[m]["scores"]["summary"]["nrmse"]["mean"])
        lines += [
            "",
            f"SC-GAN's NRMSE is **{_relative(gain)}** than the 2D cGAN's here; the paper reports "
            f"{100 * PAPER_GAIN_OVER_2D_CGAN[task]:.0f} % lower on ADNI. Against the best baseline without learning "
            f"({BASELINE_LABELS[best]}) it is {_relative(versus_baseline)} (paired difference "
            f"{paired['mean']:+.4f} [{paired['ci95_low']:+.4f}, {paired['ci95_high']:+.4f}])"
            f"{'.' if paired['ci95_high'] < 0 else ': SC-GAN does not beat this baseline here.'} Rank of SC-GAN among "
            f"the learned models: {ranked.index('scgan') + 1} of {len(ranked)}.",
            "",
            "SC-GAN against each other learned model, per test subject (negative = SC-GAN better):",
            "",
            "| SC-GAN − | paired ΔNRMSE [95 % interval] | relative |",
            "|---|---|---|",
        ]
        for model in COMPARISON_MODELS:
            if model != "scgan":
                versus = paired_difference(results["scgan"]["scores"], results[model]["scores"])
                lines.append(
                    f"| {MODEL_LABELS[model]} | {versus['mean']:+.4f} [{versus['ci95_low']:+.4f}, "
                    f"{versus['ci95_high']:+.4f}] | {100 * versus['relative']:+.1f} % |"
                )
        lines.append("")
        ablations = [m for m in ABLATION_MODELS if m in results]
        if ablations:
            lines += [f"Ablation ({task.upper()}): change of NRMSE when one part is removed (positive = worse).", ""]
            lines += ["| model | NRMSE | change vs SC-GAN |", "|---|---|---|"]
            reference = results["scgan"]["scores"]["summary"]["nrmse"]["mean"]
            for model in ("scgan", *ablations):
                value = results[model]["scores"]["summary"]["nrmse"]["mean"]
                change = "—" if model == "scgan" else f"{100 * (value / reference - 1):+.1f} %"
                lines.append(f"| {MODEL_LABELS[model]} | {value:.4f} | {change} |")
            lines.append("")
        lines += [
            f"![{task}](figures/{Path(entry['figure']).name})",
            "",
            "Figure: first test subject, axial slice with the most brain. Row 1: inputs and target. Row 2: intensity "
            "lookup table, 3D U-Net, 2D cGAN, 3D cGAN, attention cGAN, SC-GAN. Row 3: their absolute errors "
            "(display range half the target's).",
            "",
        ]
    timing = ["| model | s / iteration | reference workload ms, before / after training |", "|---|---|---|"]
    first_task, first_entry = next(iter(report["tasks"].items()))
    for model, row in first_entry["models"].items():
        probe = row["run"].get("probe_seconds")  # runs recorded before the probe existed have none
        reference = f"{1000 * probe['before']:.0f} / {1000 * probe['after']:.0f}" if probe else "not recorded"
        timing.append(f"| {MODEL_LABELS[model]} | {row['run']['seconds_per_iteration']:.2f} | {reference} |")
    lines += [
        "## Training cost on this machine",
        "",
        f"Seconds per iteration as recorded by each {first_task.upper()} run (validation included); other jobs "
        "sometimes shared the two cores, so use `python benchmarks/train_step.py` for clean step timings. The "
        "reference workload (`custom_nets.evaluation.pipeline.machine_speed_probe`: the same convolution every time) "
        "shows whether the machine's own speed changed between the runs, which equal wall clock would pass on to "
        "their iterations.",
        "",
        *timing,
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
