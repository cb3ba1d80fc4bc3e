# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Score learned models and the baselines without deep learning on the same held-out subjects, and render the
tables and the figure of a comparison (Lan et al., MRM 2021, Tables 2-4 and Fig. 3 are the model).

Used by ``benchmarks/paper_table.py`` (synthetic subjects) and ``benchmarks/real_case.py`` (SPM templates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from custom_nets.baselines import predict_split
from custom_nets.data import DATALIST_HINT, entry_id
from custom_nets.evaluate import evaluate_predictions, find_prediction, noise_free_predictions
from custom_nets.experiments import CONFIGS, RunSettings, train_and_infer
from custom_nets.figures import write_png
from custom_nets.io import load_volume, read_json

__all__ = [
    "ORACLE_LABEL",
    "BASELINE_LABELS",
    "MODEL_LABELS",
    "COMPARISON_MODELS",
    "ABLATION_MODELS",
    "PAPER_GAIN_OVER_2D_CGAN",
    "model_overlays",
    "run_models",
    "run_baselines",
    "run_oracle",
    "markdown_table",
    "comparison_figure",
]

ORACLE_LABEL = "oracle: the noise-free target (what perfect synthesis scores)"
BASELINE_LABELS = {
    "population_mean": "population mean (no learning)",
    "intensity_lookup": "intensity lookup table (no learning)",
    "cubic_polynomial": "cubic polynomial (no learning)",
}
MODEL_LABELS = {
    "unet3d": "3D U-Net (generator alone, L1 + RMSE)",
    "cgan2d": "2D cGAN (slice-wise pix2pix)",
    "cgan3d": "3D cGAN",
    "attention_cgan": "attention cGAN (no spectral norm)",
    "scgan": "SC-GAN",
    "no_adversarial": "SC-GAN without adversarial loss",
    "no_attention": "SC-GAN without attention",
    "no_spectral_norm": "SC-GAN without spectral norm",
    "no_feature_matching": "SC-GAN without feature matching",
    "no_brain_rmse": "SC-GAN without brain RMSE",
}
COMPARISON_MODELS = ("unet3d", "cgan2d", "cgan3d", "attention_cgan", "scgan")
ABLATION_MODELS = ("no_adversarial", "no_attention", "no_spectral_norm", "no_feature_matching", "no_brain_rmse")
# Relative NRMSE reduction of SC-GAN against the 2D cGAN reported by the paper (abstract and Table 2).
PAPER_GAIN_OVER_2D_CGAN = {"pet": 0.24, "fa": 0.18, "md": 0.29}


def model_overlays(model: str) -> list[Path]:
    """The overlays that turn ``train.json`` (SC-GAN) into ``model``."""
    if model not in MODEL_LABELS:
        raise ValueError(f"unknown model {model!r}: expected one of {list(MODEL_LABELS)}.")
    return [] if model == "scgan" else [CONFIGS / "models" / f"{model}.json"]


def run_models(
    task: str,
    models: list[str],
    datalist: Path,
    out_dir: Path,
    settings: RunSettings,
    target_key: str,
    split: str = "test",
    score_mask_key: str = "mask",
    overrides: dict | None = None,
    log=print,
) -> dict[str, dict]:
    """Train and score each model (``overrides``: config ids for every run); returns ``{model: {"run": run record,
    "scores": evaluate summary}}``."""
    results = {}
    for model in models:
        budget = f"{settings['minutes']:g} min" if settings.get("minutes") else f"{settings['iterations']} iterations"
        log(f"[{task}] training {model} for {budget}")
        run = train_and_infer(
            task, model_overlays(model), datalist, out_dir / model, settings, split=split, overrides=overrides
        )
        scores = evaluate_predictions(
            run["predictions"], datalist, target_key, split, out_dir / model / "scores", model, score_mask_key
        )
        log(
            f"[{task}] {model}: NRMSE {scores['summary']['nrmse']['mean']:.4f}, "
            f"{run['seconds_per_iteration']:.2f} s/iteration"
        )
        results[model] = {"run": run, "scores": scores}
    return results


def run_baselines(
    datalist: Path,
    out_dir: Path,
    target_key: str,
    input_keys: list[str],
    split: str = "test",
    score_mask_key: str = "mask",
) -> dict[str, dict]:
    """Fit the baselines on the training split, predict ``split`` and score it."""
    folders = predict_split(datalist, target_key, out_dir, input_keys, split)
    return {
        name: {
            "predictions": str(folder),
            "scores": evaluate_predictions(
                folder, datalist, target_key, split, folder / "scores", name, score_mask_key
            ),
        }
        for name, folder in folders.items()
    }


def run_oracle(datalist: Path, out_dir: Path, target_key: str, split: str = "test", score_mask_key: str = "mask"):
    """Score the noise-free targets as predictions (``noise_free_predictions``): the oracle row."""
    folder = noise_free_predictions(datalist, target_key, out_dir, split)
    scores = evaluate_predictions(folder, datalist, target_key, split, out_dir / "scores", "oracle", score_mask_key)
    return {"predictions": str(folder), "scores": scores}


def markdown_table(rows: dict[str, dict], labels: dict[str, str], interval: bool = False) -> list[str]:
    """NRMSE, PSNR and SSIM (mean ± sd over subjects, or mean [95 % interval] with ``interval``) and RMSE per row,
    the best NRMSE in bold (the oracle row excluded)."""
    lines = ["| model | NRMSE | PSNR (dB) | SSIM | RMSE |", "|---|---|---|---|---|"]
    best = min((n for n in rows if n != "oracle"), key=lambda name: rows[name]["scores"]["summary"]["nrmse"]["mean"])
    for name, row in rows.items():
        summary = row["scores"]["summary"]

        def cell(metric: str, digits: int) -> str:
            s = summary[metric]
            if np.isnan(s["std"]):
                return f"{s['mean']:.{digits}f}"
            if interval:
                return f"{s['mean']:.{digits}f} [{s['ci95_low']:.{digits}f}, {s['ci95_high']:.{digits}f}]"
            return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

        nrmse = cell("nrmse", 4)
        lines.append(
            f"| {labels.get(name, name)} | {'**' + nrmse + '**' if name == best else nrmse} | {cell('psnr', 2)} | "
            f"{cell('ssim', 3)} | {cell('rmse', 4)} |"
        )
    return lines


def _load(path: str | Path, what: str) -> np.ndarray:
    return load_volume(path, what, axcodes="RAS")[0].astype(np.float32)


def comparison_figure(
    path: Path,
    datalist: Path,
    input_keys: list[str],
    target_key: str,
    prediction_folders: dict[str, str | Path],
    split: str = "test",
    subject_index: int = 0,
    slice_index: int | None = None,
    score_mask_key: str = "mask",
) -> Path:
    """One mid-axial slice of one held-out subject. Row 1: the inputs and the target; row 2: each model's synthesis
    (in the order of ``prediction_folders``); row 3: its absolute error, on half the target's display range."""
    content = read_json(datalist, "datalist", DATALIST_HINT)
    entry = content[split][subject_index]
    base = Path(datalist).parent
    ids = [entry_id(e, i) for i, e in enumerate(content[split])]
    subject = ids[subject_index]
    mask = _load(base / entry[score_mask_key], f"entry {subject}") > 0
    target = _load(base / entry[target_key], f"entry {subject}")
    z = int(np.argmax(mask.sum(axis=(0, 1)))) if slice_index is None else slice_index
    high = float(np.percentile(target[mask], 99.5))

    def tile(volume: np.ndarray, low: float, top: float) -> np.ndarray:
        plane = np.rot90(np.where(mask, volume, 0)[:, :, z])
        scaled = (np.clip(plane, low, top) - low) / max(top - low, 1e-8)
        return np.pad((scaled * 255).astype(np.uint8), 2)

    inputs = []
    for key in input_keys:
        volume = _load(base / entry[key], f"entry {subject}")
        inputs.append(tile(volume, 0.0, float(np.percentile(volume[mask], 99.5))))
    syntheses, errors = [], []
    for folder in prediction_folders.values():
        prediction = _load(find_prediction(folder, subject, ids), f"entry {subject}, prediction")
        syntheses.append(tile(prediction, 0.0, high))
        errors.append(tile(np.abs(prediction - target), 0.0, high / 2))
    blank = np.zeros_like(inputs[0])
    width = max(len(syntheses), len(inputs) + 1)
    rows = [inputs + [tile(target, 0.0, high)], syntheses, errors]
    rows = [np.concatenate(row + [blank] * (width - len(row)), axis=1) for row in rows]
    image = np.concatenate(rows, axis=0)
    return write_png(path, np.kron(image, np.ones((2, 2), dtype=np.uint8)))
