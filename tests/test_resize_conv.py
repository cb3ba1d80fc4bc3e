from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from parameterized import parameterized

from custom_nets.networks.blocks.resize_conv import ResizeConv2d, ResizeConv3d, _use_phases, phase_taps
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
    assert _use_phases("auto", x, resize.weight, resize.low_kernel_size)
    expected = plain(F.interpolate(x, scale_factor=scale, mode="nearest"))
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, plain.weight])
    for mode in ("auto", "never"):
        resize.phase_mode = mode
        y = resize(x)
        assert y.shape == (2, 4, *([size * scale] * spatial_dims))
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        for ours, theirs in zip(torch.autograd.grad(y.square().sum(), [x, resize.weight]), expected_grads):
            # float32 sums in another order: relative to the gradient's scale
            torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


def test_phase_taps_of_the_generator_layer():
    """×2 nearest upsampling then a 3-tap convolution: the even output voxel reads (w0, w1 + w2) on input voxels
    (i - 1, i), the odd one (w0 + w1, w2) on (i, i + 1); padding 1 on both sides."""
    taps, padding = phase_taps(2, 3)
    assert padding == 1
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


@pytest.mark.parametrize(
    "shape, cin, cout, expected",
    [
        ((1, 64, 32, 32, 32), 64, 3, True),  # the CPU preset's last decoder layer
        ((1, 128, 16, 16, 16), 128, 32, True),
        ((1, 256, 8, 8, 8), 256, 64, False),  # 512 voxels < 2 · 64 · 27 weights per input channel: summing costs more
        ((4, 64, 8, 8, 8), 64, 16, False),  # the student's 8³ layer: 512 < 2 · 16 · 27, whatever the batch
        ((64, 8, 2, 2, 2), 8, 1, False),  # smaller than the 3³ phase kernel, even with weights this small
    ],
)
def test_auto_takes_the_phase_form_where_it_pays_and_is_safe(shape, cin, cout, expected):
    resize = ResizeConv3d(cin, cout, 3, padding=1)
    assert _use_phases("auto", torch.empty(shape), resize.weight, resize.low_kernel_size) is expected


def test_bf16_weight_gradient_at_a_2_cubed_map():
    """What the small-map rule avoids: on a 2³ map oneDNN's CPU bf16 conv3d weight gradient of the phase convolution
    returned wrong values (torch 2.13.0, AVX-512 BF16). ``"auto"`` upsamples first and gets the fp32 gradient."""
    resize, plain = _pair(3, 2, 3, False, cin=64, cout=32)
    x = torch.randn(4, 64, 2, 2, 2)
    reference = torch.autograd.grad(plain(F.interpolate(x, scale_factor=2)).square().mean(), [plain.weight])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = resize(x)
    gradient = torch.autograd.grad(y.float().square().mean(), [resize.weight])[0]
    assert torch.isfinite(gradient).all()
    assert (gradient - reference).abs().max() <= 0.05 * reference.abs().max()


def test_channels_last_bias_and_autocast_dtype_match_the_upsampled_path():
    """The phase form returns what the upsampled path returns: a channels-last map for channels-last input (no layout
    copies in training with ``channels_last``), and the autocast dtype with a bias."""
    resize, plain = _pair(3, 2, 3, True, cin=6, cout=4)
    resize, plain = resize.to(memory_format=torch.channels_last_3d), plain.to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 6, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    y = resize(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, plain(F.interpolate(x, scale_factor=2)), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes = {mode: (setattr(resize, "phase_mode", mode), resize(x))[1].dtype for mode in ("always", "never")}
    assert dtypes["always"] == dtypes["never"] == torch.bfloat16


def test_generator_same_state_dict_and_outputs_as_upsample_then_convolve():
    """The generator's decoder keeps the layer indices and parameter names of checkpoints saved when it was
    ``[nn.Upsample, Conv3d, ...]``, and gives their outputs."""
    from custom_nets import build_generator

    torch.manual_seed(0)
    net = build_generator(channels=[8, 16, 16], encoder_attention_levels=[2], decoder_attention_levels=[1])
    net = net.eval()
    assert {f"decoder.{i}.1.parametrizations.weight.original" for i in range(3)} <= set(net.state_dict())
    assert all(isinstance(net.decoder[i][0], torch.nn.Identity) for i in range(3))
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        outputs = {}
        for mode in ("auto", "never"):
            for module in net.modules():
                if isinstance(module, ResizeConv3d):
                    module.phase_mode = mode
            outputs[mode] = net(x)
    torch.testing.assert_close(outputs["auto"], outputs["never"], rtol=1e-4, atol=1e-5)


def test_scripts_and_traces():
    """Scripted, the phase form runs (and is chosen per call); traced, the plain operators are recorded (a trace keeps
    one path for every later size), without shape-dependent warnings."""
    resize, _ = _pair(3, 2, 3, True)
    x = torch.randn(1, 3, 8, 8, 8)
    assert _use_phases("auto", x, resize.weight, resize.low_kernel_size)
    torch.testing.assert_close(torch.jit.script(resize)(x), resize(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(resize, x)
    torch.testing.assert_close(traced(x), resize(x), rtol=1e-5, atol=1e-5)
    assert "upsample_nearest" in str(traced.graph)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 2, "padding": 1},
        {"kernel_size": 3, "padding": 0},
        {"kernel_size": 3, "padding": 1, "stride": 2},
        {"kernel_size": (3, 3, 1), "padding": (1, 1, 0)},
        {"kernel_size": 3, "padding": 1, "phase_mode": "sometimes"},
    ],
)
def test_rejects_what_it_cannot_compute(kwargs):
    with pytest.raises(ValueError, match="resize-convolution|odd kernel_size|phase_mode"):
        ResizeConv3d(2, 2, scale_factor=2, **kwargs)
