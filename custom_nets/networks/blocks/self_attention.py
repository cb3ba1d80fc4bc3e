# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
# Ported from Haoyulance/SC-GAN src/utils/util.py::sn_attention (TF1). Changes: PyTorch, 2D or 3D, the pooling factor
# and stride are arguments, the core runs through the fused scaled_dot_product_attention kernel, and a local (windowed)
# key set is offered next to the pooled global one (the sparse attention the paper suggests for its memory cost).
"""BigGAN-style self-attention with pooled keys and values, as used by SC-GAN, or with local windows."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Pool
from torch import nn

from custom_nets.networks.layers import make_conv

__all__ = ["SelfAttention3d"]

ATTENTION_IMPLEMENTATIONS = ("fused", "naive")
# scores per chunk of the explicit narrow-query path: 2**24 (32 MiB in bf16) keeps inference on whole volumes small
SCORE_CHUNK_ELEMENTS = 2**24
# most scores (B·N·M) the explicit path keeps for backward, with their softmax: 2**26 is 128 MiB each in bf16
GRAD_SCORE_ELEMENTS = 2**26
# a 16-bit 1-channel input attends once per distinct value (attend_per_level) when the values are at least this many
# times fewer than the voxels (else finding them costs more than it saves)
LEVEL_REDUCTION = 8


def distinct_values(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(x, return_inverse=True)`` for a 16-bit ``x`` (bf16 or fp16), by a histogram of its 2¹⁶ bit
    patterns instead of a sort: O(N). Returns the distinct values (1D, ordered by bit pattern, not by value; +0 and −0
    count as two) and, shaped as ``x``, each element's index into them."""
    bits = x.reshape(-1).view(torch.int16).to(torch.int32) + 2**15  # 0 ... 2**16 - 1
    present = torch.bincount(bits, minlength=2**16) > 0
    codes = present.nonzero().squeeze(1)
    index_of_code = torch.cumsum(present, 0) - 1
    values = (codes - 2**15).to(torch.int16).view(x.dtype)
    return values, index_of_code[bits].view(x.shape)


