"""Build SC-GAN's networks, count their parameters and FLOPs, and time a training-style pass on a random patch.

    python -m custom_nets.showcase                 # the CPU preset on a 64³ patch, and the paper preset at 256³
    python -m custom_nets.showcase --patch 32      # smaller

Counts for the paper preset are taken on PyTorch's meta device (shapes only, no memory, no time).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from custom_nets.networks.discriminator import SCGANDiscriminator
from custom_nets.networks.generator import SCGANGenerator
from custom_nets.precision import autocast_dtype


def count_forward(generator: torch.nn.Module, discriminator: torch.nn.Module, patch: int, device: str) -> dict:
    """Parameters (millions) and forward GFLOP of G on ``(1, 2, patch³)`` and of D on the (input, synthesis) pair."""
    with torch.device(device), torch.no_grad():
        x = torch.empty(1, 2, patch, patch, patch).normal_()
        with FlopCounterMode(display=False) as g_counter:
            fake = generator(x)
        with FlopCounterMode(display=False) as d_counter:
            discriminator(torch.cat((x, fake), dim=1))
    return {
        "G_params_M": sum(p.numel() for p in generator.parameters()) / 1e6,
        "D_params_M": sum(p.numel() for p in discriminator.parameters()) / 1e6,
        "G_forward_GFLOP": g_counter.get_total_flops() / 1e9,
        "D_forward_GFLOP": d_counter.get_total_flops() / 1e9,
    }


def time_pass(
    generator: torch.nn.Module, discriminator: torch.nn.Module, patch: int, dtype: torch.dtype | None, repeats: int
) -> float:
    """Seconds for G forward (autocast to ``dtype`` unless None) + D forward in fp32 on the pair + backward through
    both, the best of ``repeats``."""
    x = torch.randn(1, 2, patch, patch, patch)
    best = float("inf")
    for timed in range(repeats + 1):  # the first pass builds oneDNN kernels and is not timed
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            fake = generator(x)
        # The discriminator stays in fp32: a PatchGAN under bf16 autocast went NaN within 50 steps in a prototype.
        logits = discriminator(torch.cat((x, fake.float()), dim=1))[-1]
        (logits.mean() + fake.float().abs().mean()).backward()
        best = min(best, time.perf_counter() - start) if timed else best
        generator.zero_grad(set_to_none=True)
        discriminator.zero_grad(set_to_none=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=64, help="cube side of the random patch for the CPU preset")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    generator, discriminator = SCGANGenerator.from_preset("cpu"), SCGANDiscriminator.from_preset("cpu")
    generator.check_input_shape([1, 2] + [args.patch] * 3)
    cpu = count_forward(generator, discriminator, args.patch, "cpu")
    with torch.device("meta"):
        paper_g, paper_d = SCGANGenerator.from_preset("paper").eval(), SCGANDiscriminator.from_preset("paper").eval()
    paper = count_forward(paper_g, paper_d, 256, "meta")
    fp32 = time_pass(generator, discriminator, args.patch, None, repeats=args.repeats)
    reduced = autocast_dtype("cpu")
    bf16 = time_pass(generator, discriminator, args.patch, reduced, repeats=args.repeats) if reduced else None

    print(f"SC-GAN networks, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| preset | input | G params | D params | G forward | D forward |")
    print("|---|---|---|---|---|---|")
    for name, size, c in (("cpu", args.patch, cpu), ("paper", 256, paper)):
        print(
            f"| {name} | 1×2×{size}³ | {c['G_params_M']:.2f} M | {c['D_params_M']:.2f} M "
            f"| {c['G_forward_GFLOP']:.1f} GFLOP | {c['D_forward_GFLOP']:.1f} GFLOP |"
        )
    print(f"\nCPU preset, G+D forward and backward on a random {args.patch}³ patch (best of {args.repeats}):")
    if bf16 is None:
        print(
            f"  fp32: {fp32:.3f} s   bf16: skipped, this CPU has no native bf16 (PyTorch capability "
            f"{torch.backends.cpu.get_cpu_capability()}), where bf16 convolutions run hundreds of times slower"
        )
    else:
        print(f"  fp32: {fp32:.3f} s   bf16 autocast for G: {bf16:.3f} s   ratio {fp32 / bf16:.2f}×")
    print(
        json.dumps({"showcase": {"cpu": cpu, "paper_256": paper, "fp32_s": fp32, "bf16_s": bf16, "patch": args.patch}})
    )


if __name__ == "__main__":
    main()
