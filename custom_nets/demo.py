# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The main job on the default data: generate synthetic subjects, train SC-GAN for one task within a time budget,
synthesise the held-out test subjects, score them against baselines without deep learning (population mean,
intensity lookup table, cubic polynomial), and write a report.

    python -m custom_nets.demo                        # PET, ~10 minutes on a 2-core CPU
    python -m custom_nets.demo --task fa --minutes 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from custom_nets.baselines import predict_split
from custom_nets.data import DATALIST_HINT, entry_id
from custom_nets.figures import write_png
from custom_nets.io import atomic_write_json, atomic_write_text, load_volume, read_json
from custom_nets.metrics import masked_nrmse, masked_psnr, masked_rmse, masked_ssim
from custom_nets.phantom.dataset import generate_dataset

__all__ = ["run_demo", "score_subjects"]

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"


def _load(path: str | Path) -> np.ndarray:
    return load_volume(path)[0].astype(np.float32)


def score_subjects(predictions: dict[str, np.ndarray], entries: list[dict], target_key: str, base: Path) -> dict:
    """Brain-masked RMSE, NRMSE, PSNR and SSIM per subject, and their mean."""
    rows = {}
    for entry in entries:
        target = torch.from_numpy(_load(base / entry[target_key]))[None, None]
        mask = torch.from_numpy(_load(base / entry["mask"]) > 0)[None, None]
        pred = torch.from_numpy(predictions[entry["subject"]])[None, None]
        rows[entry["subject"]] = {
            "rmse": masked_rmse(pred, target, mask),
            "nrmse": masked_nrmse(pred, target, mask),
            "psnr": masked_psnr(pred, target, mask),
            "ssim": masked_ssim(pred, target, mask),
        }
    mean = {m: float(np.mean([r[m] for r in rows.values()])) for m in ("rmse", "nrmse", "psnr", "ssim")}
    return {"subjects": rows, "mean": mean}


def _figure(path: Path, rows: list[list[np.ndarray]], ranges: list[tuple[float, float]]) -> None:
    """One row per subject: mid axial slices, each column scaled to its display range."""
    tiles = []
    for volumes in rows:
        z = volumes[0].shape[2] // 2
        row = []
        for volume, (low, high) in zip(volumes, ranges):
            plane = np.rot90(volume[:, :, z])
            row.append(np.pad(((np.clip(plane, low, high) - low) / max(high - low, 1e-8) * 255).astype(np.uint8), 2))
        tiles.append(np.concatenate(row, axis=1))
    image = np.concatenate(tiles, axis=0)
    write_png(path, np.kron(image, np.ones((2, 2), dtype=np.uint8)))


