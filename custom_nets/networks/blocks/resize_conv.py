# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Resize-convolution (nearest-neighbour upsampling followed by a stride-1 convolution) computed at the input's
resolution: summed phase kernels, one wide convolution, then a pixel shuffle."""

from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResizeConv2d", "ResizeConv3d", "phase_taps", "phase_kernels", "PHASE_MODES"]

# "auto": the phase form where it pays and is safe (`_use_phases`); "always" / "never": one form (benchmarks)
PHASE_MODES = ("auto", "always", "never")


def phase_taps(scale_factor: int, kernel_size: int) -> tuple[torch.Tensor, int]:
    """Where the taps of a ``kernel_size`` convolution applied after a ``scale_factor`` nearest upsampling fall on the
    input, along one axis.

    Output voxel ``s·i + p`` (phase ``p``) with tap ``t`` in ``[-r, r]`` (``r = kernel_size // 2``) reads upsampled
    voxel ``s·i + p + t``, which is input voxel ``i + floor((p + t) / s)``. So each phase is a convolution of the input
    with the sums of the taps that land on the same input voxel; the offsets span ``[-ceil(r / s), ceil(r / s)]``.

    Args:
        scale_factor: the upsampling factor ``s`` (>= 1).
        kernel_size: the convolution's odd kernel size ``k``.

    Returns:
        ``taps`` of shape ``(s, K, k)`` with ``taps[p, j, t] = 1`` when tap ``t`` of phase ``p`` reads input offset
        ``j - padding``, and ``padding = ceil(r / s)``, the low-resolution convolution's padding
        (``K = 2 · padding + 1``).

    Raises:
        ValueError: ``scale_factor < 1``, or a ``kernel_size`` that is not a positive odd number (the generator rounds
            even kernels up in resize mode).
    """
    if scale_factor < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"need scale_factor >= 1 and an odd kernel_size, got {scale_factor} and {kernel_size}.")
    radius = kernel_size // 2
    padding = -(-radius // scale_factor)
    taps = torch.zeros(scale_factor, 2 * padding + 1, kernel_size)
    for phase in range(scale_factor):
        for tap in range(kernel_size):
            taps[phase, (phase + tap - radius) // scale_factor + padding, tap] = 1.0
    return taps, padding


def phase_kernels(weight: torch.Tensor, tap_ranges: List[List[int]], scale_factor: int) -> torch.Tensor:
    """The ``s**d`` low-resolution kernels of a resize-convolution, stacked for one convolution.

    Slices and sums only, one axis at a time: autocast leaves them in the weight's precision, and no intermediate is
    larger than the result.

    Args:
        weight: the convolution's weight ``(O, I, k, ..., k)`` (``d`` spatial axes).
        tap_ranges: ``s · K`` pairs ``[first, count]``, row ``p · K + j``: the contiguous taps of phase ``p`` that
            land on low-resolution offset ``j`` (``count`` 0 for none), from ``phase_taps``.
        scale_factor: ``s``.

    Returns:
        ``(s**d · O, I, K, ..., K)``, phase-major: the phase along axis 1, ..., along axis ``d``, then the output
        channel (the order ``_shuffle2d`` / ``_shuffle3d`` undo).
    """
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


def _use_phases(mode: str, input: torch.Tensor, weight: torch.Tensor, low_kernel_size: int) -> bool:
    """Whether this call takes the phase form (else: upsampling, then the convolution; the same function).

    ``"auto"`` takes it unless
    - the map has fewer than twice as many voxels per sample as the weight has per input channel (``O · k**d``):
      summing the weights (``s**d`` times their size per call) then costs more than the wide convolution saves.
      ``benchmarks/resize_conv.py`` (bf16, batch 4) measured the phase form slower at 1.2 voxels per weight (the
      student's 64 -> 16 layer on 8³) and 1.3-1.7x faster at 4.7 (the CPU preset's 128 -> 32 on 16³). Per sample, so
      the path does not change with the batch size;
    - the map is smaller than the phase kernel on some axis (the 2³ bottleneck of a 64³ patch): there oneDNN's CPU
      bf16 conv3d weight gradient returned wrong values (torch 2.13.0, AVX-512 BF16; ``tests/test_resize_conv.py``),
      and such maps cost nothing either way;
    - the call is being traced (``torch.jit.trace``, ONNX export): a trace keeps one path for every later input
      size, so it keeps the plain operators, as before this module existed, without shape-dependent branches.
    """
    if mode != "auto":
        return mode == "always"
    if torch.jit.is_tracing():
        return False
    spatial = input.shape[2:]
    voxels = 1
    for size in spatial:
        voxels *= size
    return min(spatial) >= low_kernel_size and voxels * weight.shape[1] >= 2 * weight.numel()


def _shuffle3d(y: torch.Tensor, scale: int) -> torch.Tensor:
    """``(B, s³·O, D, H, W)`` phase-major -> ``(B, O, s·D, s·H, s·W)``, in the memory format ``y`` has."""
    b, channels, d, h, w = y.shape
    out_channels = channels // (scale * scale * scale)
    if out_channels > 1 and y.is_contiguous(memory_format=torch.channels_last_3d):
        # shuffle the physical (B, D, H, W, C) layout: one copy, and the result stays channels-last for the next layer
        y = y.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, scale, scale, scale, out_channels)
        y = y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d * scale, h * scale, w * scale, out_channels)
        return y.permute(0, 4, 1, 2, 3)
    y = y.reshape(b, scale, scale, scale, out_channels, d, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return y.reshape(b, out_channels, d * scale, h * scale, w * scale)


def _shuffle2d(y: torch.Tensor, scale: int) -> torch.Tensor:
    """``(B, s²·O, H, W)`` phase-major -> ``(B, O, s·H, s·W)``, in the memory format ``y`` has."""
    b, channels, h, w = y.shape
    out_channels = channels // (scale * scale)
    if out_channels > 1 and y.is_contiguous(memory_format=torch.channels_last):
        y = y.permute(0, 2, 3, 1).reshape(b, h, w, scale, scale, out_channels)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, h * scale, w * scale, out_channels)
        return y.permute(0, 3, 1, 2)
    y = y.reshape(b, scale, scale, out_channels, h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, out_channels, h * scale, w * scale)


def _configure(conv: nn.Module, scale_factor: int, phase_mode: str) -> None:
    """Check that ``conv`` (an ``nn.Conv2d``/``nn.Conv3d``) can be a resize-convolution; set its phase attributes."""
    kernel = conv.kernel_size[0]
    ones = (1,) * len(conv.kernel_size)
    if any(k != kernel for k in conv.kernel_size) or conv.stride != ones:
        raise ValueError(
            f"a resize-convolution needs the same kernel size on every axis and stride 1, got kernel_size "
            f"{conv.kernel_size} and stride {conv.stride}."
        )
    if conv.groups != 1 or conv.dilation != ones or conv.padding_mode != "zeros":
        raise ValueError("a resize-convolution needs groups=1, dilation=1 and padding_mode='zeros'.")
    if conv.padding != (kernel // 2,) * len(conv.kernel_size):
        raise ValueError(f"a resize-convolution keeps the size: padding must be {kernel // 2}, got {conv.padding}.")
    if phase_mode not in PHASE_MODES:
        raise ValueError(f"phase_mode must be one of {PHASE_MODES}, got {phase_mode!r}.")
    taps, padding = phase_taps(scale_factor, kernel)
    conv.scale_factor, conv.phase_padding, conv.low_kernel_size = scale_factor, padding, 2 * padding + 1
    conv.phase_mode = phase_mode
    conv.same_padding = kernel // 2
    conv.tap_ranges = []
    for phase_row in taps.reshape(-1, kernel):
        landing = phase_row.nonzero().flatten().tolist()  # contiguous by construction
        conv.tap_ranges.append([landing[0], len(landing)] if landing else [0, 0])


def _resize_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: int,
    mode: str,
    tap_ranges: List[List[int]],
    same_padding: int,
    phase_padding: int,
    low_kernel_size: int,
) -> torch.Tensor:
    """The forward pass of ``ResizeConv2d``/``ResizeConv3d`` (by ``input``'s dimensions)."""
    three_d = input.dim() == 5
    if not _use_phases(mode, input, weight, low_kernel_size):
        upsampled = F.interpolate(input, scale_factor=float(scale), mode="nearest")
        if three_d:
            return F.conv3d(upsampled, weight, bias, 1, same_padding)
        return F.conv2d(upsampled, weight, bias, 1, same_padding)
    phases = scale * scale * scale if three_d else scale * scale  # not scale**d: an int power is a float in TorchScript
    phase_bias = None if bias is None else bias.repeat(phases)  # inside the convolution: its dtype under autocast
    kernel = phase_kernels(weight, tap_ranges, scale)
    if three_d:
        return _shuffle3d(F.conv3d(input, kernel, phase_bias, 1, phase_padding), scale)
    return _shuffle2d(F.conv2d(input, kernel, phase_bias, 1, phase_padding), scale)


class _ResizeConvMixin:
    """The constructor, representation and forward pass ``ResizeConv2d`` and ``ResizeConv3d`` share (with
    ``nn.Conv2d``/``nn.Conv3d`` after it in their bases, whose ``forward`` calls ``_conv_forward``)."""

    def __init__(self, *args: Any, scale_factor: int = 2, phase_mode: str = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _configure(self, scale_factor, phase_mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_factor={self.scale_factor}"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _resize_conv(
            input,
            weight,
            bias,
            self.scale_factor,
            self.phase_mode,
            self.tap_ranges,
            self.same_padding,
            self.phase_padding,
            self.low_kernel_size,
        )


class ResizeConv3d(_ResizeConvMixin, nn.Conv3d):
    """``Conv3d(Upsample(x, scale_factor, "nearest"))`` computed at the input's resolution.

    Nearest upsampling repeats each input voxel ``s³`` times, so the convolution after it reads, for each of the
    ``s³`` output phases, a fixed neighbourhood of input voxels (2×2×2 for ``s = 2`` and 3³ kernels), some taps landing
    on the same voxel. The forward pass sums those taps (``phase_taps``, ``phase_kernels``) into ``s³`` low-resolution
    kernels (3³ for the example, zero where a phase reads nothing), runs them as one convolution with ``s³ · C_out``
    outputs at the input's resolution, and interleaves the phases (a pixel shuffle, Shi et al., CVPR 2016). The result
    equals upsampling then convolving to float rounding (tested: outputs and gradients, 2D and 3D, borders included),
    with the same multiply-adds but without the upsampled map and with a wide convolution in place of a narrow
    full-resolution one, which oneDNN runs several times faster (``benchmarks/resize_conv.py``;
    ``bundle/docs/performance.md`` §7). ``phase_mode="auto"`` keeps the upsampled path where that does not pay or is
    not safe (``_use_phases``).

    The module is ``nn.Conv3d`` with the same parameters and state-dict names, so weights saved from ``Upsample`` +
    ``Conv3d`` load unchanged and a spectral-norm parametrisation of ``weight`` applies as usual. Stride 1, dilation 1,
    one group, zero padding ``kernel_size // 2``.

    Args:
        args: ``nn.Conv3d``'s positional arguments (``in_channels``, ``out_channels``, ``kernel_size``).
        scale_factor: the nearest upsampling factor (an int, the same on every axis).
        phase_mode: ``"auto"`` (default), ``"always"`` or ``"never"`` (upsample, then convolve).
        kwargs: ``nn.Conv3d``'s keyword arguments (``padding`` must be ``kernel_size // 2``).

    Shapes: input ``(B, C_in, D, H, W)``, output ``(B, C_out, s·D, s·H, s·W)``, channels-last when the convolution's
    output is.

    Raises:
        ValueError: unequal or even kernel sizes, or a stride, dilation, groups, padding or ``phase_mode`` other than
            those above.
    """


class ResizeConv2d(_ResizeConvMixin, nn.Conv2d):
    """The 2D ``ResizeConv3d``: ``Conv2d(Upsample(x, scale_factor, "nearest"))`` at the input's resolution.

    Args and Raises as ``ResizeConv3d`` (with ``nn.Conv2d``'s arguments). Shapes: input ``(B, C_in, H, W)``, output
    ``(B, C_out, s·H, s·W)``.
    """