class SelfAttention3d(nn.Module):
    """Self-attention block of SC-GAN (Lan, Toga, Sepehrband, Magn. Reson. Med. 86(3), 2021; bioRxiv
    10.1101/2020.06.09.143297), after SAGAN (Zhang et al., 2019) as modified by BigGAN: keys and values are max-pooled.

    With ``x`` of ``C`` channels and ``N`` voxels::

        q = θ(x)                      C -> C/8 (4 if C < 8),       N queries
        k = maxpool(φ(x))             C -> C/8 (4 if C < 8),       M = N / pool_stride**d keys
        v = maxpool(g(x))             C -> C/2 (16 if C < 2)
        o = W_o · softmax(q kᵀ) v     C/2 -> C, no 1/sqrt(d) scaling (as in the paper's code)
        y = (x + σ o) / (1 + σ)       σ a learnable scalar, initialised to 0, so the block starts as the identity

    All four projections are 1×1(×1) convolutions, spectrally normalised by default. Where ``W_o`` narrows (``C`` = 1,
    the output site: 16 -> 1), ``softmax(q kᵀ)(W_o v)`` is computed instead, the same value because the bias-free
    ``W_o`` commutes with the attention's weighted sum, without a 16-channel attention output at full resolution.
    Despite its name the block works for ``spatial_dims`` 2 and 3.

    The core runs through :func:`torch.nn.functional.scaled_dot_product_attention` on contiguous tensors, so that a
    fused kernel keeps memory O(N + M) instead of materialising the N×M score matrix. PyTorch's CPU flash kernel needs
    equal widths for q, k and v: there q and k are zero-padded to v's width (``q kᵀ`` is unchanged), otherwise PyTorch
    would silently fall back to the N×M math path. On CUDA the memory-efficient kernel accepts the unequal widths. The
    ``"naive"`` implementation materialises the matrix and is kept as the reference for tests.

    Three exact shortcuts serve the output site (``C`` = 1, keys pooled with a stride far above the kernel), which
    otherwise took 0.86 of the CPU preset generator's 1.54 s forward + backward on 4 × 64³ patches:

    - Wherever ``pool_stride > pool_size``, φ and g are evaluated only on the voxels the max-pool reads (a pointwise
      projection commutes with taking voxels): with kernel 2 and stride 16 that is 1/512 of them.
    - On CPU, where the input is narrower than the queries (``C`` < 4) and θ has no bias,
      ``q_n · k_m = x_n · (W_θᵀ k_m)``: the input itself is the query and the keys are mapped back through ``W_θ``, so
      no full-resolution query map is built, and the N×M scores are explicit batched matrix products (PyTorch's CPU
      flash kernel is slower at query widths under 4), whatever ``implementation`` says. Without autograd they are
      built ``score_chunk_elements`` (2²⁴) at a time; under autograd the scores and their softmax are kept for the
      backward pass, so the path is taken only up to ``grad_score_elements`` (2²⁶, B·N·M) and the fused core above
      (O(N + M) memory) serves larger cases.
    - On CPU, for a 1-channel 16-bit input (bf16 autocast), the attention is a function of the voxel's value alone and
      is evaluated once per distinct value (:meth:`attend_per_level`): a few thousand instead of N.

    ``benchmarks/attention.py --output-site`` times the forms.

    None is used under ``torch.jit.trace`` (a trace records one input size).

    Local attention (``window_size = w > 0``): instead of the pooled global key set, each query attends to the ``w**d``
    voxels of its non-overlapping window (keys and values not pooled), as in the windowed attention of Swin
    (Liu et al., ICCV 2021) and of 3D Swin-UNETR (Hatamizadeh et al., 2022). Memory and time are O(N·w**d) instead of
    O(N·M). ``window_shift = s`` moves the window grid by ``s`` voxels along every axis (shifted windows, so that two
    sites do not share window borders). Sizes that are not multiples of ``w`` and the shift are handled by zero
    padding whose keys are masked out, so a query only ever sees real voxels of its window (no wrap-around).

    Shapes: input ``(B, C, *spatial)``, output the same. Every spatial size must be at least ``pool_size``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: ``C``.
        pool_size: max-pool kernel for keys and values; 1 gives full attention (M = N).
        pool_stride: max-pool stride, defaults to ``pool_size``. The paper's output-layer attention uses
            ``pool_size=2, pool_stride=64`` (64 keys for a 256³ volume).
        spectral_norm: spectrally normalise the projections.
        n_power_iterations: power iterations of spectral normalisation per training step.
        implementation: ``"fused"`` (SDPA kernel) or ``"naive"`` (explicit score matrix, for reference).
        window_size: ``w``: local attention within ``w**d`` windows; 0 (default) for the pooled global attention.
            Needs ``pool_size=1`` (keys are the window's voxels).
        window_shift: ``s`` in ``[0, w)``, the offset of the window grid (local attention only).

    Raises:
        ValueError: a spatial_dims, channel count, pooling, implementation or window argument out of range, or an
            input whose shape does not fit (in ``forward``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        pool_size: int = 2,
        pool_stride: int | None = None,
        spectral_norm: bool = True,
        n_power_iterations: int = 1,
        implementation: str = "fused",
        window_size: int = 0,
        window_shift: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if pool_size < 1 or (pool_stride is not None and pool_stride < 1):
            raise ValueError(f"pool_size and pool_stride must be positive, got {pool_size} and {pool_stride}.")
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}.")
        if window_size < 0 or (window_size > 0 and pool_size != 1) or not 0 <= window_shift < max(window_size, 1):
            raise ValueError(
                "local attention needs window_size >= 1, pool_size=1 and 0 <= window_shift < window_size; got "
                f"window_size={window_size}, pool_size={pool_size}, window_shift={window_shift}."
            )
        self.window_size = window_size
        self.window_shift = window_shift
        self.window_volume = window_size**spatial_dims
        self.spatial_dims = spatial_dims
        self.pool_size = pool_size
        self.pool_stride = pool_size if pool_stride is None else pool_stride
        self.implementation = implementation
        # The paper's code: C//8 or 4, and C//2 or 16 (so a 1-channel output layer still gets 4-wide keys).
        self.qk_channels = in_channels // 8 or 4
        self.v_channels = in_channels // 2 or 16
        # W_o Σ_m p_nm v_m = Σ_m p_nm (W_o v_m): the bias-free output projection commutes with the attention's weighted
        # sum, so where it narrows (the 1-channel output site: 16 -> 1) it is applied to the M keys' values before the
        # attention instead of to the N attended voxels after it: the same outputs, a 16-wide tensor at full
        # resolution never built (benchmarks/attention.py --output-site measures the saving)
        self.project_values_first = in_channels < self.v_channels

        def projection(cin: int, cout: int) -> nn.Module:
            return make_conv(
                spatial_dims, cin, cout, 1, spectral_norm=spectral_norm, n_power_iterations=n_power_iterations
            )

        self.theta = projection(in_channels, self.qk_channels)
        self.phi = projection(in_channels, self.qk_channels)
        self.g = projection(in_channels, self.v_channels)
        self.out_proj = projection(self.v_channels, in_channels)
        self.pool = (
            nn.Identity()
            if self.pool_size == 1 and self.pool_stride == 1
            else Pool[Pool.MAX, spatial_dims](kernel_size=self.pool_size, stride=self.pool_stride)
        )
        # the max-pool over the voxels it reads, gathered window after window (pool_voxels_read)
        self.read_pool = Pool[Pool.MAX, spatial_dims](kernel_size=self.pool_size, stride=self.pool_size)
        self.skips_voxels = self.pool_stride > self.pool_size
        # q kᵀ = x (W_θᵀ k) where the input is narrower than the queries and θ has no bias
        self.input_as_query = window_size == 0 and in_channels < self.qk_channels and self.theta.bias is None
        self.score_chunk_elements = SCORE_CHUNK_ELEMENTS
        self.grad_score_elements = GRAD_SCORE_ELEMENTS
        self.level_reduction = LEVEL_REDUCTION  # 0 turns attend_per_level off
        self.sigma = nn.Parameter(torch.zeros(()))
        for conv in (self.theta, self.phi, self.g, self.out_proj):
            weight = conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
            nn.init.xavier_uniform_(weight)  # the paper's code initialises the 1x1 projections with Xavier

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``softmax(q kᵀ) v`` for ``q (B, N, Dqk)``, ``k (B, M, Dqk)``, ``v (B, M, Dv)``; returns ``(B, N, Dv)``.
        ``key_mask`` (``(B, M)`` bool, True = a real key) leaves the masked keys out."""
        if self.implementation == "naive":
            scores = torch.bmm(query, key.transpose(1, 2))
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask.unsqueeze(1), float("-inf"))
            return torch.bmm(torch.softmax(scores, dim=-1), value)
        attn_mask: Optional[torch.Tensor] = None
        if key_mask is not None:
            attn_mask = key_mask[:, None, None, :]  # (B, heads, N, M), broadcast
        value_width = value.shape[-1]
        if query.device.type != "cuda":
            # The CPU flash kernel needs one width for q, k and v; zero columns leave q kᵀ unchanged.
            width = max(self.qk_channels, value_width)
            query = F.pad(query, (0, width - self.qk_channels))
            key = F.pad(key, (0, width - self.qk_channels))
            value = F.pad(value, (0, width - value_width))
        # A singleton head dimension: (B, 1, N, D). contiguous() keeps SDPA off the strided math fallback.
        out = F.scaled_dot_product_attention(
            query.unsqueeze(1).contiguous(),
            key.unsqueeze(1).contiguous(),
            value.unsqueeze(1).contiguous(),
            attn_mask=attn_mask,
            scale=1.0,
        )
        return out.squeeze(1)[..., :value_width]

    def attend_in_chunks(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``softmax(q kᵀ) v`` with the score matrix built for a chunk of queries at a time (at most
        ``score_chunk_elements`` scores, without autograd), for narrow queries and few keys; shapes as in
        :meth:`attend`."""
        batch, queries, keys = query.shape[0], query.shape[1], key.shape[1]
        # under autograd every chunk's softmax is kept anyway: one chunk spares the concatenation
        chunk = queries if torch.is_grad_enabled() else max(1, self.score_chunk_elements // max(1, batch * keys))
        key_t = key.transpose(1, 2)
        outputs: List[torch.Tensor] = []
        for start in range(0, queries, chunk):
            scores = torch.bmm(query[:, start : start + chunk], key_t)
            outputs.append(torch.bmm(torch.softmax(scores, dim=-1), value))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    @torch.jit.unused  # dtype views do not script; forward skips this method when scripted
    def attend_per_level(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Optional[torch.Tensor]:
        """``softmax(q kᵀ) v`` for 1-wide queries ``q (B, N, 1)``, evaluated once per distinct query value; shapes as
        in :meth:`attend`. Returns None (the caller takes another path) where the distinct values are not much fewer
        than the queries or their scores would exceed ``grad_score_elements`` under autograd.

        With one input channel the attention is a function of the voxel's value alone, ``o(t) = Σ_m softmax_m(t a_m)
        v_m``, and a 16-bit input takes at most 2¹⁶ values (a few thousand in a 64³ patch), so ``o`` is computed on
        those and gathered: the same arithmetic on the same numbers. Its derivative in ``t``,
        ``Σ_m p_m a_m (v_m − o)``, is gathered too and enters as ``(q − q.detach()) · o'(q)``, which is zero in value
        and gives each query its own gradient; the keys' and values' gradients flow through the gathered ``o``."""
        batch, queries = query.shape[0], query.shape[1]
        levels, inverse = distinct_values(query.detach())
        count = levels.numel()
        if count * self.level_reduction > queries or (
            torch.is_grad_enabled() and batch * count * key.shape[1] > self.grad_score_elements
        ):
            return None
        level_query = levels.view(1, count, 1).expand(batch, count, 1)
        level_out = self.attend_in_chunks(level_query, key, value)  # (B, K, Dv)
        index = inverse.view(batch, queries, 1).expand(batch, queries, value.shape[2])
        # gathered in fp32: its backward sums each level's gradients over thousands of voxels
        out = torch.gather(level_out.float(), 1, index).to(level_out.dtype)
        if query.requires_grad:
            with torch.no_grad():
                key_t = key.float().transpose(1, 2)  # (B, 1, M)
                weights = torch.softmax(level_query.float() * key_t, dim=-1)  # (B, K, M)
                # d/dt Σ_m p_m v_m = Σ_m p_m a_m v_m − o Σ_m p_m a_m
                slope = torch.bmm(weights * key_t, value.float()) - level_out.float() * (weights * key_t).sum(
                    -1, keepdim=True
                )
            out = out + (query - query.detach()) * torch.gather(slope.to(out.dtype), 1, index)
        return out

    def explicit_scores_fit(self, x: torch.Tensor, key: torch.Tensor) -> bool:
        """Whether the explicit N×M scores of ``attend_in_chunks`` stay within ``grad_score_elements`` when autograd
        keeps them (without autograd they are chunked, so always)."""
        if not torch.is_grad_enabled():
            return True
        return x.shape[0] * x[0, 0].numel() * key.shape[1] <= self.grad_score_elements

    def pool_voxels_read(self, x: torch.Tensor) -> torch.Tensor:
        """The voxels of ``x (B, C, *spatial)`` that ``self.pool`` reads, window after window: per axis the
        ``pool_size`` voxels from each multiple of ``pool_stride`` (``read_pool`` then gives ``self.pool``'s output)."""
        read = x
        for axis in range(2, x.dim()):
            windows = (x.shape[axis] - self.pool_size) // self.pool_stride + 1
            starts = torch.arange(windows, device=x.device) * self.pool_stride
            index = (starts[:, None] + torch.arange(self.pool_size, device=x.device)[None, :]).flatten()
            read = read.index_select(axis, index)
        return read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        if not torch.jit.is_tracing() and (len(spatial) != self.spatial_dims or min(spatial) < self.pool_size):
            raise ValueError(
                f"expected a {self.spatial_dims}D input (B, C, *spatial) with every spatial size >= "
                f"pool_size={self.pool_size}, got shape {x.shape}."
            )
        if self.window_size > 0:
            values = self.g(x)
            if self.project_values_first:
                values = self.out_proj(values)
            out = self.local_attention(self.theta(x), self.phi(x), values)
        else:
            tracing = torch.jit.is_tracing()
            read_only = self.skips_voxels and not tracing
            read = self.pool_voxels_read(x) if read_only else x
            values = self.read_pool(self.g(read)) if read_only else self.pool(self.g(read))
            if self.project_values_first:
                values = self.out_proj(values)  # on the M pooled voxels
            # "b c *s -> b (*s) c" for queries, pooled keys and values
            key = self.read_pool(self.phi(read)) if read_only else self.pool(self.phi(read))
            key = key.flatten(2).transpose(1, 2)
            values = values.flatten(2).transpose(1, 2)
            out: Optional[torch.Tensor] = None
            if self.input_as_query and x.device.type == "cpu" and not tracing:
                theta_weight = self.theta.weight.flatten(1)  # (Dqk, C), spectrally normalised when it is
                input_key = torch.matmul(key, theta_weight.to(key.dtype))
                query = x.flatten(2).transpose(1, 2)
                half = x.dtype == torch.bfloat16 or x.dtype == torch.float16
                if self.level_reduction > 0 and x.shape[1] == 1 and half and not torch.jit.is_scripting():
                    out = self.attend_per_level(query, input_key, values)
                if out is None and self.explicit_scores_fit(x, key):
                    out = self.attend_in_chunks(query, input_key, values)
            if out is None:
                out = self.attend(self.theta(x).flatten(2).transpose(1, 2), key, values)
            # "b (*s) c -> b c *s"
            out_shape = list(x.shape)
            out_shape[1] = values.shape[2]
            out = out.transpose(1, 2).reshape(out_shape)
        if not self.project_values_first:
            out = self.out_proj(out)
        # (x + σ·o) / (1 + σ), written so that autograd keeps one N×C tensor instead of two
        return x + (self.sigma / (1 + self.sigma)) * (out - x)

    def window_grid(self, spatial: List[int]) -> List[int]:
        """Windows per axis once the grid is shifted by ``window_shift`` and padded to whole windows."""
        w = self.window_size
        return [(size + self.window_shift + w - 1) // w for size in spatial]

    def window_padding(self, spatial: List[int], grid: List[int]) -> List[int]:
        """``F.pad``'s argument: ``window_shift`` before and up to whole windows after each axis (last axis first)."""
        pad: List[int] = []
        for axis in range(self.spatial_dims - 1, -1, -1):
            pad += [self.window_shift, grid[axis] * self.window_size - spatial[axis] - self.window_shift]
        return pad

    def partition(self, t: torch.Tensor, grid: List[int]) -> torch.Tensor:
        """``(B, C, n1·w, ..., nd·w) -> (B·n1···nd, w**d, C)``, windows in ``(B, n1, ..., nd)`` order."""
        batch, channels, w, d = t.shape[0], t.shape[1], self.window_size, self.spatial_dims
        split: List[int] = [batch, channels]
        for n in grid:
            split += [n, w]
        # (B, C, n1, w, ..., nd, w) -> (B, n1, ..., nd, w, ..., w, C)
        order = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
        return t.reshape(split).permute(order).reshape(-1, self.window_volume, channels)

    def merge(self, t: torch.Tensor, batch: int, grid: List[int]) -> torch.Tensor:
        """The inverse of ``partition``: ``(B·n1···nd, w**d, C) -> (B, C, n1·w, ..., nd·w)``."""
        channels, w, d = t.shape[-1], self.window_size, self.spatial_dims
        t = t.reshape([batch] + grid + [w] * d + [channels])
        order: List[int] = [0, 2 * d + 1]
        for i in range(d):
            order += [1 + i, 1 + d + i]
        return t.permute(order).reshape([batch, channels] + [n * w for n in grid])

    def local_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Windowed ``softmax(q kᵀ) v`` for projected maps ``(B, D, *spatial)``; returns ``(B, Dv, *spatial)``."""
        spatial = list(query.shape[2:])
        batch = query.shape[0]
        grid = self.window_grid(spatial)
        pad = self.window_padding(spatial, grid)
        key_mask: Optional[torch.Tensor] = None
        if max(pad) > 0:
            # real voxels are 1 in the padded grid; the keys of padding are left out of every softmax
            ones = torch.ones([1, 1] + spatial, dtype=query.dtype, device=query.device)
            key_mask = self.partition(F.pad(ones, pad), grid)[..., 0] > 0.5
            key_mask = key_mask.repeat(batch, 1)
        windows_q = self.partition(F.pad(query, pad), grid)
        windows_k = self.partition(F.pad(key, pad), grid)
        windows_v = self.partition(F.pad(value, pad), grid)
        attended = self.attend(windows_q, windows_k, windows_v, key_mask)
        attended = self.merge(attended, batch, grid)
        for axis in range(self.spatial_dims):
            attended = attended.narrow(2 + axis, self.window_shift, spatial[axis])
        return attended
