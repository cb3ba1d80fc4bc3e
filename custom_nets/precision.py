# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Which reduced precision pays on this machine.

bf16 autocast halves training time on CPUs with native bf16 instructions (AVX512-BF16 or AMX), but on CPUs without
them PyTorch runs bf16 convolutions on a slow reference kernel: one 32→64-channel 3³ conv3d on a 32³ map took 11.3 s
under bf16 autocast against 0.03 s in fp32 on an AVX2-only EPYC. So bf16 is only chosen where the instructions exist.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["cpu_has_native_bf16", "autocast_dtype"]


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 and PyTorch dispatches AVX512 kernels."""
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(next((line for line in cpuinfo if line.startswith("flags")), "").split())
    except OSError:  # not Linux: trust oneDNN's own dispatch on AVX512 machines
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype that pays on ``device``: bf16 (or fp16 on GPUs without bf16) on CUDA, bf16 on CPUs with
    native bf16, ``None`` (stay in fp32) otherwise."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device_type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
