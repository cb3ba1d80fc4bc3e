# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The generator's resize-convolutions computed at the input's resolution (``ResizeConv3d``, phase form) against
upsampling then convolving (the same function), alternating in one process so that the ratios share the machine state.

1. Layers: every resize-convolution of the CPU preset (the teacher) and of the student on a 64³ patch, batch 4 (a
   training step's batch and ``inference.json``'s ``sw_batch_size``), contiguous (inference) and channels-last
   (training with ``channels_last: true``): forward (inference mode) and forward + backward milliseconds with the
   phase form forced (``phase_mode="always"``) against upsampling then convolving (``"never"``), and the path
   ``"auto"`` takes: where the crossover lies.
2. Networks: the generator's training step (forward + backward + Adam, L1 to a target, 4 × 64³ channels-last, per-voxel
   prior as residual base) and the whole-brain inference with ``inference.json``'s sliding window (2 mm: 91×109×91;
   1 mm: 182×218×182; overlap 0.5), both presets, ``"auto"`` against ``"never"``; and the teacher / student ratio.

Precision: bf16 autocast where it is native (``custom_nets.precision``), fp32 elsewhere, as training and inference use.

    python benchmarks/resize_conv.py                # ~4 min on 2 cores
    python benchmarks/resize_conv.py --no-1mm       # skip the 1 mm inference (~1.5 min)

Prints markdown tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, print_table, timed  # noqa: E402

if TYPE_CHECKING:
    import torch

GRIDS = {"2mm": (91, 109, 91), "1mm": (182, 218, 182)}
PRESETS = {"teacher": "cpu", "student": "student"}
IN_CHANNELS = 3  # T1w, FLAIR and the per-voxel prior, as train.json builds them


def _set_phase_mode(network: "torch.nn.Module", mode: str) -> None:
    from custom_nets.networks.blocks.resize_conv import ResizeConv3d

    for module in network.modules():
        if isinstance(module, ResizeConv3d):
            module.phase_mode = mode


