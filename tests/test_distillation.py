"""Knowledge distillation (custom_nets.distillation) and the student preset: losses, hooks, the bundle overlay."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY, TINY_TRAIN, error_messages, run_training
from parameterized import parameterized

from custom_nets import GENERATOR_PRESETS, SCGANGenerator, bake_spectral_norm, build_generator
from custom_nets.distillation import GeneratorDistillation, attention_map, load_teacher
from custom_nets.handlers import training_losses

SMALL = dict(encoder_attention_levels=(2,), decoder_attention_levels=(1,), output_attention_stride=4)
TEACHER = dict(channels=(8, 16, 16), **SMALL)
STUDENT = dict(channels=(4, 8, 8), **SMALL, output_attention=False)


def _pair(spatial_dims: int = 3) -> tuple[SCGANGenerator, SCGANGenerator]:
    torch.manual_seed(0)
    teacher = SCGANGenerator(spatial_dims=spatial_dims, fold_spectral_norm=True, **TEACHER).eval()
    student = SCGANGenerator(spatial_dims=spatial_dims, spectral_norm=False, **STUDENT)
    return teacher, student


@parameterized.expand([[(2, 5, 8, 8)], [(2, 5, 8, 8, 4)]])
def test_attention_map_is_unit_norm_per_sample(shape):
    maps = attention_map(torch.randn(shape))
    assert maps.shape == (shape[0], int(np.prod(shape[2:])))
    torch.testing.assert_close(maps.norm(dim=1), torch.ones(shape[0]))


def test_attention_map_ignores_the_channel_count():
    """A wide map and its channel-repeated copy give the same map: a narrow student can match a wide teacher."""
    features = torch.randn(1, 3, 4, 4, 4)
    torch.testing.assert_close(attention_map(features), attention_map(features.repeat(1, 4, 1, 1, 1)))


def test_depth_mismatch_is_refused():
    teacher, _ = _pair()
    shallow = SCGANGenerator(channels=(4, 8), encoder_attention_levels=(1,), decoder_attention_levels=(1,))
    with pytest.raises(ValueError, match="same depth"):
        GeneratorDistillation(teacher, shallow)


@parameterized.expand([[2], [3]])
def test_a_copy_of_the_teacher_has_zero_distillation_loss(spatial_dims):
    teacher, _ = _pair(spatial_dims)
    student = copy.deepcopy(teacher)
    distillation = GeneratorDistillation(teacher, student)
    x = torch.randn(2, 2, *([16] * spatial_dims))
    output_l1, feature = distillation(x, student(x))
    assert float(output_l1) == pytest.approx(0.0, abs=1e-6) and float(feature) == pytest.approx(0.0, abs=1e-6)


def test_student_learns_the_teacher():
    """A few Adam steps on the distillation terms alone bring the student's output and features closer."""
    teacher, student = _pair()
    with torch.no_grad():  # a teacher whose output is not constant
        for module in teacher.modules():
            if isinstance(module, torch.nn.Conv3d) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    distillation = GeneratorDistillation(teacher, student)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    x = torch.randn(2, 2, 16, 16, 16)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        output_l1, feature = distillation(x, student(x))
        loss = output_l1 + feature
        first = float(loss) if first is None else first
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.5 * first
    assert all(p.grad is None for p in teacher.parameters())


def test_weight_average_copy_records_nothing():
    """The EMA copy of the student (a deep copy with the hooks) must not feed the distillation."""
    teacher, student = _pair()
    distillation = GeneratorDistillation(teacher, student)
    average = copy.deepcopy(student)
    x = torch.randn(1, 2, 16, 16, 16)
    average(x)
    with pytest.raises(RuntimeError, match="run the student"):
        distillation(x, average(x))
    distillation(x, student(x))  # the student itself does


