from __future__ import annotations

import pytest
import torch
from parameterized import parameterized

from custom_nets import GENERATOR_PRESETS, SCGANGenerator, SelfAttention3d
from custom_nets.networks.layers import has_spectral_norm

SMALL = dict(
    channels=(8, 16, 32), encoder_attention_levels=(2,), decoder_attention_levels=(1,), output_attention_stride=4
)

# [constructor arguments, input shape, expected output shape]
SHAPE_CASES = [
    [dict(SMALL), (1, 2, 16, 16, 16), (1, 1, 16, 16, 16)],
    [dict(SMALL, in_channels=3, out_channels=2), (2, 3, 16, 24, 8), (2, 2, 16, 24, 8)],
    [dict(SMALL, up_mode="deconv", kernel_size=(5, 3, 2)), (1, 2, 16, 16, 16), (1, 1, 16, 16, 16)],
    [dict(SMALL, up_mode="resize", kernel_size=(5, 3, 2)), (1, 2, 16, 16, 16), (1, 1, 16, 16, 16)],
    [dict(SMALL, spatial_dims=2), (2, 2, 32, 16), (2, 1, 32, 16)],
    [dict(SMALL, spatial_dims=2, in_channels=4, up_mode="deconv", strides=(2, 1, 2)), (1, 4, 12, 8), (1, 1, 12, 8)],
    [
        dict(in_channels=1, channels=(4,), encoder_attention_levels=(1,), decoder_attention_levels=()),
        (1, 1, 8, 8, 8),
        (1, 1, 8, 8, 8),
    ],
    [
        dict(channels=(4, 4, 4, 4), output_attention=False, encoder_attention_levels=()),
        (1, 2, 16, 16, 16),
        (1, 1, 16, 16, 16),
    ],
    [dict(SMALL, dropout=0.5, final_channels=8), (1, 2, 16, 16, 16), (1, 1, 16, 16, 16)],
    [dict(SMALL, out_act="sigmoid"), (1, 2, 8, 8, 8), (1, 1, 8, 8, 8)],
]


@parameterized.expand(SHAPE_CASES)
def test_shapes(kwargs, input_shape, expected_shape):
    net = SCGANGenerator(**kwargs)
    out = net(torch.randn(input_shape))
    assert out.shape == expected_shape
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad and p.ndim > 1)


@parameterized.expand([["sigmoid", 0.0, 1.0], ["relu", 0.0, float("inf")], ["tanh", -1.0, 1.0]])
def test_output_activation(out_act, low, high):
    out = SCGANGenerator(**SMALL, out_act=out_act).eval()(10 * torch.randn(1, 2, 8, 8, 8))
    assert out.min() >= low and out.max() <= high


def test_cpu_preset_on_a_64_patch():
    net = SCGANGenerator.from_preset("cpu").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 64, 64, 64)).shape == (1, 1, 64, 64, 64)
    assert net.depth == 5 and net.size_divisor == 32


def test_paper_preset_topology_at_256():
    # On the meta device: the full 256³ forward pass is checked for shapes without allocating memory.
    with torch.device("meta"):
        net = SCGANGenerator.from_preset("paper").eval()
        out = net(torch.empty(1, 2, 256, 256, 256))
    assert out.shape == (1, 1, 256, 256, 256)
    assert net.depth == 8 and net.kernel_sizes == (5, 5, 5, 5, 3, 3, 3, 2)
    # 133 M, as an independent count of the TF topology (shared/reference/perf.md §1); affine instance norms included.
    assert sum(p.numel() for p in net.parameters()) == 132_875_878
    attention = [m for m in net.modules() if isinstance(m, SelfAttention3d)]
    # after l5 (512 ch), after dl5 (256 ch), on the 1-channel output with keys pooled at stride 64
    assert [a.out_proj.out_channels for a in attention] == [512, 256, 1]
    assert attention[-1].pool_stride == 64
    assert isinstance(net.decoder[0][0], torch.nn.ConvTranspose3d)


@parameterized.expand(
    [
        [
            "3d_cgan",
            dict(spectral_norm=False, encoder_attention_levels=(), decoder_attention_levels=(), output_attention=False),
            False,
            0,
        ],
        ["attention_cgan", dict(spectral_norm=False), False, 3],
        ["scgan", dict(), True, 3],
    ]
)
def test_comparison_models_by_arguments(_, kwargs, spectral, n_attention):
    net = SCGANGenerator(**{**SMALL, **kwargs})
    assert has_spectral_norm(net) == spectral
    assert sum(isinstance(m, SelfAttention3d) for m in net.modules()) == n_attention


def test_spectral_norm_on_every_convolution():
    # Random 3³ kernels have close top singular values, so the power iteration needs a few more rounds than 1 per step.
    net = SCGANGenerator(**SMALL, up_mode="deconv", n_power_iterations=5).train()
    x = torch.randn(1, 2, 16, 16, 16)
    for _ in range(20):
        net(x)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert convs and all(hasattr(c, "parametrizations") for c in convs)
    for conv in convs:
        # PyTorch normalises a transposed convolution's weight over its output channels (dim 1).
        weight = conv.weight.transpose(0, 1) if isinstance(conv, torch.nn.ConvTranspose3d) else conv.weight
        assert abs(torch.linalg.matrix_norm(weight.flatten(1), ord=2).item() - 1.0) < 2e-2