def _alternate(step: Callable[[], object], network: "torch.nn.Module", forms: dict[str, str], repeats: int) -> dict:
    """Median seconds of ``step`` under each ``phase_mode`` of ``forms`` (label -> mode), interleaved ``repeats``
    times so that every form sees the same machine state."""
    times: dict[str, list[float]] = {label: [] for label in forms}
    for _ in range(repeats):
        for label, mode in forms.items():
            _set_phase_mode(network, mode)
            times[label].append(timed(step, 1, warmup=1))
    _set_phase_mode(network, "auto")
    return {label: sorted(values)[len(values) // 2] for label, values in times.items()}


# layers: both forms forced, so each row measures the crossover; networks: the default against the old form
LAYER_FORMS = {"phases": "always", "upsampled": "never"}
NETWORK_FORMS = {"phases": "auto", "upsampled": "never"}


def layer_rows(dtype: "torch.dtype | None", repeats: int, channels_last: bool) -> list[dict]:
    import torch

    from custom_nets.networks import SCGANGenerator
    from custom_nets.networks.blocks.resize_conv import ResizeConv3d, _use_phases

    rows = []
    for name, preset in PRESETS.items():
        generator = SCGANGenerator.from_preset(preset, in_channels=IN_CHANNELS, residual_channel=IN_CHANNELS - 1)
        inputs: dict[str, torch.Tensor] = {}
        hooks = [
            module.register_forward_pre_hook(lambda m, args, key=key: inputs.setdefault(key, args[0].detach()))
            for key, module in generator.named_modules()
            if isinstance(module, ResizeConv3d)
        ]
        with torch.no_grad():
            generator(torch.randn(4, IN_CHANNELS, 64, 64, 64))
        for hook in hooks:
            hook.remove()
        modules = dict(generator.named_modules())
        for key, x in inputs.items():
            layer = modules[key]
            if channels_last:
                layer = layer.to(memory_format=torch.channels_last_3d)
                x = x.contiguous(memory_format=torch.channels_last_3d)
            x = x.clone().requires_grad_(True)

            def forward(layer=layer, x=x):
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
                    return layer(x.detach())

            def forward_backward(layer=layer, x=x):
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
                    y = layer(x)
                y.float().square().mean().backward()

            fwd = _alternate(forward, layer, LAYER_FORMS, repeats)
            both = _alternate(forward_backward, layer, LAYER_FORMS, repeats)
            rows.append(
                {
                    "network": name,
                    "layer": key,
                    "channels": f"{layer.in_channels}→{layer.out_channels}",
                    "input": f"{x.shape[2]}³",
                    "channels_last": channels_last,
                    "auto_takes_phases": bool(_use_phases("auto", x, layer.weight, layer.low_kernel_size)),
                    "forward_ms": {k: v * 1000 for k, v in fwd.items()},
                    "forward_backward_ms": {k: v * 1000 for k, v in both.items()},
                }
            )
    return rows


def network_rows(dtype: "torch.dtype | None", repeats: int, grids: list[str]) -> list[dict]:
    import torch

    from custom_nets.inferers import SeamlessSlidingWindowInferer
    from custom_nets.networks import SCGANGenerator

    torch.manual_seed(0)
    rows = []
    x = torch.randn(4, IN_CHANNELS, 64, 64, 64).contiguous(memory_format=torch.channels_last_3d)
    target = torch.randn(4, 1, 64, 64, 64)
    inferer = SeamlessSlidingWindowInferer((64, 64, 64), 4, 0.5, "hann", 0.125)  # inference.json's settings
    for name, preset in PRESETS.items():
        generator = SCGANGenerator.from_preset(preset, in_channels=IN_CHANNELS, residual_channel=IN_CHANNELS - 1)
        generator = generator.to(memory_format=torch.channels_last_3d)  # as train.json's channels_last: true
        optimiser = torch.optim.Adam(generator.parameters(), 1e-4)

        def train_step(generator=generator, optimiser=optimiser):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
                y = generator(x)
            loss = (y.float() - target).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        rows.append(
            {
                "network": name,
                "case": "training step 4×64³",
                **_alternate(train_step, generator, NETWORK_FORMS, repeats),
            }
        )
        deployed = SCGANGenerator.from_preset(
            preset, in_channels=IN_CHANNELS, residual_channel=IN_CHANNELS - 1, fold_spectral_norm=True
        ).eval()
        for grid in grids:
            image = torch.rand(1, IN_CHANNELS, *GRIDS[grid])

            def infer(deployed=deployed, image=image):
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
                    return inferer(image, deployed)

            rows.append(
                {
                    "network": name,
                    "case": f"whole-brain inference {grid}",
                    **_alternate(infer, deployed, NETWORK_FORMS, repeats),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternations per case (median reported)")
    parser.add_argument("--no-1mm", action="store_true", help="skip the 1 mm whole-brain inference")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)

    import torch

    from custom_nets.precision import autocast_dtype

    torch.set_num_threads(args.threads)
    dtype = autocast_dtype("cpu")
    layers = layer_rows(dtype, args.repeats, channels_last=False) + layer_rows(dtype, args.repeats, channels_last=True)
    print(f"\nResize-convolutions on 4 × 64³ patches, {dtype or 'fp32'} (median of {args.repeats} alternations)\n")
    print_table(
        [
            "network",
            "layer",
            "channels",
            "input",
            "layout",
            "auto takes",
            "forward ms (phase / upsampled)",
            "fwd+bwd ms",
        ],
        [
            [
                r["network"],
                r["layer"],
                r["channels"],
                r["input"],
                "channels-last" if r["channels_last"] else "contiguous",
                "phase" if r["auto_takes_phases"] else "upsampled",
                f"{r['forward_ms']['phases']:.1f} / {r['forward_ms']['upsampled']:.1f} "
                f"({r['forward_ms']['upsampled'] / r['forward_ms']['phases']:.2f}×)",
                f"{r['forward_backward_ms']['phases']:.1f} / {r['forward_backward_ms']['upsampled']:.1f} "
                f"({r['forward_backward_ms']['upsampled'] / r['forward_backward_ms']['phases']:.2f}×)",
            ]
            for r in layers
        ],
    )
    networks = network_rows(dtype, args.repeats, ["2mm"] + ([] if args.no_1mm else ["1mm"]))
    print(f"\nWhole networks, {dtype or 'fp32'}\n")
    print_table(
        ["network", "case", "phase form s", "upsampled s", "speed-up"],
        [
            [
                r["network"],
                r["case"],
                f"{r['phases']:.2f}",
                f"{r['upsampled']:.2f}",
                f"{r['upsampled'] / r['phases']:.2f}×",
            ]
            for r in networks
        ],
    )
    ratios = {}
    for case in sorted({r["case"] for r in networks}):
        pair = {r["network"]: r for r in networks if r["case"] == case}
        ratios[case] = {form: pair["teacher"][form] / pair["student"][form] for form in ("phases", "upsampled")}
    print("\nTeacher / student time ratio\n")
    print_table(
        ["case", "phase form", "upsampled"],
        [[case, f"{r['phases']:.2f}×", f"{r['upsampled']:.2f}×"] for case, r in ratios.items()],
    )
    summary = {
        "benchmark": "resize_conv",
        "machine": machine(),
        "autocast": str(dtype),
        "repeats": args.repeats,
        "layers": layers,
        "networks": networks,
        "teacher_over_student": ratios,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
