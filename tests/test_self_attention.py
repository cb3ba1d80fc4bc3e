from __future__ import annotations

import copy

import pytest
import torch
from parameterized import parameterized
from torch.nn.attention import SDPBackend, sdpa_kernel

from custom_nets import SelfAttention3d
from custom_nets.networks.blocks.self_attention import distinct_values

# [spatial_dims, channels, spatial size, pool_size, pool_stride]
CASES = [
    [3, 64, 8, 2, None],
    [3, 16, 6, 1, None],
    [3, 1, 16, 2, 8],
    [3, 2, 8, 2, None],
    [2, 32, 12, 2, None],
    [2, 4, 8, 1, None],
]


def _with_open_gate(block: SelfAttention3d, sigma: float = 0.7) -> SelfAttention3d:
    with torch.no_grad():
        block.sigma.fill_(sigma)
    return block.eval()


@parameterized.expand(CASES)
def test_shape_and_identity_at_init(spatial_dims, channels, size, pool_size, pool_stride):
    block = SelfAttention3d(spatial_dims, channels, pool_size, pool_stride).eval()
    x = torch.randn(2, channels, *([size] * spatial_dims))
    y = block(x)
    assert y.shape == x.shape
    # σ starts at 0, so (x + 0·o) / 1 = x: the block starts as the identity, as in the paper's code.
    assert torch.equal(y, x)


@parameterized.expand(CASES)
def test_fused_matches_naive(spatial_dims, channels, size, pool_size, pool_stride):
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(spatial_dims, channels, pool_size, pool_stride))
    x = torch.randn(2, channels, *([size] * spatial_dims))
    # Forcing the flash kernel turns a silent fallback to the N×M math path into an error.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused = block(x)
    block.implementation = "naive"
    naive = block(x)
    assert torch.linalg.vector_norm(fused - naive) <= 1e-5 * torch.linalg.vector_norm(naive)


def _pooled_reference(block: SelfAttention3d, x: torch.Tensor) -> torch.Tensor:
    """The paper's order of operations: o = W_o · softmax(q kᵀ) v over the pooled keys and values, then the gate."""
    query = block.theta(x).flatten(2).transpose(1, 2)
    key = block.pool(block.phi(x)).flatten(2).transpose(1, 2)
    value = block.pool(block.g(x)).flatten(2).transpose(1, 2)
    attended = torch.bmm(torch.softmax(torch.bmm(query, key.transpose(1, 2)), -1), value)
    out = block.out_proj(attended.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:]))
    return x + (block.sigma / (1 + block.sigma)) * (out - x)


@parameterized.expand(CASES)
def test_matches_the_papers_order_of_operations(spatial_dims, channels, size, pool_size, pool_stride):
    """Including the 1-channel output site, where the output projection is applied to the values first."""
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(spatial_dims, channels, pool_size, pool_stride))
    assert block.project_values_first == (channels == 1)
    x = torch.randn(2, channels, *([size] * spatial_dims))
    with torch.no_grad():
        reference = _pooled_reference(block, x)
        for implementation in ("fused", "naive"):
            block.implementation = implementation
            result = block(x)
            assert torch.linalg.vector_norm(result - reference) <= 1e-5 * torch.linalg.vector_norm(reference)


def test_gradients_reach_gate_and_projections():
    block = SelfAttention3d(3, 16).train()
    x = torch.randn(1, 16, 8, 8, 8, requires_grad=True)
    (block(x) * torch.randn_like(x)).sum().backward()
    assert block.sigma.grad is not None and block.sigma.grad.abs() > 0
    # With σ = 0 the projections get no gradient yet; once σ moves they do.
    with torch.no_grad():
        block.sigma.fill_(0.1)
    block.zero_grad()
    (block(x) * torch.randn_like(x)).sum().backward()
    assert block.theta.parametrizations.weight.original.grad.abs().sum() > 0


def test_spectral_norm_on_projections():
    block = SelfAttention3d(3, 32).train()
    x = torch.randn(1, 32, 8, 8, 8)
    # One power iteration per training step, as the paper's code: the estimate converges within ~20 steps.
    for _ in range(20):
        block(x)
    for conv in (block.theta, block.phi, block.g, block.out_proj):
        sigma_max = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert abs(sigma_max.item() - 1.0) < 1e-2


def test_without_spectral_norm():
    block = SelfAttention3d(3, 16, spectral_norm=False)
    assert not hasattr(block.theta, "parametrizations")


