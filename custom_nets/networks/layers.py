# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Convolution factory with optional spectral normalisation, and the helpers that fold it into plain weights.

Spectral normalisation (Miyato et al., ICLR 2018) is applied as in the SC-GAN code (Lan et al., MRM 2021): the weight is
viewed as a matrix with the output channels on one side (PyTorch uses ``(out, in * k**d)``, the TF code ``(k**d * in,
out)``: the same singular values) and divided by its largest singular value, estimated with ``n_power_iterations``
power iterations per training step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_norm_layer
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = [
    "make_conv",
    "make_norm",
    "SingleVoxelSafeNorm",
    "init_normal",
    "same_padding",
    "transposed_padding",
    "bake_spectral_norm",
    "has_spectral_norm",
    "fold_spectral_norm_state",
    "accept_spectral_norm_state",
]

# state-dict names of torch.nn.utils.parametrizations.spectral_norm on a module's ``weight``
_ORIGINAL = ".parametrizations.weight.original"
_VECTORS = ".parametrizations.weight.0._"


def same_padding(kernel_size: int) -> int:
    """Padding that keeps ``ceil(size / stride)`` output voxels for odd kernels (and for even kernels with stride 2)."""
    return (kernel_size - 1) // 2


def transposed_padding(kernel_size: int, stride: int) -> tuple[int, int]:
    """``(padding, output_padding)`` so that a transposed convolution maps ``size`` to exactly ``size * stride``.

    ``(n - 1) * s - 2p + k + op = n * s`` gives ``2p - op = k - s``; TF's ``SAME`` transposed convolution does the same.
    """
    output_padding = (kernel_size - stride) % 2
    padding = (kernel_size - stride + output_padding) // 2
    if padding < 0 or output_padding >= stride:
        raise ValueError(
            f"transposed convolution with kernel_size={kernel_size} and stride={stride} cannot double the size."
        )
    return padding, output_padding


def make_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    transposed: bool = False,
    bias: bool = False,
    spectral_norm: bool = True,
    n_power_iterations: int = 1,
    upsample_factor: int = 1,
) -> nn.Module:
    """A 2D/3D (transposed) convolution whose output has ``size * stride`` (transposed), ``size * upsample_factor``
    (resize-convolution) or ``size / stride`` voxels.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel size.
        stride: stride (downsampling factor, or upsampling factor when ``transposed``).
        transposed: use a transposed convolution.
        bias: add a bias (the SC-GAN code has none: each convolution is followed by a normalisation).
        spectral_norm: wrap the weight in spectral normalisation.
        n_power_iterations: power iterations per forward pass in training mode (the paper's code uses 1).
        upsample_factor: above 1, a resize-convolution: nearest upsampling by this factor, then the convolution (odd
            ``kernel_size``, stride 1), computed at the input's resolution by ``ResizeConv2d``/``ResizeConv3d``.

    Raises:
        ValueError: ``upsample_factor > 1`` with ``transposed`` or a stride, or an even ``kernel_size`` with it; a
            transposed ``kernel_size``/``stride`` pair that cannot double the size.
    """
    if upsample_factor > 1:
        if transposed or stride != 1:
            raise ValueError(
                f"a resize-convolution (upsample_factor={upsample_factor}) has stride 1 and is not transposed, got "
                f"stride={stride}, transposed={transposed}."
            )
        # imported here: the blocks package imports this module (self-attention builds its projections with make_conv)
        from custom_nets.networks.blocks.resize_conv import ResizeConv2d, ResizeConv3d

        resize_conv = ResizeConv3d if spatial_dims == 3 else ResizeConv2d
        conv: nn.Module = resize_conv(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, scale_factor=upsample_factor
        )
    elif transposed:
        padding, output_padding = transposed_padding(kernel_size, stride)
        conv = Conv[Conv.CONVTRANS, spatial_dims](
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            bias=bias,
        )
    else:
        conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size, stride=stride, padding=same_padding(kernel_size), bias=bias
        )
    if spectral_norm:
        conv = _spectral_norm(conv, n_power_iterations=n_power_iterations)
    return conv


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether any submodule carries a spectral-norm parametrisation."""
    return any(parametrize.is_parametrized(m) for m in module.modules())


def bake_spectral_norm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every spectral-norm parametrisation is replaced by its current normalised weight.

    The copy gives the same outputs as ``module.eval()`` and holds plain ``weight`` parameters, so it can be scripted,
    traced or exported to ONNX without the power-iteration buffers. The original module is left untouched.
    """
    baked = copy.deepcopy(module).eval()
    with torch.no_grad():
        for sub in list(baked.modules()):
            if not parametrize.is_parametrized(sub):
                continue
            plain = {name: getattr(sub, name).detach().clone() for name in sub.parametrizations}
            # torch's remove_parametrizations deletes the property from the class that the copy shares with the
            # original, which would break the original; swapping back to the plain class leaves it intact.
            sub.__class__ = sub.__class__.__bases__[0]
            del sub._modules["parametrizations"]
            for name, tensor in plain.items():
                sub.register_parameter(name, nn.Parameter(tensor))
    return baked


