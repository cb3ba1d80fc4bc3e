# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Resize-convolution (nearest-neighbour upsampling followed by a stride-1 convolution) computed at the input's
resolution: one convolution per output phase, summed weights, then a pixel shuffle."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResizeConv2d", "ResizeConv3d", "phase_taps", "phase_kernels"]


def phase_taps(scale_factor: int, kernel_size: int) -> tuple[torch.Tensor, int, int]:
    """How the taps of a ``kernel_size`` convolution applied after a ``scale_factor`` nearest upsampling fall on the
    input's voxels, per axis.

    Output voxel ``s·i + p`` (phase ``p``) with tap ``t`` in ``[-r, r]`` (``r = kernel_size // 2``) reads upsampled
    voxel ``s·i + p + t``, which is input voxel ``i + floor((p + t) / s)``. So each phase is a convolution of the input
    with the sums of the taps that land on the same input voxel.

    Returns:
        ``taps`` of shape ``(scale_factor, K, kernel_size)`` with ``taps[p, j, t] = 1`` when tap ``t`` of phase ``p``
        reads input offset ``j - pad_low``; ``pad_low`` and ``pad_high``, the input padding of the low-resolution
        convolution (``K = pad_low + pad_high + 1``).

    Raises:
        ValueError: ``scale_factor < 1`` or an even ``kernel_size`` (the generator rounds even kernels up to odd).
    """
    if scale_factor < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"need scale_factor >= 1 and an odd kernel_size, got {scale_factor} and {kernel_size}.")
    radius = kernel_size // 2
    low, high = -radius // scale_factor, (scale_factor - 1 + radius) // scale_factor
    taps = torch.zeros(scale_factor, high - low + 1, kernel_size)
    for phase in range(scale_factor):
        for tap in range(kernel_size):
            taps[phase, (phase + tap - radius) // scale_factor - low, tap] = 1.0
    return taps, -low, high


def _configure(conv: nn.Module, scale_factor: int) -> None:
    """Check that ``conv`` can be a resize-convolution and set its phase attributes."""
    kernel = conv.kernel_size[0]
    if any(k != kernel for k in conv.kernel_size) or conv.stride != (1,) * len(conv.kernel_size):
        raise ValueError(
            f"a resize-convolution needs a cubic kernel and stride 1, got {conv.kernel_size}, {conv.stride}"
        )
    if conv.groups != 1 or conv.dilation != (1,) * len(conv.kernel_size) or conv.padding_mode != "zeros":
        raise ValueError("a resize-convolution needs groups=1, dilation=1 and zero padding.")
    if conv.padding != (kernel // 2,) * len(conv.kernel_size):
        raise ValueError(f"a resize-convolution keeps the size: padding must be {kernel // 2}, got {conv.padding}.")
    taps, pad_low, pad_high = phase_taps(scale_factor, kernel)
    conv.scale_factor, conv.pad_low, conv.pad_high = scale_factor, pad_low, pad_high
    conv.low_kernel_size = pad_low + pad_high + 1
    conv.use_phases = True  # False: always upsample then convolve (benchmarks/resize_conv.py compares the two)
    conv.tap_ranges = []
    for phase_row in taps.reshape(-1, kernel):
        landing = phase_row.nonzero().flatten().tolist()  # contiguous by construction
        conv.tap_ranges.append([landing[0], len(landing)] if landing else [0, 0])


def phase_kernels(weight: torch.Tensor, tap_ranges: List[List[int]], scale_factor: int) -> torch.Tensor:
    """The ``s**d`` low-resolution kernels of a resize-convolution: ``weight`` ``(O, I, k, ..., k)`` gives
    ``(s**d · O, I, K, ..., K)``, phase-major (phase of axis 1, ..., of axis d, then output channel).

    ``tap_ranges[p * K + j]`` is ``[first, count]``: the taps of phase ``p`` that land on low-resolution offset ``j``
    (contiguous, ``count`` 0 for none; ``phase_taps``). Slices and sums only, one axis at a time: autocast leaves
    them in the weight's precision, and no intermediate is larger than the result."""
    spatial_dims = weight.dim() - 2
    kernel = weight
    for axis in range(spatial_dims):
        position = 2 + 2 * axis  # `axis` phase dimensions, O, I and `axis` finished K dimensions precede it
        pieces: List[torch.Tensor] = []
        for first, count in tap_ranges:
            if count == 0:
                pieces.append(torch.zeros_like(kernel.narrow(position, 0, 1)))
            else:
                pieces.append(kernel.narrow(position, first, count).sum(position, keepdim=True))
        summed = torch.cat(pieces, position)  # (..., s·K at `position`, ...)
        shape = list(kernel.shape)
        summed = summed.reshape(shape[:position] + [scale_factor, -1] + shape[position + 1 :])
        kernel = summed.movedim(position, axis)  # the new phase after the earlier ones
    return kernel.flatten(0, spatial_dims)


def _phases_pay(input: torch.Tensor, weight: torch.Tensor, low_kernel_size: int) -> bool:
    """Whether the phase form is used for this call; else upsampling then convolving (the same function).

    The phase kernels cost a weight transform of ``s**d`` times the weight's size per call, so small maps under wide
    layers (``input.numel() < 4 · weight.numel()``, the crossover measured by ``benchmarks/resize_conv.py``) take the
    upsampled path. So do maps smaller than the phase kernel (the 2³ bottleneck of a 64³ patch): oneDNN's CPU bf16
    conv3d weight gradient was wrong there (``tests/test_resize_conv.py``)."""
    return min(input.shape[2:]) >= low_kernel_size and input.numel() >= 4 * weight.numel()


class ResizeConv3d(nn.Conv3d):
    """``Conv3d(Upsample(x, scale_factor, "nearest"))`` computed at the input's resolution.

    Nearest upsampling repeats each input voxel ``s**3`` times, so the convolution after it reads, for each of the
    ``s**3`` output phases, a fixed small neighbourhood of input voxels, some taps landing on the same voxel. The
    forward pass sums those taps (``phase_taps``, ``phase_kernels``) into ``s**3`` low-resolution kernels, runs them as
    one convolution with ``s**3 · out_channels`` outputs at the input's resolution, and interleaves the phases (a pixel
    shuffle, Shi et al., CVPR 2016). The result equals upsampling then convolving (to float rounding, tested) without
    building the upsampled map, and replaces a narrow full-resolution convolution by a wide one, which oneDNN runs
    several times faster (``benchmarks/resize_conv.py``; ``bundle/docs/performance.md``). Where that does not pay, or
    is not safe, the call upsamples then convolves (``_phases_pay``).

    The module is ``nn.Conv3d`` with the same parameters and state-dict names, so weights saved from ``Upsample`` +
    ``Conv3d`` load unchanged and a spectral-norm parametrisation of ``weight`` applies as usual. Stride 1, dilation 1,
    one group, zero padding ``kernel_size // 2``.

    Args:
        args, kwargs: ``nn.Conv3d``'s.
        scale_factor: the nearest upsampling factor (an int, the same on every axis).

    Shapes: input ``(B, C_in, D, H, W)``, output ``(B, C_out, s·D, s·H, s·W)``.

    Raises:
        ValueError: a non-cubic or even kernel, or a stride, dilation, groups or padding other than those above.
    """

    def __init__(self, *args, scale_factor: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _configure(self, scale_factor)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        s, out_channels = self.scale_factor, weight.shape[0]
        if not (self.use_phases and _phases_pay(input, weight, self.low_kernel_size)):
            return F.conv3d(F.interpolate(input, scale_factor=float(s), mode="nearest"), weight, bias, 1, self.padding)
        kernel = phase_kernels(weight, self.tap_ranges, s)
        if self.pad_low == self.pad_high:
            y = F.conv3d(input, kernel, None, 1, self.pad_low)
        else:
            y = F.conv3d(F.pad(input, [self.pad_low, self.pad_high] * 3), kernel)
        b, _, d, h, w = y.shape
        y = y.reshape(b, s, s, s, out_channels, d, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
        y = y.reshape(b, out_channels, d * s, h * s, w * s)
        return y if bias is None else y + bias.reshape(1, -1, 1, 1, 1)


class ResizeConv2d(nn.Conv2d):
    """The 2D ``ResizeConv3d``: ``Conv2d(Upsample(x, scale_factor, "nearest"))`` at the input's resolution.

    Shapes: input ``(B, C_in, H, W)``, output ``(B, C_out, s·H, s·W)``. Raises as ``ResizeConv3d``.
    """

    def __init__(self, *args, scale_factor: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _configure(self, scale_factor)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        s, out_channels = self.scale_factor, weight.shape[0]
        if not (self.use_phases and _phases_pay(input, weight, self.low_kernel_size)):
            return F.conv2d(F.interpolate(input, scale_factor=float(s), mode="nearest"), weight, bias, 1, self.padding)
        kernel = phase_kernels(weight, self.tap_ranges, s)
        if self.pad_low == self.pad_high:
            y = F.conv2d(input, kernel, None, 1, self.pad_low)
        else:
            y = F.conv2d(F.pad(input, [self.pad_low, self.pad_high] * 2), kernel)
        b, _, h, w = y.shape
        y = y.reshape(b, s, s, out_channels, h, w).permute(0, 3, 4, 1, 5, 2)
        y = y.reshape(b, out_channels, h * s, w * s)
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)
