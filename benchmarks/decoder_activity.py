# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""How much of the brain the generator's last decoder maps (the ones its output head reads) are active in.

Loads a generator checkpoint of the CPU preset (``model_<task>.pt`` of a bundle run, or of a ``recipe.py`` /
``paper_table.py`` run folder), runs it on the central 64³ window of each test subject (train.json's patch and
sliding window) and reports, per map of the last decoder layer, the fraction of brain voxels where it is above 0 (a
ReLU map at 0 passes no gradient there; a LeakyReLU map passes 0.2 of it), the fraction where all maps are ≤ 0, and
the correction's spread (output − per-voxel prior, scaled target units) with a residual head. Used for the MD plateau
in ``bundle/docs/tuning.md``:

    python benchmarks/decoder_activity.py --task md --checkpoint <run>/scgan/models/model_md.pt \\
        --prior <run>/scgan/models/prior_md.json --final-act relu

Prints a markdown table (one row per test subject) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from error_bands import add_data_argument, load_datalist
from monai.transforms import Compose, DivisiblePad

from custom_nets import build_generator
from custom_nets.io import read_checkpoint
from custom_nets.transforms import preprocessing_transforms

TARGET_RANGES = {"pet": (0.0, 3.0), "fa": (0.0, 1.0), "md": (0.0, 3.5)}
PATCH = 64  # train.json's patch and sliding window
OUT_ACTS = {"pet": "relu", "fa": "sigmoid", "md": "relu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TARGET_RANGES))
    parser.add_argument("--checkpoint", required=True, help="generator weights (model_<task>.pt)")
    parser.add_argument("--prior", required=True, help="the run's per-voxel prior (prior_<task>.json)")
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True, help="residual_on_prior")
    parser.add_argument("--final-act", default=None, help="the generator's final_act the checkpoint was trained with")
    add_data_argument(parser)
    parser.add_argument("--subjects", type=int, default=3, help="first N test subjects")
    args = parser.parse_args()
    data, datalist = load_datalist(args.data)
    prior = json.loads(Path(args.prior).read_text())
    inputs = list(prior["input_keys"])
    generator = build_generator(
        preset="cpu",
        spatial_dims=3,
        in_channels=len(inputs) + 1,
        out_channels=1,
        out_act=OUT_ACTS[args.task],
        residual_channel=len(inputs) if args.residual else None,
        final_act=args.final_act,
        fold_spectral_norm=True,
    )
    state = read_checkpoint(args.checkpoint)
    generator.load_state_dict(state.get("network", state))
    generator.eval()
    maps: dict[str, torch.Tensor] = {}
    generator.decoder[-1].register_forward_hook(lambda module, i, output: maps.__setitem__("last", output.detach()))
    preprocess = Compose(preprocessing_transforms(inputs, None, 1, TARGET_RANGES[args.task], prior=prior))
    pad = DivisiblePad(PATCH)
    rows = []
    for entry in datalist["test"][: args.subjects]:
        item = preprocess({"image": [str(data / entry[k]) for k in inputs], "mask": str(data / entry["mask"])})
        image, brain = torch.as_tensor(pad(item["image"])).float(), torch.as_tensor(pad(item["mask"]))[0] > 0
        # the central window of the training patch size: mostly brain, as the training patches (centred on brain
        # voxels) are; instance norm normalises over the window, so the window matters
        corner = [(n - PATCH) // 2 for n in image.shape[1:]]
        window = tuple(slice(c, c + PATCH) for c in corner)
        brain = brain[window]
        with torch.no_grad():
            output = generator(image[(slice(None),) + window][None])[0, 0]
        last = maps["last"][0][:, brain]
        active = (last > 0).float().sum(1)
        silent = float((last <= 0).all(0).float().sum())
        corrections = [output[brain] - image[(-1,) + window][brain]] if args.residual else []
        voxels = float(brain.sum())
        rows.append(
            {
                "subject": entry["subject"],
                "active_fraction": [float(a) / voxels for a in active],
                "all_inactive_fraction": silent / voxels,
                "correction_sd": float(torch.cat(corrections).std()) if corrections else None,
            }
        )
    print("| subject | fraction of the brain where each last map is > 0 | where all are ≤ 0 | correction SD |")
    print("|---|---|---|---|")
    for row in rows:
        sd = "—" if row["correction_sd"] is None else f"{row['correction_sd']:.4f}"
        active = ", ".join(f"{a:.2f}" for a in row["active_fraction"])
        print(f"| {row['subject']} | {active} | {row['all_inactive_fraction']:.2f} | {sd} |")
    print(json.dumps({"benchmark": "decoder_activity", "task": args.task, "checkpoint": args.checkpoint, "rows": rows}))


if __name__ == "__main__":
    main()
