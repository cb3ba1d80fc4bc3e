from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parameterized import parameterized

from custom_nets.networks.blocks.resize_conv import ResizeConv2d, ResizeConv3d, _phases_pay, phase_taps
from custom_nets.networks.layers import make_conv

# [spatial_dims, scale_factor, kernel_size, bias]
CASES = [[d, s, k, b] for d in (2, 3) for s in (2, 3) for k in (1, 3, 5) for b in (False, True)]


def _pair(spatial_dims: int, scale: int, kernel: int, bias: bool, cin: int = 3, cout: int = 4):
    """A resize-convolution and the plain convolution with the same weights, for ``Upsample`` + ``Conv``."""
    torch.manual_seed(0)
    resize = (ResizeConv3d if spatial_dims == 3 else ResizeConv2d)(
        cin, cout, kernel, padding=kernel // 2, bias=bias, scale_factor=scale
    )
    plain = (torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d)(
        cin, cout, kernel, padding=kernel // 2, bias=bias
    )
    plain.load_state_dict(resize.state_dict())
    return resize, plain


@parameterized.expand(CASES)
def test_equals_upsample_then_convolve(spatial_dims, scale, kernel, bias):
    """Outputs and gradients (input and weight) equal nearest upsampling followed by the convolution, borders
    included, on the phase path (a map large enough for it) and on the upsampled path (``use_phases`` off)."""
    resize, plain = _pair(spatial_dims, scale, kernel, bias)
    size = 12 if spatial_dims == 3 else 40
    x = torch.randn(2, 3, *([size] * spatial_dims), requires_grad=True)
    assert _phases_pay(x, resize.weight, resize.low_kernel_size)
    expected = plain(F.interpolate(x, scale_factor=scale, mode="nearest"))
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, plain.weight])
    for use_phases in (True, False):
        resize.use_phases = use_phases
        y = resize(x)
        assert y.shape == (2, 4, *([size * scale] * spatial_dims))
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        for ours, theirs in zip(torch.autograd.grad(y.square().sum(), [x, resize.weight]), expected_grads):
            # float32 sums in another order: relative to the gradient's scale
            torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


def test_phase_taps_of_the_generator_layer():
    """×2 nearest upsampling then a 3-tap convolution: the even output voxel reads (w0, w1 + w2) on input voxels
    (i - 1, i), the odd one (w0 + w1, w2) on (i, i + 1); padding 1 on both sides."""
    taps, pad_low, pad_high = phase_taps(2, 3)
    assert (pad_low, pad_high) == (1, 1)
    expected = [[[1, 0, 0], [0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0], [0, 0, 1]]]
    assert taps.tolist() == expected


def test_same_state_dict_as_a_plain_convolution_and_spectral_norm():
    """Checkpoints saved with ``Upsample`` + ``Conv3d`` load unchanged; spectral norm parametrises the weight."""
    resize = make_conv(3, 4, 2, 3, upsample_factor=2, spectral_norm=False)
    plain = make_conv(3, 4, 2, 3, spectral_norm=False)
    assert isinstance(resize, ResizeConv3d)
    assert resize.state_dict().keys() == plain.state_dict().keys()
    normalised = make_conv(3, 4, 2, 3, upsample_factor=2, spectral_norm=True)
    assert normalised.state_dict().keys() == make_conv(3, 4, 2, 3, spectral_norm=True).state_dict().keys()
    assert normalised(torch.randn(1, 4, 6, 6, 6)).shape == (1, 2, 12, 12, 12)


def test_small_maps_take_the_upsampled_path_and_keep_bf16_gradients_finite():
    """A 2³ map under a wide layer (the bottleneck of a 64³ patch) is upsampled first: there oneDNN's CPU bf16 conv3d
    weight gradient of the phase convolution returned uninitialised values (torch 2.13, AVX512-BF16)."""
    resize, plain = _pair(3, 2, 3, False, cin=64, cout=32)
    x = torch.randn(4, 64, 2, 2, 2)
    reference = torch.autograd.grad(plain(F.interpolate(x, scale_factor=2)).square().mean(), [plain.weight])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = resize(x)
    gradient = torch.autograd.grad(y.float().square().mean(), [resize.weight])[0]
    assert torch.isfinite(gradient).all()
    assert (gradient - reference).abs().max() <= 0.05 * reference.abs().max()


def test_scripts_and_traces():
    resize, _ = _pair(3, 2, 3, True)
    x = torch.randn(1, 3, 8, 8, 8)
    torch.testing.assert_close(torch.jit.script(resize)(x), resize(x))
    torch.testing.assert_close(torch.jit.trace(resize, x)(x), resize(x))


@pytest.mark.parametrize(
    "kwargs",
    [{"kernel_size": 2, "padding": 1}, {"kernel_size": 3, "padding": 0}, {"kernel_size": 3, "padding": 1, "stride": 2}],
)
def test_rejects_what_it_cannot_compute(kwargs):
    with pytest.raises(ValueError, match="resize-convolution|odd kernel_size"):
        ResizeConv3d(2, 2, scale_factor=2, **kwargs)
