# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Time the default training workflow spends waiting for data, as a share of its step time.

Runs ``train.json`` + ``tasks/pet.json`` (its 64³ patches, 1 subject × 2 patches per step, CacheDataset) on
the default synthetic subjects for one epoch and times, with ignite events, each wait for a batch
(GET_BATCH_STARTED → GET_BATCH_COMPLETED) against each whole iteration, for 0 and 1 data-loader workers (PyTorch
limits each worker to one thread).

    python benchmarks/data_pipeline.py                # ~3 min on 2 cores
    python benchmarks/data_pipeline.py --patch 32

Target: under 10 % of step time waiting for data. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_SHARE = 0.10


def measure(data: Path, workers: int, patch: int, iterations: int) -> dict:
    from ignite.engine import Events

    from custom_nets.evaluation.pipeline import bundle_workflow

    bundle = ROOT / "bundle"
    with tempfile.TemporaryDirectory() as root:
        workflow = bundle_workflow(
            bundle,
            "train.json",
            [bundle / "configs" / "tasks" / "pet.json"],
            bundle_root=root,
            dataset_dir=str(data),
            epochs=1,
            val_interval=2,
            num_workers=workers,
            patch_size=[patch] * 3,
            progress_bar=False,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        waits, steps, marks = [], [], {}

        @trainer.on(Events.GET_BATCH_STARTED)
        def _wait_start(_):
            marks["batch"] = time.perf_counter()

        @trainer.on(Events.GET_BATCH_COMPLETED)
        def _wait_end(_):
            waits.append(time.perf_counter() - marks["batch"])

        @trainer.on(Events.ITERATION_COMPLETED)
        def _step_end(engine):
            now = time.perf_counter()
            steps.append(now - marks.get("iteration", marks["batch"]))
            marks["iteration"] = now
            if engine.state.iteration >= iterations:
                engine.terminate()

        workflow.run()
        workflow.finalize()
    # the first iteration includes warm-up: leave it out of both
    waits, steps = waits[1:], steps[1:]
    return {
        "workers": workers,
        "patch": patch,
        "iterations": len(steps),
        "wait_s_median": statistics.median(waits),
        "step_s_median": statistics.median(steps),
        "wait_share": sum(waits) / sum(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic"), help="generated when it has no datalist")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    from custom_nets.datasets.phantom.dataset import synthetic_datalist

    data = synthetic_datalist(args.data, subjects=20, seed=0).parent
    rows = []
    for workers in args.workers:
        rows.append(measure(data, workers, args.patch, args.iterations))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print_table(
        ["workers", "patch", "iterations", "wait s (median)", "step s (median)", "time waiting"],
        [
            [
                r["workers"],
                f"{r['patch']}³",
                r["iterations"],
                f"{r['wait_s_median']:.3f}",
                f"{r['step_s_median']:.2f}",
                f"{100 * r['wait_share']:.1f} %",
            ]
            for r in rows
        ],
    )
    default = rows[0]
    verdict = (
        "met" if default["wait_share"] < TARGET_SHARE else f"missed by {default['wait_share'] / TARGET_SHARE:.1f}×"
    )
    print(
        f"\ndefault ({default['workers']} workers): {100 * default['wait_share']:.1f} % of step time waiting for "
        f"data; target < {100 * TARGET_SHARE:.0f} % {verdict}"
    )
    print(json.dumps({"benchmark": "data_pipeline", **machine(), "rows": rows, "target_share": TARGET_SHARE}))


if __name__ == "__main__":
    main()
