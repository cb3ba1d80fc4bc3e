# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Single-pass whole-volume generator forward (no sliding window): the CPU preset at 128³ and the paper's preset
(Lan et al. 2021: 8 levels, 64–512 channels, attention at 8³, 32³ and on the 256³ output) at 256³.

For every attention site the table gives the bytes an N×M score matrix would take in fp32 (N tokens, M pooled keys).
A naive forward holds the scores and their softmax at once (2 × N×M × 4 B); a measured peak of the whole forward
pass below that shows that no such matrix is ever held (SDPA's fused kernels work in blocks).

    python benchmarks/whole_volume.py                 # ~2 min on 2 cores
    python benchmarks/whole_volume.py --cases cpu:128
    python benchmarks/whole_volume.py --cases cpu:182x218x182:local   # 1 mm MNI brain, local attention everywhere

A case is ``preset:size[:local]``: ``size`` a cube side or ``XxYxZ`` (zero-padded up to the generator's size
divisor, as the bundle's inferer pads), ``local`` puts local windowed attention (4³ windows) at every site instead of
the paper's pooled global attention.

Target: the paper preset at 256³ within 8 GB on CPU. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, peak_mb_since, reset_peak, run_child  # noqa: E402

TARGET_GB_256 = 8.0


def run_case(preset: str, shape: list[int], local: bool = False) -> dict:
    import torch

    from custom_nets import SelfAttention3d, build_generator
    from custom_nets.networks.generator import ATTENTION_SITES
    from custom_nets.precision import autocast_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    sites_arg = {"local_attention_sites": ATTENTION_SITES} if local else {}
    generator = build_generator(preset=preset, in_channels=2, out_channels=1, **sites_arg).to(device).eval()
    divisor = generator.size_divisor
    padded = [math.ceil(n / divisor) * divisor for n in shape]
    sites = []

    def record(module, inputs, output) -> None:
        x = inputs[0]
        tokens = x.shape[2:].numel()
        if module.window_size:
            keys = module.window_volume  # per query
        else:
            keys = math.prod((s - module.pool_size) // module.pool_stride + 1 for s in x.shape[2:])
        sites.append({"channels": int(x.shape[1]), "grid": list(x.shape[2:]), "tokens": tokens, "keys": keys})

    hooks = [m.register_forward_hook(record) for m in generator.modules() if isinstance(m, SelfAttention3d)]
    image = torch.randn(1, 2, *padded, device=device)
    dtype = autocast_dtype(device)
    base = reset_peak()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = generator(image)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_mb_since(base, device)
    for hook in hooks:
        hook.remove()
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "output_shape": list(output.shape),
        "padded_shape": padded,
        "finite": bool(torch.isfinite(output).all()),
        "params_m": sum(p.numel() for p in generator.parameters()) / 1e6,
        "attention_sites": sites,
        "autocast": str(dtype),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["cpu:128", "paper:256"], help="preset:size")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(**json.loads(args.case))))
        return

    script = os.path.abspath(__file__)
    rows = []
    for spec in args.cases:
        preset, size, *attention = spec.split(":")
        shape = [int(n) for n in size.split("x")] if "x" in size else [int(size)] * 3
        local = attention == ["local"]
        case = {"preset": preset, "shape": shape, "local": local}
        row = {"preset": preset, "size": size, "attention": "local" if local else "pooled"}
        row.update(run_child(script, case, args.threads, exact_memory=True))
        for site in row["attention_sites"]:
            # local sites hold no N×M matrix: M is per query
            site["score_matrix_mb"] = site["tokens"] * site["keys"] * 4 / 2**20 if site["keys"] and not local else None
        rows.append(row)
        print(f"  {spec}: {row['seconds']:.1f} s, peak {row['peak_mb']:.0f} MB", file=sys.stderr, flush=True)

    # a naive forward holds the N×M scores and their softmax at once: 2 × N×M × 4 B at the largest site
    header = (
        "| preset | attention | input | params (M) | seconds | peak MB | naive attention at the largest site (MB) |"
    )
    print(header + " shown |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sizes = [s["score_matrix_mb"] for s in r["attention_sites"] if s["score_matrix_mb"]]
        naive = 2 * max(sizes) if sizes else 0.0
        r["naive_largest_site_mb"] = naive
        shown = "yes: whole pass below it" if r["peak_mb"] < naive else "no"
        print(
            f"| {r['preset']} | {r['attention']} | {r['size']} | {r['params_m']:.2f} | {r['seconds']:.1f} | "
            f"{r['peak_mb']:.0f} | {naive:.0f} | {shown} |"
        )
    print()
    print("| case | site grid | channels | tokens N | keys M (per query for local) | N×M fp32 MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for s in r["attention_sites"]:
            grid = "×".join(map(str, s["grid"]))
            mb = "—" if s["score_matrix_mb"] is None else f"{s['score_matrix_mb']:.0f}"
            case = f"{r['preset']} {r['size']} {r['attention']}"
            print(f"| {case} | {grid} | {s['channels']} | {s['tokens']} | {s['keys']} | {mb} |")
    summary = {"benchmark": "whole_volume", **machine(), "threads": args.threads, "rows": rows}
    paper = [r for r in rows if r["preset"] == "paper" and r["size"] == "256" and r["attention"] == "pooled"]
    if paper:
        gb = paper[0]["peak_mb"] / 1024
        verdict = "met" if gb <= TARGET_GB_256 else f"missed by {gb / TARGET_GB_256:.2f}×"
        print(f"\npaper preset 256³ forward: peak {gb:.2f} GB, target {TARGET_GB_256:.0f} GB {verdict}")
        summary["paper_256_peak_gb"] = round(gb, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
