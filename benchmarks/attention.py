"""Time and peak memory of SC-GAN's self-attention block, forward + backward: full (fused, naive), pooled (the paper's
key set) and local windowed attention (``window_size``; each query attends to its w³ window).

Each case runs in a fresh subprocess so that its peak resident memory is its own (the peak-RSS counter is reset after
the block and its input are built; the reported figure is the peak increase over that point, with glibc's mmap
threshold fixed at 1 MiB so that freed tensors leave the RSS at once). Naive attention is only
run where its predicted peak (3.0 × N·M·4 B for forward + backward, measured factor from shared/reference/perf.md) is
below --naive-max-gb; otherwise the row gives the prediction, marked "extrapolated". Global cases with more than
--max-pairs query-key pairs (N·M) are not run (minutes each on 2 cores); their rows say so.

    python benchmarks/attention.py                                   # 16³ ... 40³ tokens; C = 64 and 128
    python benchmarks/attention.py --sizes 16 24 32 48 64 --channels 64   # local attention up to 64³ tokens
    python benchmarks/attention.py --sizes --quality-minutes 2.5    # SC-GAN pooled vs local attention, PET
    python benchmarks/attention.py --sizes --output-site             # the 1-channel output site in its four forms

With ``--output-site``, the output attention of the CPU preset (1 channel, keys pooled with stride 16) alone and the
whole CPU-preset generator (per-voxel prior as residual base) are timed forward + backward on 4 × 64³ patches, and
the bundle's whole SC-GAN training iteration (G and D, 2 × 64³ channels-last patches), in four forms with the same
outputs: the output projection applied after the attention (the paper's order), to the values before it
(``project_values_first``), values first with the output site's shortcuts (projections only on the voxels the pool
reads, the input as the query), and those with the attention evaluated once per distinct 16-bit input value
(``attend_per_level``, bf16 autocast only); alternating in one process, in the precision training uses. The site alone
gets its input in that precision, as the output convolution hands it over under autocast.

With ``--quality-minutes M``, SC-GAN with the paper's pooled attention and with local attention at every site
(``configs/models/local_attention.json``) are trained for M wall-clock minutes each on the paper table's standard
cohort (40 synthetic subjects, seed 0, 12 test subjects; ``data/benchmark``) and scored on the test split next to the
per-voxel baselines (brain-masked NRMSE, PSNR, SSIM, RMSE with 95 % intervals).

Prints a markdown table and one JSON line (peak-memory ratios naive / fused, naive / local, and the local variants'
peak per token at each size: constant when memory grows linearly in N).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import peak_mb_since, reset_peak, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {  # name: (implementation, pool_size, window_size)
    "naive": ("naive", 1, 0),
    "fused": ("fused", 1, 0),
    "pooled-naive": ("naive", 2, 0),
    "pooled-fused": ("fused", 2, 0),
    "local4-fused": ("fused", 1, 4),
    "local8-fused": ("fused", 1, 8),
    "local8-naive": ("naive", 1, 8),
}
NAIVE_FACTOR = 3.0  # peak ≈ 3 × the fp32 score matrix for forward + backward


def keys_per_query(variant: str, tokens: int) -> int:
    _, pool, window = VARIANTS[variant]
    return window**3 if window else tokens // (8 if pool == 2 else 1)


def run_case(size: int, channels: int, variant: str, threads: int, repeats: int) -> dict:
    """Runs in the child process: build, reset the peak counter, then time forward + backward."""
    import torch

    from custom_nets import SelfAttention3d

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    implementation, pool, window = VARIANTS[variant]
    block = SelfAttention3d(3, channels, pool_size=pool, implementation=implementation, window_size=window)
    with torch.no_grad():
        block.sigma.fill_(0.5)
    x = torch.randn(1, channels, size, size, size, requires_grad=True)
    upstream = torch.randn_like(x)
    base_kib = reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (block(x) * upstream).sum().backward()
        times.append(time.perf_counter() - start)
        x.grad = None
        block.zero_grad()
    return {"seconds": min(times), "peak_mb": peak_mb_since(base_kib)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[16, 24, 32, 40], help="cube side of the token grid")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--naive-max-gb", type=float, default=14.0, help="skip naive cases predicted above this")
    parser.add_argument("--max-pairs", type=float, default=2e9, help="skip global cases with more N·M pairs")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quality-minutes", type=float, default=0.0, help="also train pooled vs local SC-GAN (PET)")
    parser.add_argument("--data", default=str(ROOT / "data" / "benchmark"), help="the quality runs' cohort")
    parser.add_argument("--out", default=str(ROOT / "bundle" / "eval" / "attention"), help="the quality runs' outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-site", action="store_true", help="time the output site's two orders of operations")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case), threads=args.threads, repeats=args.repeats)))
        return

    rows = []
    for size in args.sizes:
        for channels in args.channels:
            for variant in args.variants:
                tokens = size**3
                keys = keys_per_query(variant, tokens)
                predicted_gb = NAIVE_FACTOR * tokens * keys * 4 / 1e9
                row = {"size": size, "tokens": tokens, "channels": channels, "variant": variant, "keys": keys}
                if VARIANTS[variant][0] == "naive" and predicted_gb > args.naive_max_gb:
                    row.update(seconds=None, peak_mb=predicted_gb * 1e3, extrapolated=True)
                elif not VARIANTS[variant][2] and tokens * keys > args.max_pairs:
                    row.update(seconds=None, peak_mb=None, extrapolated=False)
                else:
                    case = {"size": size, "channels": channels, "variant": variant}
                    script = os.path.abspath(__file__)
                    row.update(
                        run_child(script, case, args.threads, True, ["--repeats", str(args.repeats)]),
                        extrapolated=False,
                    )
                rows.append(row)
                print(f"  measured {row}", file=sys.stderr, flush=True)

    print("| tokens | C | variant | keys per query | fwd+bwd s | peak MB | peak B per token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        seconds = "—" if r["seconds"] is None else f"{r['seconds']:.3f}"
        if r["peak_mb"] is None:
            peak, per_token = f"not run (N·M > {args.max_pairs:.0e})", "—"
        else:
            peak = f"{r['peak_mb']:.0f}" + (" (extrapolated)" if r["extrapolated"] else "")
            per_token = f"{r['peak_mb'] * 1e6 / r['tokens']:.0f}"
        row = f"| {r['size']}³ = {r['tokens']} | {r['channels']} | {r['variant']} | {r['keys']} | {seconds} | {peak} |"
        print(row + f" {per_token} |")

    def find(variant: str, size: int, channels: int) -> dict | None:
        return next((r for r in rows if (r["variant"], r["size"], r["channels"]) == (variant, size, channels)), None)

    ratios = {}
    for r in rows:
        naive = find("naive", r["size"], r["channels"])
        if naive is None or r["variant"] not in ("fused", "local4-fused", "local8-fused") or not r["peak_mb"]:
            continue
        ratios.setdefault(f"{r['size']}^3_C{r['channels']}", {"naive_extrapolated": naive["extrapolated"]})[
            f"naive_over_{r['variant']}_peak"
        ] = round(naive["peak_mb"] / max(r["peak_mb"], 1e-3), 1)
    for key, value in ratios.items():
        print(f"naive / peak at {key}: " + ", ".join(f"{k}: {v}×" for k, v in value.items() if k.startswith("naive_o")))
    per_token = {
        variant: {r["size"]: round(r["peak_mb"] * 1e6 / r["tokens"]) for r in rows if r["variant"] == variant}
        for variant in ("local4-fused", "local8-fused")
        if any(r["variant"] == variant for r in rows)
    }
    quality = quality_runs(args) if args.quality_minutes > 0 else None
    output_site = output_site_timing(args) if args.output_site else None
    import torch

    print(
        json.dumps(
            {
                "benchmark": "attention",
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads,
                "rows": rows,
                "memory_ratios": ratios,
                "local_peak_bytes_per_token": per_token,
                "quality": quality,
                "output_site": output_site,
            }
        )
    )


def output_site_timing(args: argparse.Namespace) -> dict:
    """Forward + backward seconds of the output site and of the whole generator in four forms that give the same
    outputs: the output projection after the attention (the paper's order), on the values first, values first with
    the output site's shortcuts (projections only on the voxels the pool reads, the input as the query: see
    ``SelfAttention3d``), and those with the attention once per distinct 16-bit input value (``attend_per_level``).
    The forms alternate in this process (median of ``args.repeats`` rounds after a warm-up), so that their ratios are
    measured under the same load."""
    import statistics

    import torch

    from custom_nets import SelfAttention3d, build_generator
    from custom_nets.networks.blocks.self_attention import LEVEL_REDUCTION
    from custom_nets.precision import autocast_dtype

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = autocast_dtype("cpu")
    block = SelfAttention3d(3, 1, pool_size=2, pool_stride=16)
    generator = build_generator("cpu", in_channels=3, residual_channel=2)
    with torch.no_grad():
        for module in [block, *generator.modules()]:
            if isinstance(module, SelfAttention3d):
                module.sigma.fill_(0.5)
    cases = {"output site (1 channel, 4 × 64³)": (block, 1), "CPU-preset generator (4 × 64³)": (generator, 3)}
    # form: (project_values_first, shortcuts, per-level attention)
    forms = {
        "paper_order": (False, False, False),
        "values_first": (True, False, False),
        "shortcuts": (True, True, False),
        "per_level": (True, True, True),
    }
    gan_step = "SC-GAN training step (G + D, 2 × 64³, channels-last)"
    results = {}
    for name, (network, channels) in [*cases.items(), (gan_step, (None, 3))]:
        if network is None:  # the bundle's whole iteration: train.json's batch (1 subject × 2 patches) and defaults
            trainer, batch = _scgan_trainer(torch, seed=args.seed)
            network = trainer.g_network
        x = torch.rand(4, channels, 64, 64, 64)
        if channels == 1 and dtype is not None:  # the site's input under autocast: the output convolution's dtype
            x = x.to(dtype)
        x.requires_grad_()
        sites = [m for m in network.modules() if isinstance(m, SelfAttention3d) and m.project_values_first]
        shortcuts = {site: (site.skips_voxels, site.input_as_query) for site in sites}

        def step(form: str) -> float:
            first, fast, per_level = forms[form]
            for site in sites:
                site.project_values_first = first
                site.skips_voxels, site.input_as_query = shortcuts[site] if fast else (False, False)
                site.level_reduction = LEVEL_REDUCTION if per_level else 0
            start = time.perf_counter()
            if name == gan_step:
                trainer._iteration(trainer, batch)
                return time.perf_counter() - start
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = network(x)
            out.float().mean().backward()
            network.zero_grad()
            return time.perf_counter() - start

        for form in forms:  # warm-up
            step(form)
        rounds = [{form: step(form) for form in forms} for _ in range(max(args.repeats, 3))]
        row = {f"{form}_s": statistics.median(r[form] for r in rounds) for form in forms}
        row["values_first_speedup"] = row["paper_order_s"] / row["values_first_s"]
        row["shortcuts_speedup"] = row["values_first_s"] / row["shortcuts_s"]
        row["per_level_speedup"] = row["shortcuts_s"] / row["per_level_s"]
        results[name] = row
    print(
        "\n| forward + backward | W_o after the attention (paper) s | W_o on the values first s | values first + "
        "shortcuts s | + per-level s | values first / paper | shortcuts / values first | per-level / shortcuts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['paper_order_s']:.3f} | {r['values_first_s']:.3f} | {r['shortcuts_s']:.3f} | "
            f"{r['per_level_s']:.3f} | {r['values_first_speedup']:.2f}× | {r['shortcuts_speedup']:.2f}× | "
            f"{r['per_level_speedup']:.2f}× |"
        )
    return {"autocast": str(dtype), "rows": results}


def _scgan_trainer(torch, seed: int):
    """The bundle's SC-GAN iteration on random data: CPU presets with the per-voxel prior as residual base, adversarial
    + feature matching + L1 + brain RMSE with ``train.json``'s weights, Adam, its precision and channels-last."""
    from custom_nets import SelfAttention3d, build_discriminator, build_generator
    from custom_nets.trainer import ConditionalGanTrainer

    torch.manual_seed(seed)
    generator = build_generator("cpu", in_channels=3, out_channels=1, out_act="relu", residual_channel=2)
    discriminator = build_discriminator("cpu", in_channels=4)
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, SelfAttention3d):
                module.sigma.fill_(0.5)
    shape = (2, 64, 64, 64)
    batch = {"image": torch.rand(shape[0], 3, *shape[1:]), "label": torch.rand(shape[0], 1, *shape[1:])}
    batch["mask"] = torch.ones_like(batch["label"])
    trainer = ConditionalGanTrainer(
        torch.device("cpu"),
        1,
        [batch],
        generator,
        torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.5, 0.999)),
        discriminator,
        torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.5, 0.999)),
        lambda_fm=20.0,
        lambda_l1=200.0,
        lambda_rmse=200.0,
        amp=True,
        channels_last=True,
    )
    return trainer, batch