def test_student_preset_is_smaller_and_exports(tmp_path):
    assert GENERATOR_PRESETS["student"]["channels"] == tuple(c // 4 for c in GENERATOR_PRESETS["cpu"]["channels"])
    student = build_generator("student", in_channels=3, residual_channel=2)
    teacher = build_generator("cpu", in_channels=3, residual_channel=2)
    count = lambda network: sum(p.numel() for p in network.parameters())  # noqa: E731
    assert count(student) * 10 < count(teacher)
    GeneratorDistillation(bake_spectral_norm(teacher).eval(), student)  # same depth: accepted
    baked = bake_spectral_norm(student).eval()
    x = torch.rand(1, 3, 32, 32, 32)
    traced = torch.jit.trace(baked, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), baked(x))
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "student.onnx")
    torch.onnx.export(baked, (x,), path, input_names=["image"], output_names=["pred"], dynamo=False, opset_version=17)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = baked(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


# the bundle's TINY generator as the teacher; the student a quarter as wide with the student preset's overlay
TEACHER_IDS = {
    f"teacher_def#{key.split('#')[1]}": value for key, value in TINY.items() if key.startswith("network_def")
}
STUDENT_IDS = {"network_def#channels": [4, 8, 8]}


def _train_teacher(data_dir, root):
    weights = root / "teacher.pt"
    run_training(data_dir, root / "teacher", "pet", final_weights_file=str(weights))
    return weights


def _student_workflow(config: str, workflow_type: str, root, data_dir, **overrides):
    """``config`` + ``tasks/pet.json`` + ``models/student.json`` as a MONAI ``ConfigWorkflow`` in ``root``."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in (config, "tasks/pet.json", "models/student.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        dataset_dir=str(data_dir),
        **overrides,
    )


def test_bundle_distillation_run(data_dir, tmp_path):
    """train.json + models/student.json + teacher_weights: the student trains with both distillation terms, saves
    weights that inference.json + models/student.json loads."""
    teacher = _train_teacher(data_dir, tmp_path)
    workflow = _student_workflow(
        "train.json",
        "train",
        tmp_path / "student",
        data_dir,
        teacher_weights=str(teacher),
        final_weights_file=str(tmp_path / "student.pt"),
        **{**TINY_TRAIN, **TEACHER_IDS, **STUDENT_IDS},
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses = training_losses(trainer.state.output)
    workflow.finalize()
    assert {"distill_output", "distill_feature"} <= set(losses)
    assert all(np.isfinite(losses[k]) for k in ("g_loss", "distill_output", "distill_feature"))
    assert trainer.distillation is not None and not any(p.requires_grad for p in trainer.distillation.parameters())
    inference = _student_workflow("inference.json", "infer", tmp_path / "student", data_dir, **{**TINY, **STUDENT_IDS})
    network = inference.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "student.pt", weights_only=True))
    assert not network.head[-1].__class__.__name__.startswith("SelfAttention")  # the student has no output attention


def test_missing_teacher_weights_is_named_before_anything_is_written(data_dir, tmp_path):
    with pytest.raises(Exception) as raised:
        run_training(data_dir, tmp_path / "run", "pet", teacher_weights=str(tmp_path / "nowhere.pt"))
    assert "teacher_weights" in error_messages(raised.value) and "nowhere.pt': no such file" in error_messages(
        raised.value
    )
    assert not (tmp_path / "run").exists()


def test_teacher_weights_that_do_not_fit_are_named(data_dir, tmp_path):
    teacher = _train_teacher(data_dir, tmp_path)
    with pytest.raises(Exception) as raised:
        # the teacher built with the preset's channels instead of those it was trained with
        run_training(data_dir, tmp_path / "run", "pet", teacher_weights=str(teacher), **STUDENT_IDS)
    assert f"teacher_weights {teacher} do not fit" in error_messages(raised.value)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="do not fit"):
        load_teacher(build_generator("student", in_channels=3, residual_channel=2, fold_spectral_norm=True), teacher)