def test_resize_mode_has_no_checkerboard():
    # A constant input through fresh layers: transposed 5³ stride-2 kernels overlap unevenly, so neighbouring output
    # voxels alternate; nearest upsampling + convolution gives a constant interior.
    torch.manual_seed(0)
    kwargs = dict(
        channels=(4,),
        kernel_size=5,
        encoder_attention_levels=(),
        decoder_attention_levels=(),
        output_attention=False,
        norm="batch",
        spectral_norm=False,
    )
    x = torch.ones(1, 2, 16, 16, 16)

    def parity_gap(up_mode):
        net = SCGANGenerator(**kwargs, up_mode=up_mode).eval()
        with torch.no_grad():
            interior = net.decoder[0][:2](net.encoder[0](x))[0, 0, 4:-4, 4:-4, 4:-4]
        return (interior[::2].mean() - interior[1::2].mean()).abs().item()

    assert parity_gap("resize") < 1e-6 < parity_gap("deconv")


@parameterized.expand(
    [
        [(1, 2, 20, 16, 16), "multiple of prod\\(strides\\)=8"],
        [(1, 2, 16, 16), "3D input"],
    ]
)
def test_input_that_does_not_fit(shape, message):
    with pytest.raises(ValueError, match=message):
        SCGANGenerator(**SMALL)(torch.randn(shape))


@parameterized.expand(
    [
        [dict(up_mode="pixelshuffle"), "up_mode"],
        [dict(encoder_attention_levels=(4,)), "encoder_attention_levels"],
        [dict(decoder_attention_levels=(3,)), "decoder_attention_levels"],
        [dict(kernel_size=(3, 3)), "kernel_size"],
        [dict(dropout=1.0), "dropout"],
        [dict(residual_channel=2), "residual_channel"],
        [dict(residual_channel=-1), "residual_channel"],
        [dict(local_attention_sites=("middle",)), "local_attention_sites"],
        [dict(local_attention_sites=("output",), attention_window=0), "attention_window"],
    ]
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SCGANGenerator(**{**SMALL, **kwargs})


def test_unknown_preset():
    with pytest.raises(ValueError, match="paper"):
        SCGANGenerator.from_preset("huge")
    assert set(GENERATOR_PRESETS) == {"paper", "cpu", "student"}


@parameterized.expand([[3], [2]])
def test_residual_output_starts_at_the_base_channel_and_learns_a_correction(spatial_dims):
    generator = SCGANGenerator(**{**SMALL, "spatial_dims": spatial_dims, "in_channels": 3, "residual_channel": 2})
    x = torch.rand((2, 3) + (16,) * spatial_dims)
    assert torch.equal(generator(x), x[:, 2:3])  # a zero correction: the prior exactly
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    for _ in range(2):  # the first step moves the zero head, the second every layer before it
        optimizer.zero_grad()
        (generator(x) - x[:, :1]).pow(2).mean().backward()
        optimizer.step()
    moved = generator(x) - x[:, 2:3]
    assert moved.abs().max() > 1e-4 and (moved > 0).any() and (moved < 0).any()  # a signed correction
    assert not has_spectral_norm(generator.head[0])


# [constructor arguments, activation class of the last decoder layer]
FINAL_ACT_CASES = [
    [dict(SMALL), torch.nn.ReLU],  # the paper's decoder
    [dict(SMALL, in_channels=3, residual_channel=2), torch.nn.LeakyReLU],
    [dict(SMALL, in_channels=3, residual_channel=2, final_act="relu"), torch.nn.ReLU],
    [dict(SMALL, final_act="prelu"), torch.nn.PReLU],
]


@parameterized.expand(FINAL_ACT_CASES)
def test_final_act(kwargs, expected):
    generator = SCGANGenerator(**kwargs)
    activations = [layer[3] for layer in generator.decoder]  # resize-conv (Identity, conv), norm, activation
    assert isinstance(activations[-1], expected)
    assert all(type(act) is torch.nn.ReLU for act in activations[:-1])  # the paper's ReLU elsewhere


@parameterized.expand([[None, True], ["relu", False]])
def test_residual_head_keeps_a_gradient_where_the_last_maps_are_negative(final_act, learns):
    """A residual correction is ~0 in most voxels; where the last decoder layer's pre-activations are all negative a
    ReLU passes no gradient and the correction can no longer grow there (the MD plateau, tuning.md)."""
    generator = SCGANGenerator(**SMALL, in_channels=3, residual_channel=2, final_act=final_act)
    torch.nn.init.normal_(generator.head[0].weight, std=0.1)  # a head that has started to learn
    with torch.no_grad():
        generator.decoder[-1][2].norm.bias.fill_(-100.0)  # every normalised map far below 0
    x = torch.rand(1, 3, 16, 16, 16)
    (generator(x) - x[:, :1]).pow(2).mean().backward()
    gradient = next(generator.decoder[-1][1].parameters()).grad  # the last decoder convolution's weight
    assert (gradient.abs().max() > 0) == learns


@parameterized.expand([[3, ("output",)], [3, ("encoder", "decoder", "output")], [2, ("decoder",)]])
def test_local_attention_sites(spatial_dims, sites):
    """Local sites swap the key set, not the parameters: same state-dict names and shapes as the paper's model."""
    kwargs = dict(spatial_dims=spatial_dims, channels=(8, 16, 32), encoder_attention_levels=(3,))
    kwargs.update(decoder_attention_levels=(2,), output_attention_stride=4)
    pooled = SCGANGenerator(**kwargs)
    local = SCGANGenerator(**kwargs, local_attention_sites=sites, attention_window=4)
    assert {k: v.shape for k, v in pooled.state_dict().items()} == {k: v.shape for k, v in local.state_dict().items()}
    windows = {m.window_size: m.window_shift for m in local.modules() if isinstance(m, SelfAttention3d)}
    assert 4 in windows and (0 in windows) == (len(sites) < 3)
    x = torch.randn(1, 2, *([24] * spatial_dims))
    assert local(x).shape == (1, 1, *([24] * spatial_dims))
