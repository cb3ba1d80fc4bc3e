# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
# Topology ported from Haoyulance/SC-GAN src/utils/generator.py (TF1). Changes: PyTorch, 2D or 3D, every constant an
# argument, resize-convolution upsampling as an option, dropout only in training mode, and a bias on the output conv.
"""SC-GAN generator: a U-Net with spectral normalisation and self-attention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, List

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from custom_nets.networks.blocks.self_attention import SelfAttention3d
from custom_nets.networks.layers import accept_spectral_norm_state, as_tuple, init_normal, make_conv, make_norm

__all__ = ["SCGANGenerator", "GENERATOR_PRESETS"]

UP_MODES = ("resize", "deconv")
# where the generator has attention: after encoder levels, after decoder levels, on the output maps
ATTENTION_SITES = ("encoder", "decoder", "output")
# the value range of each output activation: a residual output (prior + correction) is clamped to it
RESIDUAL_RANGES = {"relu": (0.0, None), "sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}

GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    # The published topology (src/utils/generator.py) for whole 256³ volumes: 8 levels down to 1³, transposed
    # convolutions up, attention after l5 (8³), after dl5 (32³) and on the 1-channel output (keys pooled, stride 64).
    "paper": {
        "channels": (64, 128, 256, 512, 512, 512, 512, 512),
        "strides": 2,
        "kernel_size": (5, 5, 5, 5, 3, 3, 3, 2),
        "encoder_attention_levels": (5,),
        "decoder_attention_levels": (3,),
        "output_attention": True,
        "output_attention_stride": 64,
        "up_mode": "deconv",
        "dropout": 0.5,
        "num_dropout_levels": 3,
        "out_act": "tanh",
    },
    # Sized for 64³ patches at 2 mm on a laptop CPU: 5 levels down to 2³, 3³ kernels, resize-convolutions, the same
    # three attention sites at the same relative depths (8³ and 16³ maps for a 64³ patch, 64 output keys).
    "cpu": {
        "channels": (32, 64, 128, 256, 256),
        "strides": 2,
        "kernel_size": 3,
        "encoder_attention_levels": (3,),
        "decoder_attention_levels": (2,),
        "output_attention": True,
        "output_attention_stride": 16,
        "up_mode": "resize",
        "dropout": 0.0,
        "num_dropout_levels": 3,
        "out_act": None,
    },
    # The distillation student of the CPU preset (custom_nets.distillation): the same depth, strides and encoder and
    # decoder attention sites (so every decoder level has a teacher level to match), a quarter of the channels
    # (1/16 of the convolution FLOPs), and no output attention: on the full-resolution 1-channel map it is the largest
    # single cost of the CPU preset's inference (0.48 of 0.70 s for a 96×128×96 pass at these widths, fp32).
    "student": {
        "channels": (8, 16, 32, 64, 64),
        "strides": 2,
        "kernel_size": 3,
        "encoder_attention_levels": (3,),
        "decoder_attention_levels": (2,),
        "output_attention": False,
        "output_attention_stride": 16,
        "up_mode": "resize",
        "dropout": 0.0,
        "num_dropout_levels": 3,
        "out_act": None,
    },
}


class SCGANGenerator(nn.Module):
    """Generator of SC-GAN (Lan, Toga, Sepehrband, "SC-GAN: 3D self-attention conditional GAN with spectral
    normalization for multi-modal neuroimaging synthesis", Magn. Reson. Med. 86(3), 2021; bioRxiv
    10.1101/2020.06.09.143297).

    A U-Net encoder–decoder with skip concatenation. Encoder level ``i`` is a strided convolution (``channels[i]``
    filters, ``kernel_size[i]``, ``strides[i]``), instance norm (none on the first level, as in the paper) and
    LeakyReLU(0.2). The decoder mirrors it: level ``i`` upsamples the concatenation of the deeper decoder output and
    the encoder's level-``i`` features back to the resolution of level ``i - 1``, followed by instance norm, dropout on
    the ``num_dropout_levels`` deepest layers, and ReLU (``final_act`` on the last layer: LeakyReLU under a residual
    head). The last decoder layer outputs ``final_channels`` maps at
    full resolution (the paper's code: as many as the input has), then a stride-1 3×3(×3) convolution gives
    ``out_channels``, optionally followed by the output attention, then ``out_act``. Every convolution, the attention
    projections included, is spectrally normalised when ``spectral_norm`` is true.

    Levels are numbered from 1 (the first encoder output, at 1/2 resolution) to ``len(channels)``, as ``l1``–``l8``
    in the paper's code. ``encoder_attention_levels`` puts attention after those encoder levels (paper: 5);
    ``decoder_attention_levels`` after the decoder layer whose output has that level's resolution (paper: 3, after
    ``dl5``); ``output_attention`` on the output map (paper: keys max-pooled with kernel 2 and stride 64).

    Upsampling: ``up_mode="deconv"`` uses transposed convolutions, as the paper. Their kernels (5 with stride 2) overlap
    unevenly and print a checkerboard pattern into the output (Odena et al., Distill 2016), most visible on smooth maps
    such as PET. ``up_mode="resize"`` (the default) upsamples with nearest neighbours and then convolves: every output
    voxel sees the same number of weights, so no checkerboard can arise. Even kernels are rounded up to the next odd
    size in ``"resize"`` mode so that the convolution keeps the size.

    Comparison models of the paper by arguments: 3D cGAN = ``spectral_norm=False`` and no attention levels; attention
    cGAN = attention with ``spectral_norm=False``; 2D cGAN = ``spatial_dims=2``; 3D U-Net = the generator trained alone.

    Shapes: input ``(B, in_channels, *spatial)`` with every spatial size divisible by ``prod(strides)`` (and, with the
    output attention, at least 2); output ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input modalities (for example 2: T1w and FLAIR).
        out_channels: synthesised maps (1).
        channels: encoder filters per level; the depth is ``len(channels)``.
        strides: downsampling factor per level (an int for all levels).
        kernel_size: encoder kernel per level (an int for all levels); the decoder mirrors it.
        act: encoder activation (MONAI name or ``(name, args)``).
        up_act: decoder activation.
        final_act: activation of the last decoder layer, the ``final_channels`` maps the head reads. ``None``: ``act``
            (LeakyReLU 0.2) when ``residual_channel`` is given, ``up_act`` (the paper's ReLU) otherwise. A residual
            correction is about 0 in most of the brain, so behind a ReLU the few final maps fall silent there (no
            gradient) and the correction cannot grow where the prior is wrong: with ReLU, the CPU preset's 3 final
            maps were active in 5–10 % of the brain after 400 iterations on MD and the ventricles kept the prior's
            error (``bundle/docs/tuning.md``, "The MD plateau").
        norm: normalisation after every convolution but the first and the output one.
        spectral_norm: spectrally normalise every convolution.
        n_power_iterations: spectral-norm power iterations per training step.
        encoder_attention_levels: encoder levels followed by self-attention.
        decoder_attention_levels: decoder output levels followed by self-attention.
        output_attention: self-attention on the output convolution's maps.
        output_attention_stride: max-pool stride of the output attention's keys and values (pool kernel 2).
        attention_pool: max-pool factor of keys and values at the other attention sites (1 = full attention).
        up_mode: ``"resize"`` (nearest upsampling + convolution) or ``"deconv"`` (transposed convolution).
        dropout: dropout probability in the deepest decoder layers (training mode only).
        num_dropout_levels: how many of the deepest decoder layers get dropout.
        final_channels: channels of the last decoder layer; ``None`` uses ``in_channels`` as the paper's code.
        out_act: output activation: ``None`` (identity), ``"relu"``, ``"sigmoid"``, ``"tanh"`` or any MONAI name.
        attention: ``False`` removes every attention site (the paper's 3D cGAN and no-attention ablation).
        residual_channel: index of an input channel that already estimates the target (the per-voxel prior of
            ``custom_nets.prior``); the output becomes that channel plus the head's output (residual learning, He et
            al., CVPR 2016), whose convolution is zero-initialised and not spectrally normalised, so training starts
            from the prior exactly. The correction is signed: ``out_act`` does not act on it, the sum is clamped to
            ``out_act``'s range instead (relu: ≥ 0, sigmoid: [0, 1], tanh: [-1, 1]). ``None``: the paper's output.
        fold_spectral_norm: with ``spectral_norm``, build plain convolutions that hold the spectrally normalised
            weights (the deployed form: scriptable with ``torch.jit.script``, no power iterations, the eval-mode
            outputs of the parametrised network); state dicts saved with the parametrisation are folded as they load
            (``custom_nets.networks.layers.fold_spectral_norm_state``). For inference: trained, it would have no
            spectral norm.
        local_attention_sites: attention sites (``"encoder"``, ``"decoder"``, ``"output"``) that use local windowed
            attention (``SelfAttention3d(window_size=...)``: each voxel attends to its ``attention_window**d``
            window, memory O(N·w**d)) instead of the paper's pooled global attention; ``()`` is the paper's model.
        attention_window: the window edge ``w`` of the local sites. The decoder's windows are shifted by ``w // 2``
            so that its window borders do not coincide with the encoder's.

    Raises:
        ValueError: an argument outside its documented range (the message names it).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = GENERATOR_PRESETS["cpu"]["channels"],
        strides: Sequence[int] | int = 2,
        kernel_size: Sequence[int] | int = 3,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2}),
        up_act: str | tuple = "relu",
        final_act: str | tuple | None = None,
        norm: str | tuple = ("instance", {"affine": True}),
        spectral_norm: bool = True,
        n_power_iterations: int = 1,
        encoder_attention_levels: Sequence[int] = GENERATOR_PRESETS["cpu"]["encoder_attention_levels"],
        decoder_attention_levels: Sequence[int] = GENERATOR_PRESETS["cpu"]["decoder_attention_levels"],
        output_attention: bool = True,
        output_attention_stride: int = GENERATOR_PRESETS["cpu"]["output_attention_stride"],
        attention_pool: int = 2,
        up_mode: str = "resize",
        dropout: float = 0.0,
        num_dropout_levels: int = 3,
        final_channels: int | None = None,
        out_act: str | tuple | None = None,
        attention: bool = True,
        residual_channel: int | None = None,
        fold_spectral_norm: bool = False,
        local_attention_sites: Sequence[str] = (),
        attention_window: int = 4,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}.")
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}.")
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if isinstance(local_attention_sites, str):
            local_attention_sites = (local_attention_sites,)
        unknown_sites = set(local_attention_sites) - set(ATTENTION_SITES)
        if unknown_sites:
            raise ValueError(f"local_attention_sites must be among {ATTENTION_SITES}, got {sorted(unknown_sites)}.")
        if attention_window < 1:
            raise ValueError(f"attention_window must be a positive window edge, got {attention_window}.")
        depth = len(channels)
        if not attention:
            encoder_attention_levels, decoder_attention_levels, output_attention = (), (), False
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.strides = as_tuple(strides, depth, "strides")
        self.kernel_sizes = as_tuple(kernel_size, depth, "kernel_size")
        for name, levels, valid in (
            ("encoder_attention_levels", encoder_attention_levels, range(1, depth + 1)),
            ("decoder_attention_levels", decoder_attention_levels, range(1, depth)),
        ):
            bad = [level for level in levels if level not in valid]
            if bad:
                raise ValueError(f"{name} must be within {list(valid)} for a {depth}-level generator, got {bad}.")
        self.size_divisor = math.prod(self.strides)
        self.min_size = 2 if output_attention and "output" not in local_attention_sites else 1
        final_channels = in_channels if final_channels is None else final_channels
        self.spectral_norm_folded = spectral_norm and fold_spectral_norm
        parametrized = spectral_norm and not fold_spectral_norm

        def conv(
            cin: int, cout: int, kernel: int, stride: int = 1, transposed: bool = False, bias: bool = False, up: int = 1
        ):
            layer = make_conv(
                spatial_dims, cin, cout, kernel, stride, transposed, bias, parametrized, n_power_iterations, up
            )
            init_normal(layer)
            return layer

        def attention(site: str, ch: int, pool: int = attention_pool, stride: int | None = None) -> nn.Module:
            window, shift = 0, 0
            if site in local_attention_sites:
                window, pool, stride = attention_window, 1, 1
                shift = attention_window // 2 if site == "decoder" else 0
            return SelfAttention3d(
                spatial_dims,
                ch,
                pool,
                stride,
                spectral_norm=parametrized,
                n_power_iterations=n_power_iterations,
                window_size=window,
                window_shift=shift,
            )

        last_act = final_act if final_act is not None else (act if residual_channel is not None else up_act)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, (ch, stride, kernel) in enumerate(zip(channels, self.strides, self.kernel_sizes), start=1):
            layers = [conv(previous, ch, kernel, stride)]
            if level > 1:
                layers.append(make_norm(norm, spatial_dims, ch))
            layers.append(get_act_layer(act))
            if level in encoder_attention_levels:
                layers.append(attention("encoder", ch))
            self.encoder.append(nn.Sequential(*layers))
            previous = ch

        # decoder[0] is the deepest layer (the paper's dl1); its input is the bottleneck, the others' a concatenation.
        self.decoder = nn.ModuleList()
        for position, level in enumerate(range(depth, 0, -1)):
            cin = channels[level - 1] * (1 if level == depth else 2)
            cout = channels[level - 2] if level > 1 else final_channels
            kernel, stride = self.kernel_sizes[level - 1], self.strides[level - 1]
            if up_mode == "deconv":
                layers = [conv(cin, cout, kernel, stride, transposed=True)]
            else:
                # nearest upsampling and the convolution in one module that computes them at the input's resolution
                # (ResizeConv3d: the same function, faster; performance.md §7); the Identity keeps the layer index of
                # checkpoints saved when an nn.Upsample stood there
                layers = [nn.Identity(), conv(cin, cout, kernel | 1, up=stride)]
            layers.append(make_norm(norm, spatial_dims, cout))
            if dropout > 0 and position < num_dropout_levels:
                layers.append(nn.Dropout(dropout))
            layers.append(get_act_layer(up_act if level > 1 else last_act))
            if level - 1 in decoder_attention_levels:
                layers.append(attention("decoder", cout))
            self.decoder.append(nn.Sequential(*layers))

        if residual_channel is not None:
            # the correction starts at exactly 0 (zero weights, which spectral norm cannot normalise): training starts
            # from the prior and moves away from it at the optimiser's full speed, as zero-initialised last layers do
            head_conv = make_conv(spatial_dims, final_channels, out_channels, 3, 1, False, True, False)
            nn.init.zeros_(head_conv.weight)
            nn.init.zeros_(head_conv.bias)
        else:
            head_conv = conv(final_channels, out_channels, 3, bias=True)
        head = [head_conv]
        if output_attention:
            head.append(attention("output", out_channels, pool=2, stride=output_attention_stride))
        if residual_channel is not None and not 0 <= residual_channel < in_channels:
            raise ValueError(f"residual_channel must be within [0, {in_channels - 1}], got {residual_channel}.")
        # a residual is signed, so the output activation cannot act on it; the sum is clamped to its range instead
        if out_act is not None and residual_channel is None:
            head.append(get_act_layer(out_act))
        self.head = nn.Sequential(*head)
        self.residual_channel = residual_channel
        name = (out_act[0] if isinstance(out_act, tuple) else out_act or "").lower()
        self.residual_low, self.residual_high = RESIDUAL_RANGES.get(name, (None, None))
        if self.spectral_norm_folded:
            accept_spectral_norm_state(self)

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides: Any) -> SCGANGenerator:
        """Build a documented preset (``"paper"``, ``"cpu"`` or ``"student"``, see ``GENERATOR_PRESETS``), overriding
        any argument."""
        if preset not in GENERATOR_PRESETS:
            raise ValueError(f"preset must be one of {sorted(GENERATOR_PRESETS)}, got {preset!r}.")
        return cls(**{**GENERATOR_PRESETS[preset], **overrides})

    def check_input_shape(self, shape: List[int]) -> None:
        """Raise a ValueError naming the fix when an input of ``shape`` ``(B, C, *spatial)`` does not fit the depth."""
        spatial = shape[2:]
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"expected a {self.spatial_dims}D input (B, C, *spatial), got shape {shape}.")
        for size in spatial:
            if size % self.size_divisor != 0 or size < self.min_size:
                raise ValueError(
                    f"spatial size {spatial} does not fit this {self.depth}-level generator: every size must be a "
                    f"multiple of prod(strides)={self.size_divisor} (pad or crop the input, e.g. with MONAI's "
                    f"DivisiblePadd(k={self.size_divisor}), or use fewer levels)."
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a traced graph keeps no Python checks; they would only warn
            self.check_input_shape(list(x.shape))
        base = x[:, self.residual_channel : self.residual_channel + 1] if self.residual_channel is not None else None
        skips: List[torch.Tensor] = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        # The deepest decoder layer takes the bottleneck; each next one its input concatenated with the mirrored skip.
        for position, layer in enumerate(self.decoder):
            if position > 0:
                x = torch.cat((x, skips[self.depth - 1 - position]), dim=1)
            x = layer(x)
        if base is not None:
            output = base.to(x.dtype) + self.head(x)
            if self.residual_low is None and self.residual_high is None:
                return output
            return torch.clamp(output, self.residual_low, self.residual_high)
        return self.head(x)
