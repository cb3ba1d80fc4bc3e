# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Whole-brain sliding-window inference with the default generator (CPU preset, 64³ windows, Gaussian blending) at
2 mm (91×109×91) and 1 mm (182×218×182), the latter natively and through the generator's own 2 mm grid (resampled
down and back, what ``pixdim: [2, 2, 2]`` does in inference.json): seconds and peak memory, sweeping the window
batch and the overlap.

    python benchmarks/inference.py                    # ~8 min on 2 cores
    python benchmarks/inference.py --grids 1mm --sweep-1mm
    python benchmarks/inference.py --grids 2mm --overlaps 0.25

Target: 1 mm whole-brain inference within 10 s on 2 cores (the bundle's default overlap is 0.25). Every case runs in
a fresh process. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, peak_mb_since, print_table, reset_peak, run_child, timed  # noqa: E402

GRIDS = {"2mm": (91, 109, 91), "1mm": (182, 218, 182), "1mm-via-2mm": (182, 218, 182)}
TARGET_SECONDS_1MM = 10.0


def run_case(grid: str, sw_batch_size: int, overlap: float, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F
    from monai.inferers import SlidingWindowInferer

    from custom_nets import build_generator
    from custom_nets.precision import autocast_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    generator = build_generator(preset="cpu", in_channels=2, out_channels=1, out_act="relu").to(device).eval()
    image = torch.randn(1, 2, *GRIDS[grid], device=device)
    inferer = SlidingWindowInferer((64, 64, 64), sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
    dtype = autocast_dtype(device)

    def infer() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            if grid != "1mm-via-2mm":
                return inferer(image, generator)
            # the default generator is trained at 2 mm: resample to its grid and back, as inference.json does with
            # `pixdim: [2, 2, 2]` (Spacingd, then Invertd on the prediction)
            coarse = F.interpolate(image, size=GRIDS["2mm"], mode="trilinear", align_corners=False)
            return F.interpolate(inferer(coarse, generator), size=GRIDS[grid], mode="trilinear", align_corners=False)

    if grid == "2mm":
        infer()  # warm-up (one-off allocations); at 1 mm a run is long enough for them not to matter
    base = reset_peak()
    seconds = timed(infer, repeats, warmup=0, device=device)
    interval = max(int(64 * (1 - overlap)), 1)
    scanned = GRIDS["2mm"] if grid == "1mm-via-2mm" else GRIDS[grid]
    windows = math.prod(math.ceil(max(s - 64, 0) / interval) + 1 for s in scanned)  # MONAI's scan
    return {"seconds": seconds, "peak_mb": peak_mb_since(base, device), "autocast": str(dtype), "windows": windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--sw-batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--sweep-1mm", action="store_true", help="full sweep at 1 mm too (default: batch 4 only)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(**json.loads(args.case), repeats=args.repeats)))
        return

    script = os.path.abspath(__file__)
    rows = []
    for grid in args.grids:
        for overlap in args.overlaps:
            for sw_batch_size in args.sw_batch_sizes if grid == "2mm" or args.sweep_1mm else [4]:
                case = {"grid": grid, "sw_batch_size": sw_batch_size, "overlap": overlap}
                row = {**case, **run_child(script, case, args.threads)}
                rows.append(row)
                print(f"  {row}", file=sys.stderr, flush=True)
    print_table(
        ["grid", "overlap", "window batch", "windows", "seconds", "peak MB (upper bound)"],
        [
            [
                f"{r['grid']} {GRIDS[r['grid']]}",
                r["overlap"],
                r["sw_batch_size"],
                r["windows"],
                f"{r['seconds']:.2f}",
                f"{r['peak_mb']:.0f}",
            ]
            for r in rows
        ],
    )
    default_1mm = [r for r in rows if r["grid"].startswith("1mm") and r["overlap"] == 0.25]
    summary = {"benchmark": "inference", **machine(), "threads": args.threads, "rows": rows}
    if default_1mm:
        best = min(default_1mm, key=lambda r: r["seconds"])
        summary["best_1mm_default_overlap_seconds"] = round(best["seconds"], 2)
        summary["target_1mm_seconds"] = TARGET_SECONDS_1MM
        verdict = (
            "met" if best["seconds"] <= TARGET_SECONDS_1MM else f"missed by {best['seconds'] / TARGET_SECONDS_1MM:.2f}×"
        )
        print(
            f"\n1 mm whole brain, overlap 0.25: best {best['seconds']:.1f} s ({best['grid']}, window batch "
            f"{best['sw_batch_size']}); "
            f"target {TARGET_SECONDS_1MM:.0f} s {verdict}"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
