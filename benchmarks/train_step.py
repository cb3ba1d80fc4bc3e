# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training step of the default configuration against the machine's own conv3d peak, measured in the same run.

1. Peak: conv3d forward + backward GFLOP/s on the generator's shapes (3³ kernels, 32–256 channels), fp32 and bf16.
2. Step: one ``ConditionalGanTrainer`` iteration of the default configuration (CPU presets, G and D, adversarial +
   feature matching + L1 + brain RMSE, Adam) on 4 patches (``batch_size`` 2 × ``num_samples`` 2) at 32³ and 64³:
   seconds, GFLOP (``torch.utils.flop_counter``), achieved GFLOP/s, ratio to the measured peak, peak memory; fp32,
   bf16 autocast and channels-last. The same for the generator alone (3D U-Net mode) and for MONAI's ``UNet`` with
   similar FLOPs, as a reference for how well the hardware runs a plain MONAI network. And SC-GAN with the
   discriminator on one random crop per iteration (``discriminator_roi_size``, default 32³), where the patch is
   larger than the crop.

    python benchmarks/train_step.py                   # 32³ and 64³, ~5 min on 2 cores
    python benchmarks/train_step.py --sizes 32 --repeats 2
    python benchmarks/train_step.py --sizes 64 --profile generator_only    # where the time goes
    python benchmarks/train_step.py --sizes 64 --discriminator-roi-size 32 --repeats 3

Every case runs in a fresh process (its own peak memory). bf16 cases run only where bf16 is native (CUDA, or CPUs
with AVX512-BF16/AMX); elsewhere the table says why and gives the measured bf16/fp32 conv ratio instead.
Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, peak_mb_since, reset_peak, run_child, timed  # noqa: E402

PEAK_SHAPES = [  # (batch, in channels, out channels, size): the generator's convolutions on 4 patches of 32³/64³
    (4, 32, 32, 32),
    (4, 64, 64, 16),
    (4, 128, 128, 8),
    (2, 32, 32, 64),
    (2, 64, 64, 32),
    (2, 128, 128, 16),
    (2, 256, 256, 8),
]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_case(dtype: str, repeats: int) -> dict:
    """Best conv3d fwd+bwd GFLOP/s over PEAK_SHAPES (bf16: autocast, as training would use it)."""
    import torch

    device = _device()
    rows = []
    shapes = PEAK_SHAPES if dtype == "fp32" else PEAK_SHAPES[:1]  # one shape is enough to show a slow bf16 kernel
    for batch, cin, cout, size in shapes:
        conv = torch.nn.Conv3d(cin, cout, 3, padding=1).to(device)
        x = torch.randn(batch, cin, size, size, size, device=device, requires_grad=True)

        def step() -> None:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                y = conv(x)
            y.float().sum().backward()

        flops = _flops(step)
        seconds = timed(step, repeats if dtype == "fp32" or _native_bf16() else 1, device=device)
        rows.append({"shape": [batch, cin, cout, size], "gflops": flops / 1e9, "gflop_per_s": flops / seconds / 1e9})
    best = max(rows, key=lambda r: r["gflop_per_s"])
    return {"dtype": dtype, "peak_gflop_per_s": best["gflop_per_s"], "best_shape": best["shape"], "rows": rows}


def _native_bf16() -> bool:
    import torch

    from custom_nets.precision import cpu_has_native_bf16

    return torch.cuda.is_available() or cpu_has_native_bf16()


def step_case(
    model: str, size: int, precision: str, channels_last: bool, repeats: int, discriminator_roi_size: int | None = None
) -> dict:
    import torch
    from monai.networks.nets import UNet

    from custom_nets import build_discriminator, build_generator
    from custom_nets.trainer import ConditionalGanTrainer

    device = _device()
    torch.manual_seed(0)
    if model == "monai_unet":
        generator = UNet(3, 2, 1, channels=(32, 64, 128, 256, 320), strides=(2, 2, 2, 2), num_res_units=2)
    else:
        generator = build_generator(preset="cpu", in_channels=2, out_channels=1, out_act="relu")
    generator = generator.to(device)
    discriminator = build_discriminator(preset="cpu", in_channels=3).to(device) if model == "scgan" else None
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for network in (generator, discriminator):
        if network is not None:
            network.to(memory_format=memory_format)
    g_optimizer = torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.5, 0.999)) if discriminator else None
    shape = (4, 2, size, size, size)
    image = torch.randn(shape).contiguous(memory_format=memory_format)
    batch = {
        "image": image,
        "label": torch.rand(4, 1, size, size, size).contiguous(memory_format=memory_format),
        "mask": torch.ones(4, 1, size, size, size),
    }
    trainer = ConditionalGanTrainer(
        device,
        1,
        [batch],
        generator,
        g_optimizer,
        discriminator,
        d_optimizer,
        lambda_fm=20.0,
        amp=False,
        discriminator_roi_size=discriminator_roi_size,
    )
    if precision == "bf16":
        trainer.amp_dtype = torch.bfloat16

    def step() -> None:
        trainer._iteration(trainer, batch)

    step()  # warm-up (allocations, kernel selection)
    flops = _flops(step)
    base = reset_peak()
    seconds = timed(step, repeats, warmup=0, device=device)
    return {
        "seconds": seconds,
        "gflop": flops / 1e9,
        "gflop_per_s": flops / seconds / 1e9,
        "peak_mb": peak_mb_since(base, device),
        "g_loss": trainer.state.output["loss"],
        "params_m": sum(p.numel() for p in generator.parameters()) / 1e6,
    }