def run_demo(
    task: str = "pet",
    minutes: float = 8.0,
    data_dir: str | Path = "data/synthetic",
    subjects: int = 20,
    seed: int = 0,
    bundle_root: str | Path = BUNDLE,
    overrides: dict | None = None,
) -> dict:
    """Run the whole demo and return the report's numbers (also written to ``bundle_root/eval/demo_<task>/``)."""
    from monai.bundle import ConfigWorkflow

    data_dir, bundle_root = Path(data_dir).absolute(), Path(bundle_root).absolute()
    configs = BUNDLE / "configs"  # the configs always come from the package's bundle; outputs go to bundle_root
    task_overlay = configs / "tasks" / f"{task}.json"
    if not task_overlay.is_file():
        known = sorted(p.stem for p in (configs / "tasks").glob("*.json"))
        raise ValueError(f"unknown task {task!r}: expected one of {known}.")
    datalist = data_dir / "datalist.json"
    if not datalist.is_file():
        print(f"generating {subjects} synthetic subjects in {data_dir}")
        generate_dataset(data_dir, subjects=subjects, seed=seed)
    out_dir = bundle_root / "eval" / f"demo_{task}"
    common = {"bundle_root": str(bundle_root), "dataset_dir": str(data_dir), **(overrides or {})}

    start = time.perf_counter()
    train = ConfigWorkflow(
        config_file=[str(configs / "train.json"), str(task_overlay)],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        **{
            # train.json's defaults (64³ patches, 1 subject × 2 patches, validation every epoch of 100 iterations);
            # the time budget ends the last epoch early and validates it
            "time_budget_minutes": minutes,
            "epochs": 1000,
            "progress_bar": False,  # the iteration log already reports progress; bars would interleave with it
            **common,
        },
    )
    train.initialize()
    train.run()
    ckpt_name = train.parser.get_parsed_content("ckpt_name")
    if not (bundle_root / "models" / ckpt_name).is_file():
        # the budget ended before the first validation: validate once so the best (only) model is saved
        train.parser.get_parsed_content("validate#evaluator").run()
    train.finalize()
    trainer = train.parser.get_parsed_content("train#trainer")
    train_seconds = time.perf_counter() - start

    infer = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(task_overlay)],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        **{"output_dir": str(out_dir / "predictions"), **common},
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    target_key = infer.parser.get_parsed_content("target_key")
    postfix = infer.parser.get_parsed_content("output_postfix")
    input_keys = infer.parser.get_parsed_content("input_keys")

    content = read_json(datalist, "datalist", DATALIST_HINT)
    base = datalist.parent
    test = [{**entry, "subject": entry_id(entry, index)} for index, entry in enumerate(content["test"])]
    predictions = {}
    for entry in test:
        predictions[entry["subject"]] = _load(out_dir / "predictions" / f"{entry['subject']}_{postfix}.nii.gz")
    # baselines without deep learning, fitted on the training subjects only
    folders = predict_split(datalist, target_key, out_dir / "baselines", input_keys, "test")
    baselines = {
        name: {e["subject"]: _load(folder / f"{e['subject']}_{target_key}.nii.gz") for e in test}
        for name, folder in folders.items()
    }
    scores = {"scgan": score_subjects(predictions, test, target_key, base)}
    scores.update({name: score_subjects(preds, test, target_key, base) for name, preds in baselines.items()})
    baseline = baselines["population_mean"]

    rows, high = [], 0.0
    for entry in test:
        target = _load(base / entry[target_key])
        high = max(high, float(np.percentile(target[target > 0], 99.5)))
        inputs = [_load(base / entry[k]) for k in input_keys]
        inputs = [x / max(float(np.percentile(x[x > 0], 99.5)), 1e-8) for x in inputs]
        pred = predictions[entry["subject"]]
        rows.append(
            inputs
            + [
                target,
                pred,
                np.abs(pred - target),
                baseline[entry["subject"]],
                np.abs(baseline[entry["subject"]] - target),
            ]
        )
    n_inputs = len(rows[0]) - 5
    figure = out_dir / "synthesis.png"
    _figure(figure, rows, [(0, 1)] * n_inputs + [(0, high)] * 2 + [(0, high / 2)] + [(0, high)] + [(0, high / 2)])

    gain = 1 - scores["scgan"]["mean"]["rmse"] / scores["population_mean"]["mean"]["rmse"]
    report = {
        "task": task,
        "target_key": target_key,
        "seed": seed,
        "train_minutes": train_seconds / 60,
        "epochs": trainer.state.epoch,
        "iterations": trainer.state.iteration,
        "test_subjects": [e["subject"] for e in test],
        "scores": scores,
        "rmse_reduction_vs_population_mean": gain,
        "checkpoint": str(bundle_root / "models" / ckpt_name),
        "predictions": str(out_dir / "predictions"),
        "figure": str(figure),
    }
    atomic_write_json(out_dir / "report.json", report)
    lines = [
        f"# Demo: SC-GAN, task {task} (target `{target_key}`), seed {seed}",
        "",
        f"Trained {trainer.state.iteration} iterations ({trainer.state.epoch} epochs, {train_seconds / 60:.1f} min) on "
        f"{len(content['training'])} synthetic subjects; model selected on {len(content['validation'])} validation "
        f"subject(s); scored on {len(test)} held-out test subject(s) inside the brain mask.",
        "",
        "| model | RMSE | NRMSE | PSNR (dB) | SSIM |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "scgan": "SC-GAN",
        "population_mean": "population mean of the training targets",
        "intensity_lookup": "intensity lookup table of (T1w, FLAIR)",
        "cubic_polynomial": "cubic polynomial of (T1w, FLAIR)",
    }
    best = min((n for n in scores if n != "scgan"), key=lambda n: scores[n]["mean"]["rmse"])
    versus_best = 1 - scores["scgan"]["mean"]["rmse"] / scores[best]["mean"]["rmse"]
    report["rmse_reduction_vs_best_baseline"] = {"baseline": best, "reduction": versus_best}
    atomic_write_json(out_dir / "report.json", report)
    for name, label in labels.items():
        m = scores[name]["mean"]
        lines.append(f"| {label} | {m['rmse']:.4f} | {m['nrmse']:.4f} | {m['psnr']:.2f} | {m['ssim']:.3f} |")
    lines += [
        "",
        f"SC-GAN's RMSE is {100 * gain:.1f} % {'lower' if gain > 0 else 'higher'} than the population mean's and "
        f"{100 * abs(versus_best):.1f} % {'lower' if versus_best > 0 else 'higher'} than the best other baseline's "
        f"({labels[best]}).",
        "",
        "Columns of the figure: inputs, target, synthesis, |error|, population mean, |error|.",
        "",
        f"![synthesis]({figure.name})",
        "",
    ]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="pet", help="pet, fa, md or sr (configs/tasks)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    parser.add_argument("--data", default="data/synthetic", help="dataset folder (generated when it has no datalist)")
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_demo(args.task, args.minutes, args.data, args.subjects, args.seed)
    print((Path(report["figure"]).parent / "report.md").read_text(encoding="utf-8"))
    print(f"report: {Path(report['figure']).parent / 'report.md'}\ncheckpoint: {report['checkpoint']}")


if __name__ == "__main__":
    main()
