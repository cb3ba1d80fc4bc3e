# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the benchmarks: each case in a fresh child process with its own peak memory, and timing.

Peak memory on CPU is the peak resident set (VmHWM) over the RSS when the case starts measuring. With
``exact_memory`` glibc's mmap threshold is fixed at 1 MiB so that freed tensors leave the RSS at once (its default
threshold grows after each large free, which makes the peak that of the allocator's cache); without it the figure is
an upper bound. On CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

__all__ = ["rss_kib", "reset_peak", "peak_mb_since", "run_child", "timed", "machine", "print_table"]


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak counters (CPU and CUDA) and return the current RSS in KiB, the baseline of ``peak_mb_since``."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass
    return rss_kib("VmRSS")


def peak_mb_since(base_kib: int, device: str = "cpu") -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return (rss_kib("VmHWM") - base_kib) / 1024


def run_child(
    script: str, case: dict, threads: int, exact_memory: bool = False, extra: list[str] | None = None
) -> dict:
    """Run ``script --case JSON --threads N`` in a fresh interpreter and return the JSON of its last output line.

    ``exact_memory`` fixes glibc's mmap threshold so that the peak RSS is the peak of live tensors; it also makes
    every large allocation a fresh mmap with page faults, which slows CPU steps measurably, so timing benchmarks
    leave it off and report the peak RSS as an upper bound (the allocator's cache included)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if exact_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    command = [sys.executable, script, "--case", json.dumps(case), "--threads", str(threads), *(extra or [])]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed(step: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median seconds of ``step`` over ``repeats`` runs after ``warmup`` runs."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    import torch

    info = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(header: list[str], rows: list[list[object]]) -> None:
    """Print a markdown table: one header row, then one row per list of already formatted cells."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