def fold_spectral_norm_state(state: Mapping[str, Any], module: nn.Module, prefix: str = "") -> dict[str, Any]:
    """``state`` (a state dict of ``module``, keys starting with ``prefix``) with every spectral-norm parametrisation
    replaced by the weight it gives in eval mode, ``original / sigma`` with ``sigma = u . (W v)`` from the stored
    power-iteration vectors (``torch.nn.utils.parametrizations.spectral_norm``; ``W`` is the weight as a matrix with
    the output channels first: dimension 0 of a convolution's weight, 1 of a transposed convolution's).

    The result loads into the same network built without the parametrisation and gives the outputs of the
    parametrised one in eval mode: the deployed form of a spectrally normalised network (``bake_spectral_norm`` does
    the same on a module). Other entries are kept as they are.

    Args:
        state: ``name -> tensor``; entries ``<path>.parametrizations.weight.original`` and
            ``<path>.parametrizations.weight.0._u`` / ``._v`` are folded into ``<path>.weight``.
        module: the network the state belongs to (used to tell transposed convolutions apart).
        prefix: the prefix of ``module``'s names in ``state`` (as in ``load_state_dict`` pre-hooks).

    Raises:
        KeyError: a parametrised weight without its power-iteration vectors.
    """
    folded: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith(_ORIGINAL):
            path = key[: -len(_ORIGINAL)]
            u, v = state[f"{path}{_VECTORS}u"], state[f"{path}{_VECTORS}v"]
            layer = module.get_submodule(path[len(prefix) :])
            dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
            matrix = value.movedim(dim, 0).flatten(1)
            folded[f"{path}.weight"] = value / torch.vdot(u, torch.mv(matrix, v))
        elif _VECTORS not in key:
            folded[key] = value
    return folded


def accept_spectral_norm_state(module: nn.Module) -> nn.Module:
    """Let ``module`` (built without spectral-norm parametrisations) load state dicts saved from its parametrised
    twin: a ``load_state_dict`` pre-hook folds them with ``fold_spectral_norm_state``. Returns ``module``."""

    def fold_on_load(owner: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        keys = [key for key in state_dict if key.startswith(prefix)]
        if any(key.endswith(_ORIGINAL) for key in keys):
            own = {key: state_dict.pop(key) for key in keys}
            state_dict.update(fold_spectral_norm_state(own, owner, prefix))

    module.register_load_state_dict_pre_hook(fold_on_load)
    return module


def as_tuple(value: int | Sequence[int], length: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to ``length`` values, or check that a sequence has ``length`` values."""
    if isinstance(value, int):
        return (value,) * length
    values = tuple(int(v) for v in value)
    if len(values) != length:
        raise ValueError(f"{name} must have {length} values (one per level), got {len(values)}: {values}.")
    return values


def init_normal(conv: nn.Module, std: float = 0.02) -> None:
    """Normal(0, 0.02) weights and zero bias, as pix2pix and the paper's code (the attention keeps Xavier)."""
    weight = conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
    nn.init.normal_(weight, 0.0, std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class SingleVoxelSafeNorm(nn.Module):
    """Wraps a normalisation layer so that a map of a single voxel normalises to zero (then the affine bias).

    That is what instance norm computes, ``x - mean(x) = 0``, and what TF's ``instance_norm`` returns at the bottleneck
    of the paper's 256³ generator (1³ after eight stride-2 levels); PyTorch's ``InstanceNorm`` raises there in training.
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0, 0].numel() == 1:
            # Two copies of the voxel: zero variance, so the output is the affine bias, as the formula gives.
            return self.norm(torch.cat((x, x), dim=-1)).narrow(-1, 0, 1)
        return self.norm(x)


def make_norm(norm: str | tuple, spatial_dims: int, channels: int) -> nn.Module:
    """A MONAI normalisation layer (``"instance"``, ``("instance", {"affine": True})``, ``"batch"``, ...) that also
    accepts single-voxel maps."""
    return SingleVoxelSafeNorm(get_norm_layer(norm, spatial_dims, channels))