@parameterized.expand(
    [
        [dict(spatial_dims=1, in_channels=8), "spatial_dims"],
        [dict(spatial_dims=3, in_channels=0), "in_channels"],
        [dict(spatial_dims=3, in_channels=8, pool_size=0), "pool_size"],
        [dict(spatial_dims=3, in_channels=8, implementation="flash"), "implementation"],
        [dict(spatial_dims=3, in_channels=8, pool_size=2, window_size=4), "pool_size=1"],
        [dict(spatial_dims=3, in_channels=8, pool_size=1, window_size=4, window_shift=4), "window_shift"],
        [dict(spatial_dims=3, in_channels=8, pool_size=1, window_size=-1), "window_size"],
    ]
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SelfAttention3d(**kwargs)


def test_too_small_input():
    with pytest.raises(ValueError, match="pool_size=4"):
        SelfAttention3d(3, 8, pool_size=4)(torch.randn(1, 8, 2, 8, 8))


# [spatial_dims, channels, spatial shape, window_size, window_shift]: whole windows, padding, shifts, anisotropic shapes
LOCAL_CASES = [
    [3, 16, (8, 8, 8), 4, 0],
    [3, 16, (8, 8, 8), 4, 2],
    [3, 8, (6, 7, 5), 4, 1],
    [3, 1, (8, 4, 6), 2, 1],
    [2, 32, (12, 12), 4, 0],
    [2, 4, (9, 6), 4, 3],
]


def _local_reference(block: SelfAttention3d, x: torch.Tensor) -> torch.Tensor:
    """Full N×N attention restricted by window membership computed from voxel coordinates, independent of the
    block's padding and partitioning: voxel i sees voxel j iff floor((p + shift) / w) agrees on every axis."""
    spatial = x.shape[2:]
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in spatial], indexing="ij"), -1).reshape(
        -1, len(spatial)
    )
    window_of = (coords + block.window_shift) // block.window_size
    same_window = (window_of[:, None, :] == window_of[None, :, :]).all(-1)
    query = block.theta(x).flatten(2).transpose(1, 2)
    key = block.phi(x).flatten(2).transpose(1, 2)
    value = block.g(x).flatten(2).transpose(1, 2)
    scores = torch.bmm(query, key.transpose(1, 2)).masked_fill(~same_window, float("-inf"))
    attended = torch.bmm(torch.softmax(scores, -1), value).transpose(1, 2).reshape(x.shape[0], -1, *spatial)
    out = block.out_proj(attended)
    return x + (block.sigma / (1 + block.sigma)) * (out - x)


@parameterized.expand(LOCAL_CASES)
def test_local_attention_matches_the_windowed_reference(spatial_dims, channels, shape, window, shift):
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(spatial_dims, channels, 1, window_size=window, window_shift=shift))
    x = torch.randn(2, channels, *shape)
    with torch.no_grad():
        reference = _local_reference(block, x)
        fused = block(x)
        block.implementation = "naive"
        naive = block(x)
    assert fused.shape == x.shape
    for result in (fused, naive):
        assert torch.linalg.vector_norm(result - reference) <= 1e-5 * torch.linalg.vector_norm(reference)


def test_local_attention_stays_within_its_window():
    """A change in one window leaves every other window's output unchanged (and changes its own)."""
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(3, 8, 1, window_size=4))
    x = torch.randn(1, 8, 8, 8, 8)
    changed = x.clone()
    changed[..., :4, :4, :4] += 1.0
    with torch.no_grad():
        difference = (block(changed) - block(x)).abs().amax(1)
    assert difference[0, :4, :4, :4].min() > 0
    difference[0, :4, :4, :4] = 0
    assert difference.max() == 0


def test_local_attention_uses_the_flash_kernel_on_whole_windows():
    block = _with_open_gate(SelfAttention3d(3, 16, 1, window_size=4))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():  # a silent math fallback would raise here
        assert block(torch.randn(1, 16, 8, 8, 8)).shape == (1, 16, 8, 8, 8)


@parameterized.expand([[0], [2]])
def test_local_attention_scripts_and_matches_eager(shift):
    block = _with_open_gate(SelfAttention3d(3, 8, 1, window_size=4, window_shift=shift, spectral_norm=False))
    scripted = torch.jit.script(block)
    x = torch.randn(1, 8, 6, 8, 5)
    with torch.no_grad():
        assert torch.allclose(scripted(x), block(x), atol=1e-6)


# [spatial_dims, channels, spatial shape, pool_size, pool_stride]: the output site's shortcuts (voxels the pool reads,
# the input as the query), odd sizes whose last window ends before the border, 1-3 channels, 2D and 3D
SHORTCUT_CASES = [
    [3, 1, (32, 32, 32), 2, 16],
    [3, 1, (37, 21, 19), 2, 8],
    [3, 2, (20, 17, 23), 3, 5],
    [3, 3, (16, 16, 16), 2, 4],
    [2, 1, (40, 27), 2, 8],
]


