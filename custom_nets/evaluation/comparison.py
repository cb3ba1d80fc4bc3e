# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The rows of a comparison: the learned models of the paper and its ablations, the baselines without deep learning,
their labels, and the markdown table every report uses (Lan et al., MRM 2021, Tables 2-4 are the model)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "ORACLE_LABEL",
    "BASELINE_LABELS",
    "MODEL_LABELS",
    "COMPARISON_MODELS",
    "ABLATION_MODELS",
    "PAPER_GAIN_OVER_2D_CGAN",
    "markdown_table",
    "best_baseline",
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
    "local_attention": "SC-GAN with local windowed attention (4³ windows at every site)",
}
COMPARISON_MODELS = ("unet3d", "cgan2d", "cgan3d", "attention_cgan", "scgan")
ABLATION_MODELS = ("no_adversarial", "no_attention", "no_spectral_norm", "no_feature_matching", "no_brain_rmse")
# Relative NRMSE reduction of SC-GAN against the 2D cGAN reported by the paper (abstract and Table 2).
PAPER_GAIN_OVER_2D_CGAN = {"pet": 0.24, "fa": 0.18, "md": 0.29}


def markdown_table(rows: dict[str, dict], labels: dict[str, str], interval: bool = False) -> list[str]:
    """NRMSE, PSNR and SSIM (mean ± sd over subjects, or mean [95 % interval] with ``interval``) and RMSE per row,
    the best NRMSE in bold (the oracle row excluded)."""
    lines = ["| model | NRMSE | PSNR (dB) | SSIM | RMSE |", "|---|---|---|---|---|"]
    ranked = [name for name in rows if name != "oracle"]
    best = min(ranked, key=lambda name: rows[name]["scores"]["summary"]["nrmse"]["mean"]) if ranked else None
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


def best_baseline(rows: dict[str, dict]) -> str:
    """The baseline without deep learning with the lowest mean NRMSE among ``rows``."""
    return min((n for n in BASELINE_LABELS if n in rows), key=lambda n: rows[n]["scores"]["summary"]["nrmse"]["mean"])