def profile_step(model: str, size: int, threads: int) -> None:
    """Where one step's time goes: the operators with the most self CPU time (torch.profiler), as a table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    holder: dict = {}
    original = timed

    def capture(step, repeats, warmup=1, device="cpu"):
        holder["step"] = step
        return original(step, 1, warmup=0, device=device)

    globals()["timed"] = capture
    step_case(model, size, "fp32", False, repeats=1)
    globals()["timed"] = original
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        holder["step"]()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--discriminator-roi-size", type=int, default=32, help="crop D judges in the extra SC-GAN row (0: no row)"
    )
    parser.add_argument("--profile", choices=["scgan", "generator_only", "monai_unet"], help="profile one step instead")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        profile_step(args.profile, args.sizes[0], args.threads)
        return
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        case = json.loads(args.case)
        kind = case.pop("kind")
        result = peak_case(**case, repeats=args.repeats) if kind == "peak" else step_case(**case, repeats=args.repeats)
        print(json.dumps(result))
        return

    script = os.path.abspath(__file__)
    peaks = {dtype: run_child(script, {"kind": "peak", "dtype": dtype}, args.threads) for dtype in ("fp32", "bf16")}
    native = _native_bf16()
    peak = max(p["peak_gflop_per_s"] for p in peaks.values()) if native else peaks["fp32"]["peak_gflop_per_s"]
    bf16_conv_ratio = peaks["bf16"]["rows"][0]["gflop_per_s"] / peaks["fp32"]["rows"][0]["gflop_per_s"]
    rows = []
    for size in args.sizes:
        variants = [("scgan", "fp32", False), ("scgan", "fp32", True), ("scgan", "bf16", False)]
        variants += [("generator_only", "fp32", False), ("monai_unet", "fp32", False)]
        roi = args.discriminator_roi_size if 0 < args.discriminator_roi_size < size else None
        if roi:
            variants += [("scgan", "fp32", False, roi)]
        for model, precision, channels_last, *crop in variants:
            row = {"model": model, "size": size, "precision": precision, "channels_last": channels_last}
            if crop:
                row["discriminator_roi_size"] = crop[0]
            if precision == "bf16" and not native:
                row["skipped"] = (
                    f"no native bf16 on this CPU: a bf16 conv runs at {bf16_conv_ratio:.3f}× the fp32 speed "
                    "(measured above)"
                )
            else:
                case = {"kind": "step", "model": model, "size": size, "precision": precision}
                case.update({"discriminator_roi_size": crop[0]} if crop else {})
                row.update(run_child(script, {**case, "channels_last": channels_last}, args.threads))
                row["ratio_to_peak"] = row["gflop_per_s"] / peak
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)

    print("| conv3d fwd+bwd peak | GFLOP/s | best shape (N, Cin, Cout, size) |")
    print("|---|---|---|")
    for dtype, p in peaks.items():
        print(f"| {dtype} | {p['peak_gflop_per_s']:.1f} | {tuple(p['best_shape'])} |")
    print()
    print(
        "| model | patch | precision | channels-last | s / step | GFLOP / step | GFLOP/s | of peak | peak MB (bound) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "discriminator_roi_size" in r:
            r = {**r, "model": f"{r['model']} (D on a {r['discriminator_roi_size']}³ crop)"}
        if "skipped" in r:
            print(
                f"| {r['model']} | {r['size']}³ | {r['precision']} | {r['channels_last']} | not run: {r['skipped']} |"
            )
            continue
        print(
            f"| {r['model']} | {r['size']}³ | {r['precision']} | {r['channels_last']} | {r['seconds']:.3f} | "
            f"{r['gflop']:.1f} | {r['gflop_per_s']:.1f} | {100 * r['ratio_to_peak']:.0f} % | {r['peak_mb']:.0f} |"
        )
    default = {
        r["size"]: r
        for r in rows
        if r["model"] == "scgan"
        and r["precision"] == "fp32"
        and not r["channels_last"]
        and "discriminator_roi_size" not in r
    }
    cropped = {r["size"]: r for r in rows if "discriminator_roi_size" in r}
    generator_only = {r["size"]: r for r in rows if r["model"] == "generator_only"}
    summary = {
        "benchmark": "train_step",
        **machine(),
        "threads": args.threads,
        "native_bf16": native,
        "peak_gflop_per_s": {d: round(p["peak_gflop_per_s"], 2) for d, p in peaks.items()},
        "bf16_over_fp32_conv_speed": round(bf16_conv_ratio, 4),
        "default_step_ratio_to_peak": {s: round(r["ratio_to_peak"], 3) for s, r in default.items()},
        "d_crop_step_over_default": {s: round(r["seconds"] / default[s]["seconds"], 3) for s, r in cropped.items()},
        "generator_only_step_over_default": {
            s: round(r["seconds"] / default[s]["seconds"], 3) for s, r in generator_only.items()
        },
        "target_ratio_to_peak": 0.7,
        "rows": rows,
    }
    for size, r in default.items():
        if r["ratio_to_peak"] < 0.7:
            print(f"\ntarget missed at {size}³: default step at {100 * r['ratio_to_peak']:.0f} % of peak (target 70 %)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
