"""Seamless sliding-window inference: Hann blending, no seams where windows join, and the window geometry."""

from __future__ import annotations

import pytest
import torch

from custom_nets import build_generator
from custom_nets.inferers import BLEND_MODES, SeamlessSlidingWindowInferer, hann_weight_map, size_divisor
from custom_nets.metrics import seam_ratios, window_starts


def _brain(size: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth input channels (sums of low-frequency sinusoids: no kinks for the seam measure to mistake for
    seams) inside a sphere (a stand-in brain), and its mask."""
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, size)] * 3, indexing="ij")
    first = torch.sin(2.1 * z + 0.3) + 0.5 * torch.cos(1.7 * y - 1.3 * x)
    second = torch.cos(1.3 * x + 2.3 * z) + 0.4 * torch.sin(2.9 * y)
    mask = (x**2 + y**2 + z**2 < 0.9).float()
    return (torch.stack([first, second]) * mask)[None], mask[None, None]


def _window_statistics_network(x: torch.Tensor) -> torch.Tensor:
    """The root cause in miniature: an output offset by a statistic of the window it is given (as an instance norm's
    mean), of the size a trained generator shows."""
    signal = x[:, :1] + 0.5 * x[:, 1:]
    return signal - 0.5 * signal.mean(dim=(2, 3, 4), keepdim=True)


@pytest.mark.parametrize("overlap", [0.5])
def test_hann_blending_leaves_no_seam_where_gaussian_blending_does(overlap):
    """At every window border the first difference stays within 1.2× of what the image has there without windows."""
    inputs, mask = _brain()
    roi = (32,) * 3
    with torch.no_grad():
        reference = _window_statistics_network(inputs)[0, 0]  # one window: no border at all
        gaussian = SeamlessSlidingWindowInferer(roi, 4, 0.25, mode="gaussian")(inputs, _window_statistics_network)
        hann = SeamlessSlidingWindowInferer(roi, 4, overlap)(inputs, _window_statistics_network)

    def excess(prediction: torch.Tensor, overlap: float) -> dict:
        ratios = seam_ratios(prediction[0, 0], mask[0, 0], roi, overlap)
        control = seam_ratios(reference, mask[0, 0], roi, overlap)
        return {plane: ratio / control[plane] for plane, ratio in ratios.items()}

    assert max(excess(gaussian, 0.25).values()) > 1.5  # MONAI's Gaussian blend at overlap 0.25: the old seams
    hann_excess = excess(hann, overlap)
    assert hann_excess and max(hann_excess.values()) <= 1.2, hann_excess


def test_hann_weights_are_a_partition_of_unity_at_half_overlap():
    weights = hann_weight_map((16,))
    assert weights.shape == (16,) and weights.min() > 0
    torch.testing.assert_close(weights[8:] + weights[:8], torch.ones(8))
    assert hann_weight_map((4, 6, 8)).shape == (4, 6, 8)


def test_an_unknown_blend_mode_is_named():
    with pytest.raises(ValueError, match=r"mode 'gausian': expected one of \['hann', 'gaussian', 'constant'\]"):
        SeamlessSlidingWindowInferer((16, 16, 16), 2, 0.5, mode="gausian")


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_a_constant_prediction_stays_constant(mode):
    output = SeamlessSlidingWindowInferer((16, 16, 16), 2, 0.5, mode=mode)(
        torch.rand(1, 2, 40, 24, 33), lambda x: torch.full_like(x[:, :1], 3.0)
    )
    assert output.shape == (1, 1, 40, 24, 33)
    torch.testing.assert_close(output, torch.full_like(output, 3.0))


@pytest.mark.parametrize(
    "network, expected",
    [
        (build_generator(channels=[8, 16], encoder_attention_levels=[2], decoder_attention_levels=[1]), 4),
        (build_generator(spatial_dims=2, channels=[8, 16, 16]), 8),
        (torch.nn.Conv3d(1, 1, 1), 1),
    ],
)
def test_size_divisor_looks_through_wrappers(network, expected):
    assert size_divisor(network) == expected


@pytest.mark.parametrize("size, roi, overlap", [(91, 64, 0.25), (109, 64, 0.5), (64, 64, 0.25), (100, 64, 0.75)])
def test_window_starts_match_monai(size, roi, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    expected = sorted({int(s[0].start) for s in dense_patch_slices((size,), (roi,), interval)})
    assert window_starts(size, roi, overlap) == expected