def _plain(block: SelfAttention3d) -> SelfAttention3d:
    plain = copy.deepcopy(block)
    plain.skips_voxels = plain.input_as_query = False
    return plain


@parameterized.expand(SHORTCUT_CASES)
def test_output_site_shortcuts_match_the_plain_path(spatial_dims, channels, shape, pool_size, pool_stride):
    """Outputs and every gradient (input, σ, the four projections' weights and spectral-norm originals) equal the
    plain path's; the spectral-norm power iteration advances the same in both."""
    torch.manual_seed(0)
    block = SelfAttention3d(spatial_dims, channels, pool_size, pool_stride).train()
    with torch.no_grad():
        block.sigma.fill_(0.7)
    assert block.skips_voxels and block.input_as_query == (channels < 4)
    plain = _plain(block)
    x = torch.randn(2, channels, *shape)
    weights = torch.randn(2, channels, *shape)
    results = []
    for module in (block, plain):
        inputs = x.clone().requires_grad_()
        (module(inputs) * weights).sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append((module(inputs.detach()), inputs.grad, grads, dict(module.named_buffers())))
    (out, x_grad, grads, buffers), (plain_out, plain_x_grad, plain_grads, plain_buffers) = results
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_grad, plain_x_grad, rtol=1e-4, atol=1e-6)
    assert grads.keys() == plain_grads.keys() and len(grads) >= 5
    for name in grads:  # sums over every voxel: compared as vectors (float rounding of single small entries)
        difference = torch.linalg.vector_norm(grads[name] - plain_grads[name])
        assert difference <= 1e-4 * torch.linalg.vector_norm(plain_grads[name]) + 1e-7, name
    for name in buffers:  # the spectral norms' u, v
        torch.testing.assert_close(buffers[name], plain_buffers[name], msg=lambda m: f"{name}: {m}")


def test_voxels_read_pool_to_the_max_pool():
    block = SelfAttention3d(3, 1, pool_size=3, pool_stride=7)
    x = torch.randn(2, 1, 30, 22, 17)
    torch.testing.assert_close(block.read_pool(block.pool_voxels_read(x)), block.pool(x), rtol=0, atol=0)


def test_narrow_query_chunks_match_one_chunk():
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 8))
    x = torch.randn(2, 1, 32, 24, 16)
    with torch.no_grad():
        whole = block(x)
        block.score_chunk_elements = 1000  # 20 queries a chunk (2 × 24 keys each), a ragged last one
        torch.testing.assert_close(block(x), whole, rtol=1e-6, atol=1e-7)


def test_output_site_shortcuts_under_bf16_autocast():
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 16))
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, plain = block(x), _plain(block)(x)
    assert fast.dtype == plain.dtype
    torch.testing.assert_close(fast.float(), plain.float(), rtol=0, atol=2e-2)


def test_output_site_traces_the_plain_path():
    """A trace records one size; it takes the plain operators, valid at every later size."""
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 8))
    traced = torch.jit.trace(block, torch.randn(1, 1, 16, 16, 16))
    x = torch.randn(2, 1, 40, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), block(x), rtol=1e-5, atol=1e-6)


def test_output_site_scripts():
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 8, spectral_norm=False))
    x = torch.randn(1, 1, 24, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(block)(x), block(x))


def _record_paths(block: SelfAttention3d) -> dict:
    """Count the calls of θ's forward (the plain query), ``pool_voxels_read`` and ``attend_in_chunks``."""
    calls = {"theta": 0, "pool_voxels_read": 0, "attend_in_chunks": 0, "attend_per_level": 0}

    def counted(name, method):
        def wrapper(*args):
            calls[name] += 1
            return method(*args)

        return wrapper

    block.theta.register_forward_hook(lambda *_: calls.__setitem__("theta", calls["theta"] + 1))
    for name in ("pool_voxels_read", "attend_in_chunks", "attend_per_level"):
        setattr(block, name, counted(name, getattr(block, name)))
    return calls


@parameterized.expand([[True], [False]])
def test_output_site_takes_the_shortcuts(grad):
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 8)).train(grad)
    calls = _record_paths(block)
    with torch.set_grad_enabled(grad):
        block(torch.randn(2, 1, 32, 32, 32, requires_grad=grad))
    assert calls == {"theta": 0, "pool_voxels_read": 1, "attend_in_chunks": 1, "attend_per_level": 0}


