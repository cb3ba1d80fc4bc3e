# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Where a synthesis' error lies in the anatomy: RMSE, mean signed error and share of the squared error per region.

The synthetic subjects (``custom_nets.datasets.phantom``) carry a label map (datalist key ``labels``, names in the
datalist's ``label_names``: cortex, ventricles, sulcal CSF, white-matter tracts, ...). For every model this reports,
inside the brain mask of the test subjects and in the target's units, per region: the RMSE, the mean signed error
(synthesis − target; negative = under-estimated) and the region's share of the model's squared error, pooled over
all test voxels. A region whose error equals the per-voxel baseline's is one the model has not learned.

    python benchmarks/region_errors.py --task md --data data/benchmark \\
        polynomial=bundle/eval/paper/standard_15min_seed0_selected/md/baselines/cubic_polynomial \\
        unet3d=.../md/unet3d scgan=.../md/scgan

Each ``name=folder`` needs ``<subject>_<task>.nii.gz`` somewhere under ``folder`` (a paper_table/recipe run folder,
or a baseline's folder). Prints a markdown table and one JSON line.

Raises:
    SystemExit: a run is not NAME=FOLDER, or the datalist has no ``labels``/``label_names`` (not the phantom's).
"""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
from error_bands import add_data_argument, load_datalist, parse_runs, prediction_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="name=folder with the predictions")
    parser.add_argument("--task", required=True, help="target key of the datalist, e.g. md")
    add_data_argument(parser)
    args = parser.parse_args()
    data, datalist = load_datalist(args.data)
    if "label_names" not in datalist or "labels" not in datalist["test"][0]:
        raise SystemExit(f"{data / 'datalist.json'}: no 'labels'/'label_names' (expected the synthetic subjects)")
    runs = parse_runs(args.runs)
    labels = {int(k): v for k, v in datalist["label_names"].items()}
    counts = np.zeros(max(labels) + 1)
    sums = {name: {"squared": np.zeros_like(counts), "signed": np.zeros_like(counts)} for name in runs}
    for entry in datalist["test"]:
        mask = nib.load(data / entry["mask"]).get_fdata() > 0.5
        region = np.rint(nib.load(data / entry["labels"]).get_fdata()).astype(int)[mask]
        target = nib.load(data / entry[args.task]).get_fdata()[mask]
        counts += np.bincount(region, minlength=counts.size)
        for name, folder in runs.items():
            error = (
                np.squeeze(nib.load(prediction_path(folder, entry["subject"], args.task)).get_fdata())[mask] - target
            )
            sums[name]["squared"] += np.bincount(region, error**2, minlength=counts.size)
            sums[name]["signed"] += np.bincount(region, error, minlength=counts.size)
    rows = {}
    for label, label_name in labels.items():
        if counts[label] == 0:
            continue
        rows[label_name] = {"voxel_share": float(counts[label] / counts.sum())}
        for name, s in sums.items():
            rows[label_name][name] = {
                "rmse": float(np.sqrt(s["squared"][label] / counts[label])),
                "mean_error": float(s["signed"][label] / counts[label]),
                "mse_share": float(s["squared"][label] / s["squared"].sum()),
            }
    overall = {name: float(np.sqrt(s["squared"].sum() / counts.sum())) for name, s in sums.items()}
    print(f"| {args.task}: region | voxels | " + " | ".join(runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for label_name, row in rows.items():
        cells = [f"{row[n]['rmse']:.4f} ({row[n]['mean_error']:+.3f}, {100 * row[n]['mse_share']:.0f} %)" for n in runs]
        print(f"| {label_name} | {100 * row['voxel_share']:.1f} % | " + " | ".join(cells) + " |")
    print("| brain | 100 % | " + " | ".join(f"{overall[n]:.4f}" for n in runs) + " |")
    print("(each cell: RMSE (mean signed error, share of the model's squared error), target units)")
    print(
        json.dumps(
            {
                "benchmark": "region_errors",
                "task": args.task,
                "subjects": len(datalist["test"]),
                "rmse": overall,
                "regions": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
