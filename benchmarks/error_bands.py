# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Where a synthesis' error lies: its smooth part and its high-frequency part, inside the brain, per model.

Each volume ``v`` is split into ``smooth(v)`` = a Gaussian of σ ``--sigma`` voxels (MONAI ``GaussianFilter``) and
``v − smooth(v)``, the high-frequency (HF) band, where voxel-wise measurement noise lives. For every model and test
subject it reports, inside the brain mask and in the target's units:

- HF spread: standard deviation of the synthesis' HF band, beside the target's and the noise-free target's (a
  synthesis with the target's spread reproduces its noise; one with the noise-free target's does not);
- HF error and smooth error: RMS of the two bands of ``synthesis − target`` (their squares add up to about the MSE);
- offset share: the part of the MSE that is each subject's mean error in the brain, Σ mean² / Σ MSE over subjects (a
  global over- or under-estimate of the whole subject, which no local detail corrects), and with ``--latent NAME``
  the Pearson correlation over subjects of that mean error with the phantom's latent ``NAME`` (the entry's
  ``latents`` JSON, e.g. ``centiloid``, the amyloid load that sets the PET level and that the MRI barely shows).

A model that loses on the HF error copies texture it cannot predict; one that loses on the smooth error fits the
anatomy's contrast less well. Run it on the folders written by ``benchmarks/paper_table.py`` or ``recipe.py``:

    python benchmarks/error_bands.py --task fa --data data/benchmark \\
        unet3d=bundle/eval/paper/standard_15min_seed0_selected/fa/unet3d scgan=.../fa/scgan

Each ``name=folder`` needs ``folder/predictions/<subject>_<task>.nii.gz`` (searched recursively). Prints a markdown
table (means over the test subjects) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.networks.layers import GaussianFilter


def bands(volume: np.ndarray, blur: GaussianFilter) -> tuple[np.ndarray, np.ndarray]:
    """(smooth, high-frequency) parts of a 3D ``volume``."""
    smooth = blur(torch.as_tensor(volume, dtype=torch.float32)[None, None])[0, 0].numpy()
    return smooth, volume - smooth


def prediction_path(folder: Path, subject: str, task: str) -> Path:
    """``folder``'s synthesis of ``subject`` (``<subject>_<task>.nii.gz``, searched recursively).

    Raises:
        FileNotFoundError: there is none.
    """
    found = sorted(folder.rglob(f"{subject}_{task}.nii.gz"))
    if not found:
        raise FileNotFoundError(f"{folder}: no prediction {subject}_{task}.nii.gz under it (a paper_table/recipe run?)")
    return found[0]


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: the dataset folder whose ``datalist.json`` names the test subjects (every analysis script)."""
    parser.add_argument("--data", default="data/benchmark", help="dataset folder with datalist.json")


def load_datalist(folder: str | Path) -> tuple[Path, dict]:
    """``(folder, its datalist.json parsed)``; exits naming the file when it is missing."""
    folder = Path(folder)
    if not (folder / "datalist.json").is_file():
        raise SystemExit(f"{folder / 'datalist.json'}: not found (give --data the dataset folder)")
    return folder, json.loads((folder / "datalist.json").read_text())


def parse_runs(items: list[str]) -> dict[str, Path]:
    """``["name=folder", ...]`` → ``{name: folder}``; exits naming the item when one is not NAME=FOLDER with an
    existing folder."""
    runs = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise SystemExit(f"{item!r}: expected NAME=FOLDER with an existing folder")
        runs[name] = Path(folder)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="name=folder with predictions/")
    parser.add_argument("--task", required=True, help="target key of the datalist, e.g. fa")
    add_data_argument(parser)
    parser.add_argument("--sigma", type=float, default=1.0, help="Gaussian σ in voxels separating the bands")
    parser.add_argument("--latent", help="phantom latent (entry's latents JSON) to correlate the mean error with")
    args = parser.parse_args()
    data, datalist = load_datalist(args.data)
    runs = parse_runs(args.runs)
    noisefree_key = f"{args.task}_noisefree"
    blur = GaussianFilter(3, args.sigma)
    names = ["target"] + (["noise-free target"] if noisefree_key in datalist["test"][0] else []) + list(runs)
    scores: dict[str, dict[str, list[float]]] = {
        n: {"hf_spread": [], "hf_error": [], "smooth_error": [], "mse": [], "mean_error": []} for n in names
    }
    latents = []
    for entry in datalist["test"]:
        if args.latent:
            if "latents" not in entry:
                raise SystemExit(f"--latent {args.latent}: test entry {entry['subject']} has no 'latents' file")
            values = json.loads((data / entry["latents"]).read_text())
            if args.latent not in values:
                raise SystemExit(f"--latent {args.latent}: not in {data / entry['latents']} (has {sorted(values)})")
            latents.append(float(values[args.latent]))
        mask = nib.load(data / entry["mask"]).get_fdata() > 0.5
        target = nib.load(data / entry[args.task]).get_fdata()
        volumes = {"target": target}
        if "noise-free target" in names:
            volumes["noise-free target"] = nib.load(data / entry[noisefree_key]).get_fdata()
        for name, folder in runs.items():
            volumes[name] = np.squeeze(nib.load(prediction_path(folder, entry["subject"], args.task)).get_fdata())
        for name, volume in volumes.items():
            scores[name]["hf_spread"].append(float(bands(volume, blur)[1][mask].std()))
            smooth_error, hf_error = bands(volume - target, blur)
            scores[name]["hf_error"].append(float(np.sqrt(np.mean(hf_error[mask] ** 2))))
            scores[name]["smooth_error"].append(float(np.sqrt(np.mean(smooth_error[mask] ** 2))))
            scores[name]["mse"].append(float(np.mean((volume - target)[mask] ** 2)))
            scores[name]["mean_error"].append(float(np.mean((volume - target)[mask])))
    means = {}
    for name, s in scores.items():
        means[name] = {k: float(np.mean(s[k])) for k in ("hf_spread", "hf_error", "smooth_error")}
        mse, offset = np.sum(s["mse"]), np.sum(np.square(s["mean_error"]))
        means[name]["offset_share"] = float(offset / mse) if mse > 0 else 0.0
        if latents and name != "target":
            means[name]["offset_latent_correlation"] = float(np.corrcoef(s["mean_error"], latents)[0, 1])
    latent = f" | mean error ~ {args.latent} (r)" if latents else ""
    print(f"| {args.task} (σ {args.sigma} voxel) | HF spread | HF error | smooth error | offset share of MSE{latent} |")
    print("|---|---|---|---|---|" + ("---|" if latents else ""))
    for name, m in means.items():
        row = f"| {name} | {m['hf_spread']:.4f} | {m['hf_error']:.4f} | {m['smooth_error']:.4f} | "
        row += f"{100 * m['offset_share']:.0f} % |" if name != "target" else "— |"
        if latents:
            row += f" {m['offset_latent_correlation']:+.2f} |" if name != "target" else " — |"
        print(row)
    print(
        json.dumps(
            {
                "benchmark": "error_bands",
                "task": args.task,
                "sigma": args.sigma,
                "latent": args.latent,
                "subjects": len(datalist["test"]),
                "means": means,
            }
        )
    )


if __name__ == "__main__":
    main()