def test_large_score_matrices_under_autograd_take_the_fused_core():
    """Under autograd the explicit path keeps B·N·M scores and their softmax: beyond ``grad_score_elements`` the fused
    core (O(N + M) memory) runs instead; without autograd the explicit path is chunked and always taken."""
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 2))  # stride = kernel: M = N / 8
    block.grad_score_elements = 2 * 16**3 * 512 - 1  # just below this input's B·N·M
    calls = _record_paths(block)
    x = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
    out = block(x)
    assert calls == {"theta": 1, "pool_voxels_read": 0, "attend_in_chunks": 0, "attend_per_level": 0}
    with torch.no_grad():
        torch.testing.assert_close(block(x), out.detach(), rtol=1e-5, atol=1e-6)
    assert calls["attend_in_chunks"] == 1


def _bf16_site_input(shape, levels: int, grad: bool) -> torch.Tensor:
    """A 1-channel bf16 map with at most ``levels`` distinct values, as the output convolution gives under autocast."""
    values = torch.randn(levels)
    return values[torch.randint(levels, shape)].to(torch.bfloat16).requires_grad_(grad)


# [spatial shape, distinct input values, pool_stride, gradients]
LEVEL_CASES = [
    [(32, 32, 32), 500, 16, True],
    [(32, 24, 16), 300, 8, False],
    [(20, 17, 23), 100, 5, True],
]


@parameterized.expand(LEVEL_CASES)
def test_per_level_attention_matches_per_voxel(shape, levels, pool_stride, grad):
    """With few distinct bf16 input values the attention runs once per value: the same outputs as per voxel, and the
    gradients of the input and of every parameter as close to the fp32 computation's as per voxel (both carry bf16
    rounding, a few percent on the key projections: within twice the per-voxel error or 1 % of the gradient)."""
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(3, 1, 2, pool_stride)).train(grad)
    per_voxel = copy.deepcopy(block)
    per_voxel.level_reduction = 0
    reference = copy.deepcopy(per_voxel)
    calls = _record_paths(block)
    x = _bf16_site_input((2, 1, *shape), levels, grad)
    weights = torch.randn(x.shape)
    results = []
    for module, inputs in [(block, x), (per_voxel, x), (reference, x.float())]:
        inputs = inputs.detach().clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=module is not reference):
            out = module(inputs)
        if grad:
            (out.float() * weights).sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append({"output": out.float(), "input gradient": inputs.grad, **grads})
    assert calls["attend_per_level"] == 1 and calls["attend_in_chunks"] == 1 and calls["theta"] == 0
    level, voxel, exact = results
    torch.testing.assert_close(level["output"], voxel["output"], rtol=0, atol=1e-2)
    for name in exact if grad else []:
        scale = torch.linalg.vector_norm(exact[name].float())
        level_error = torch.linalg.vector_norm(level[name].float() - exact[name].float())
        voxel_error = torch.linalg.vector_norm(voxel[name].float() - exact[name].float())
        assert level_error <= 2 * voxel_error + 1e-2 * scale + 1e-7, name


def test_per_level_attention_is_skipped_for_many_values_and_full_precision():
    """Where the distinct values are not ``level_reduction`` times fewer than the voxels (or the input is fp32), the
    per-voxel path runs: one sort wasted at most, never a different result."""
    torch.manual_seed(0)
    block = _with_open_gate(SelfAttention3d(3, 1, 2, 8))
    calls = _record_paths(block)
    many = torch.randn(1, 1, 16, 16, 16).to(torch.bfloat16)  # ~2,000 distinct values in 4,096 voxels
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(many)
    assert calls["attend_per_level"] == 1 and calls["attend_in_chunks"] == 1  # tried, fell back to per voxel
    per_voxel = copy.deepcopy(block)
    per_voxel.level_reduction = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(out, per_voxel(many), rtol=0, atol=0)
    with torch.no_grad():
        block(torch.randn(1, 1, 16, 16, 16))
    assert calls["attend_per_level"] == 1  # fp32: not tried


@parameterized.expand([[torch.bfloat16], [torch.float16]])
def test_distinct_values_are_torch_unique(dtype):
    """The histogram of bit patterns finds torch.unique's values, and every element's index points at its own bits
    (±0, infinities and NaN included)."""
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-8])
    x = torch.cat([torch.randn(3000), special, torch.randn(94).round()]).to(dtype).view(2, 1, 1550)
    values, inverse = distinct_values(x)
    assert inverse.shape == x.shape and values.dtype == dtype
    assert torch.equal(values[inverse].view(torch.int16), x.view(torch.int16))
    assert len(set(values.view(torch.int16).tolist())) == values.numel()
    finite = values[torch.isfinite(values) & (values != 0)]
    unique = torch.unique(x[torch.isfinite(x) & (x != 0)])
    torch.testing.assert_close(torch.sort(finite.float()).values, unique.float(), rtol=0, atol=0)
