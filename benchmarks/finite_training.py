# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Do default-precision trainings end finite? Repeats short trainings of the bundle (``train.json`` + the PET
overlay, its default precision: bf16 autocast where the CPU or GPU runs it natively, else fp32) at 32³ and 64³
patches with different seeds, and reports for each run the precision the trainer used, whether it finished, and
whether every weight and the validation RMSE are finite.

    python benchmarks/finite_training.py                  # 10 runs at 32³ and 10 at 64³, 20 iterations each
    python benchmarks/finite_training.py --runs 3 --iterations 5

The reliability case it checks (``../shared/reliability/cases.md`` §1): at 32³ the CPU preset's bottleneck is one
voxel and the CPU bf16 conv3d backward returned uninitialised gradients there; 3 of 5 runs ended with NaN weights and
exit 0. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from custom_nets.datasets.phantom.dataset import synthetic_datalist
from custom_nets.evaluation.pipeline import bundle_workflow
from custom_nets.io import read_checkpoint
from custom_nets.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent


def one_run(data: Path, root: Path, patch: int, seed: int, iterations: int) -> dict:
    workflow = bundle_workflow(
        ROOT / "bundle",
        "train.json",
        [ROOT / "bundle" / "configs" / "tasks" / "pet.json"],
        bundle_root=str(root),
        dataset_dir=str(data),
        patch_size=[patch] * 3,
        seed=seed,
        epochs=1,
        epoch_length=iterations,
        batch_size=1,
        num_samples=1,
        train_limit=2,
        val_limit=1,
        progress_bar=False,
    )
    record = {"patch": patch, "seed": seed, "finished": False, "error": None}
    start = time.perf_counter()
    try:
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        workflow.run()
        workflow.finalize()
        record["finished"] = True
        bf16 = getattr(trainer, "amp_dtype", None) == torch.bfloat16 and not getattr(trainer, "_warned_bf16", False)
        record["precision"] = (
            "bf16 autocast"
            if bf16
            else "fp32 (bf16 refused: 1-voxel bottleneck)" if getattr(trainer, "amp_dtype", None) else "fp32"
        )
    except Exception as error:  # a stopped run is a result here (the non-finite guard raises)
        chain = []
        while error is not None:
            chain.append(f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
            error = error.__cause__ or error.__context__
        record["error"] = chain[-1]
    network = workflow.parser.get_parsed_content("network")
    record["weights_finite"] = all(bool(torch.isfinite(p).all()) for p in network.state_dict().values())
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    best = getattr(evaluator.state, "best_metric", None)
    record["val_rmse"] = float(best) if best is not None else None
    record["val_finite"] = best is not None and bool(torch.isfinite(torch.tensor(float(best))))
    saved = root / "models" / "model_pet.pt"
    record["saved_finite"] = saved.is_file() and all(
        bool(torch.isfinite(t).all()) for t in read_checkpoint(saved).values()
    )
    record["seconds"] = time.perf_counter() - start
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per patch size")
    parser.add_argument("--patches", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + runs − 1")
    parser.add_argument("--data", default=str(ROOT / "data" / "finite_training"))
    args = parser.parse_args(argv)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    data = synthetic_datalist(args.data, subjects=6, seed=4).parent
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for patch in args.patches:
            for seed in range(args.first_seed, args.first_seed + args.runs):
                record = one_run(data, Path(scratch) / f"p{patch}_s{seed}", patch, seed, args.iterations)
                records.append(record)
                print(json.dumps(record), flush=True)
    print()
    print("| patch | runs | finished | precision used | weights finite | validation RMSE finite | saved model finite |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for patch in args.patches:
        rows = [r for r in records if r["patch"] == patch]
        precision = sorted({r.get("precision", "—") for r in rows})
        counts = {key: sum(bool(r[key]) for r in rows) for key in ("finished", "weights_finite", "val_finite")}
        counts["saved_finite"] = sum(bool(r["saved_finite"]) for r in rows)
        summary[patch] = {"runs": len(rows), **counts, "precision": precision}
        print(
            f"| {patch}³ | {len(rows)} | {counts['finished']} | {', '.join(precision)} | {counts['weights_finite']} | "
            f"{counts['val_finite']} | {counts['saved_finite']} |"
        )
    print(
        json.dumps(
            {
                "benchmark": "finite_training",
                "cpu_native_bf16": cpu_has_native_bf16(),
                "iterations": args.iterations,
                "summary": summary,
            }
        )
    )
    return 0 if all(s["weights_finite"] == s["runs"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
