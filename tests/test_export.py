from __future__ import annotations

import numpy as np
import pytest
import torch
from parameterized import parameterized

from custom_nets import SCGANDiscriminator, SCGANGenerator, bake_spectral_norm
from custom_nets.networks.generator import ATTENTION_SITES
from custom_nets.networks.layers import has_spectral_norm

SMALL = dict(
    channels=(8, 16, 32), encoder_attention_levels=(2,), decoder_attention_levels=(1,), output_attention_stride=4
)


def _trained_generator(**kwargs) -> SCGANGenerator:
    torch.manual_seed(0)
    net = SCGANGenerator(**{**SMALL, **kwargs}).train()
    net(torch.randn(1, 2, 16, 16, 16))  # one power iteration, so u and v differ from their initial values
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "sigma"):
                module.sigma.fill_(0.5)  # open the attention gates so the attention paths are exercised
    return net.eval()


@parameterized.expand([["resize"], ["deconv"]])
def test_baked_spectral_norm_matches_eval(up_mode):
    net = _trained_generator(up_mode=up_mode)
    baked = bake_spectral_norm(net)
    x = torch.randn(1, 2, 16, 16, 16)
    assert has_spectral_norm(net) and not has_spectral_norm(baked)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), net(x), rtol=1e-5, atol=1e-6)
    assert has_spectral_norm(net) and net.train()(x).shape == x[:, :1].shape  # the original still works


def test_trace_matches_eager_at_other_sizes():
    net = bake_spectral_norm(_trained_generator())
    traced = torch.jit.trace(net, torch.randn(1, 2, 16, 16, 16))
    for shape in [(1, 2, 16, 16, 16), (2, 2, 32, 16, 24)]:
        x = torch.randn(shape)
        with torch.no_grad():
            # the trace records upsampling + convolution, eager may take ResizeConv3d's phase form: float rounding
            torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-5)


@parameterized.expand([[SCGANGenerator, SMALL, (1, 2, 16, 16, 16)], [SCGANDiscriminator, {}, (1, 3, 16, 16, 16)]])
def test_script_after_baking(cls, kwargs, shape):
    net = bake_spectral_norm(cls(**kwargs))
    scripted = torch.jit.script(net)
    x = torch.randn(shape)
    with torch.no_grad():
        for ours, theirs in zip(torch.atleast_1d(scripted(x)), torch.atleast_1d(net(x))):
            torch.testing.assert_close(ours, theirs)


def test_onnx_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = bake_spectral_norm(_trained_generator())
    path = str(tmp_path / "generator.onnx")
    x = torch.randn(1, 2, 16, 16, 16)
    torch.onnx.export(
        net,
        (x,),
        path,
        input_names=["image"],
        output_names=["pred"],
        dynamo=False,
        opset_version=17,
        dynamic_axes={"image": {0: "batch", 2: "x", 3: "y", 4: "z"}, "pred": {0: "batch", 2: "x", 3: "y", 4: "z"}},
    )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in [(1, 2, 16, 16, 16), (1, 2, 32, 16, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = net(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


@parameterized.expand([["resize", 3, ()], ["deconv", 3, ()], ["resize", 2, ()], ["resize", 3, ATTENTION_SITES]])
def test_folded_generator_loads_parametrised_weights_and_scripts(up_mode, spatial_dims, local_sites):
    """Inference's network_def (``fold_spectral_norm``) gives the parametrised network's eval outputs from its state
    dict or from the deployed weights, and scripts (the Model Zoo exports with ``torch.jit.script``)."""
    from custom_nets import build_generator
    from custom_nets.handlers import DeployedWeights

    settings = {**SMALL, "up_mode": up_mode, "spatial_dims": spatial_dims, "in_channels": 3, "residual_channel": 2}
    settings["local_attention_sites"] = local_sites
    torch.manual_seed(0)
    trained = build_generator(**settings).train()
    x = torch.rand(2, 3, 16, 16, 16)
    for _ in range(2):
        trained(x)  # power iterations move u and v away from their initial values
    trained.eval()
    folded = build_generator(**settings, fold_spectral_norm=True).eval()
    assert has_spectral_norm(trained) and not has_spectral_norm(folded)
    with torch.no_grad():
        expected = trained(x)
        folded.load_state_dict(trained.state_dict())  # a checkpoint saved with the parametrisation
        torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)
        deployed = DeployedWeights(trained).state_dict()
        assert set(deployed) == set(folded.state_dict()) and not any("parametrizations" in k for k in deployed)
        folded.load_state_dict(deployed)  # strict: exactly the folded network's names
        torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(folded)(x), expected)


def test_fold_needs_the_power_iteration_vectors():
    from custom_nets.networks.layers import fold_spectral_norm_state

    net = _trained_generator()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("._v")}
    with pytest.raises(KeyError):
        fold_spectral_norm_state(state, net)