def quality_runs(args: argparse.Namespace) -> dict:
    """SC-GAN with pooled and with local attention at equal wall clock on PET, beside the baselines; prints a table."""
    from custom_nets.datasets.phantom.dataset import synthetic_datalist
    from custom_nets.evaluation.comparison import BASELINE_LABELS, MODEL_LABELS, markdown_table
    from custom_nets.evaluation.pipeline import RunSettings, compare

    datalist = synthetic_datalist(args.data, 40, args.seed, (0.65, 0.05, 0.30))  # paper_table.py's standard cohort
    # equal wall clock: train.json's own patches and batches, as paper_table.py's standard mode
    settings = RunSettings(
        minutes=args.quality_minutes, patch_size=None, batch_size=None, num_samples=None, seed=args.seed
    )
    out = Path(args.out) / f"{args.quality_minutes:g}min_seed{args.seed}"
    entry = compare(ROOT / "bundle", "pet", datalist, out, settings, ["scgan", "local_attention"])
    rows = entry["rows"]
    print("\nPET, " + f"{args.quality_minutes:g} min each, seed {args.seed}:")
    print("\n".join(markdown_table(rows, {**BASELINE_LABELS, **MODEL_LABELS}, interval=True)))
    summary = {}
    for name, row in rows.items():
        summary[name] = {"nrmse": row["scores"]["summary"]["nrmse"]["mean"]}
        if "run" in row:
            summary[name]["iterations"] = row["run"]["iterations"]
            print(f"{name}: {row['run']['iterations']} iterations")
    return {"task": "pet", "minutes": args.quality_minutes, "seed": args.seed, "rows": summary}


if __name__ == "__main__":
    main()
