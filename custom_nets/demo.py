# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The main job on the default data: generate synthetic subjects, train SC-GAN for one task within a time budget
(model selected on the validation subjects), synthesise the held-out test subjects, score them against baselines
without deep learning (population mean, intensity lookup table, cubic polynomial), and write a report with a figure.

    python -m custom_nets.demo                        # PET, ~11 minutes on a 2-core CPU
    python -m custom_nets.demo --task fa --minutes 5 --bundle bundle
"""

from __future__ import annotations

import argparse
from pathlib import Path

from custom_nets.data import read_datalist
from custom_nets.datasets.phantom.dataset import DATASET_NAME, generate_dataset
from custom_nets.evaluation.comparison import BASELINE_LABELS, best_baseline, markdown_table
from custom_nets.evaluation.evaluate import evaluate_predictions
from custom_nets.evaluation.figures import comparison_figure
from custom_nets.evaluation.pipeline import RunSettings, run_baselines, task_settings, train_and_infer
from custom_nets.io import atomic_write_json, atomic_write_text

__all__ = ["run_demo"]


def check_synthetic_cohort(datalist: Path, subjects: int, seed: int) -> None:
    """Refuse a synthetic datalist (``custom_nets.datasets.phantom``'s) of another subject count or seed than asked
    for; a datalist of the user's own data is used as it is.

    Raises:
        ValueError: names the datalist, what it holds and what was asked for.
    """
    content = read_datalist(datalist)
    if content.get("name") != DATASET_NAME:
        return
    held = sum(len(content.get(part, [])) for part in ("training", "validation", "test"))
    if held != subjects or content.get("seed") != seed:
        raise ValueError(
            f"{datalist} holds {held} synthetic subjects of seed {content.get('seed')}, but the demo asks for "
            f"{subjects} of seed {seed}: give another --data folder, or --subjects {held} --seed {content.get('seed')} "
            "to use them."
        )


def run_demo(
    task: str = "pet",
    minutes: float = 8.0,
    data_dir: str | Path = "data/synthetic",
    subjects: int = 20,
    seed: int = 0,
    bundle: str | Path = "bundle",
    overrides: dict | None = None,
) -> dict:
    """Run the whole demo with ``bundle``'s configs (trained model to ``<bundle>/models``) and return the report's
    numbers (also written to ``<bundle>/eval/demo_<task>/report.{json,md}`` with ``synthesis.png``).

    Raises:
        ValueError: unknown task, or ``data_dir`` holds synthetic subjects of another count or seed than asked for
            (the report would silently describe another cohort); FileNotFoundError: ``bundle`` has no configs.
    """
    settings = task_settings(bundle, task, ("target_key", "input_keys", "target_unit", "output_postfix"))
    unit = settings["target_unit"]
    target_key, bundle, datalist = settings["target_key"], Path(bundle).absolute(), Path(data_dir) / "datalist.json"
    if not datalist.is_file():
        print(f"generating {subjects} synthetic subjects in {data_dir}")
        generate_dataset(data_dir, subjects=subjects, seed=seed)
    check_synthetic_cohort(datalist, subjects, seed)
    out = bundle / "eval" / f"demo_{task}"
    # train.json's defaults (patches, batch, validation every epoch); the time budget ends the last epoch early
    budget = RunSettings(
        minutes=minutes, patch_size=None, batch_size=None, num_samples=None, seed=seed, sw_overlap=None
    )
    selected = {"overrides": overrides, "reuse": False, "model_selection": True, "outputs_root": bundle}
    run = train_and_infer(bundle, task, [], datalist, out, budget, **selected)
    rows = {"scgan": {"predictions": run["predictions"]}}
    rows["scgan"]["scores"] = evaluate_predictions(
        run["predictions"], datalist, target_key, "test", out / "scores", postfix=settings["output_postfix"]
    )
    rows.update(run_baselines(datalist, out / "baselines", target_key, settings["input_keys"]))
    compared = {"SC-GAN": run["predictions"], "lookup table": rows["intensity_lookup"]["predictions"]}
    figure = comparison_figure(out / "synthesis.png", datalist, settings["input_keys"], target_key, compared, unit)
    best = best_baseline(rows)
    nrmse = {name: row["scores"]["summary"]["nrmse"]["mean"] for name, row in rows.items()}
    report = {"task": task, "target_key": target_key, "seed": seed, "run": run, "nrmse": nrmse, "best_baseline": best}
    report["nrmse_reduction_vs_best_baseline"] = 1 - nrmse["scgan"] / nrmse[best]
    atomic_write_json(out / "report.json", report)
    lines = [
        f"# Demo: SC-GAN, task {task} (target `{target_key}`, {unit}), seed {seed}",
        "",
        f"Trained {run['iterations']} iterations ({run['train_seconds'] / 60:.1f} min), model selected on the "
        f"validation subjects, scored on the held-out test subjects inside the brain mask (mean ± sd over subjects).",
        "",
        *markdown_table(rows, {"scgan": "SC-GAN", **BASELINE_LABELS}),
        "",
        f"SC-GAN's NRMSE is {100 * abs(report['nrmse_reduction_vs_best_baseline']):.1f} % "
        f"{'lower' if report['nrmse_reduction_vs_best_baseline'] > 0 else 'higher'} than the best baseline's "
        f"({BASELINE_LABELS[best]}).",
        "",
        f"![synthesis]({figure.name})",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {**report, "report": str(out / "report.md"), "figure": str(figure)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="pet", help="pet, fa, md or sr (<bundle>/configs/tasks)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    parser.add_argument("--data", default="data/synthetic", help="dataset folder (generated when it has no datalist)")
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", default="bundle", help="the bundle folder (configs; models and eval are written)")
    args = parser.parse_args(argv)
    try:
        report = run_demo(args.task, args.minutes, args.data, args.subjects, args.seed, args.bundle)
    except (ValueError, FileNotFoundError) as error:  # bad task, bundle or data folder: one line, nothing trained
        raise SystemExit(f"error: {error}") from None
    print(Path(report["report"]).read_text(encoding="utf-8"))
    print(f"report: {report['report']}\ncheckpoint: {report['run']['checkpoint']}")


if __name__ == "__main__":
    main()
