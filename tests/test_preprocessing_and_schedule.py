"""One preprocessing chain for training and inference, the shared input normalisation, the cosine schedule over the
iterations actually run, a fixed epoch length, and the non-finite guard of the GAN step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, error_chain  # noqa: F401 (data_dir is a fixture of conftest)
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

from custom_nets.data import load_items
from custom_nets.evaluation.baselines import scaled_inputs
from custom_nets.handlers import CosineSchedule
from custom_nets.prior import fit_prior
from custom_nets.transforms import normalize_intensity, preprocessing_transforms

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"


def _parsed(config: str, data_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / config), str(CONFIGS / "tasks" / "pet.json")])
    parser.update({"bundle_root": str(data_dir / "_bundle"), "dataset_dir": str(data_dir), **overrides})
    return parser


def _whole_head_datalist(data_dir: Path, out: Path) -> Path:
    """The test subject with a bright 'scalp' shell added around the brain, the brain mask given in the datalist."""
    content = json.loads((data_dir / "datalist.json").read_text())
    entry = dict(content["test"][0])
    mask_image = nib.load(str(data_dir / entry["mask"]))
    mask = np.asanyarray(mask_image.dataobj) > 0
    shell = np.zeros_like(mask)
    shell[1:-1, 1:-1, 1:-1] = True
    shell &= ~mask
    for key in ("t1w", "flair"):
        image = nib.load(str(data_dir / entry[key]))
        values = np.asanyarray(image.dataobj).astype(np.float32)
        values[shell] = 4 * values.max()  # skull and scalp far brighter than the brain
        nib.save(nib.Nifti1Image(values, image.affine), str(out / f"head_{key}.nii.gz"))
        entry[key] = str(out / f"head_{key}.nii.gz")
    entry["mask"] = str(data_dir / entry["mask"])
    entry["pet"] = str(data_dir / entry["pet"])
    path = out / "datalist.json"
    path.write_text(json.dumps({"training": [entry], "validation": [entry], "test": [entry]}))
    return path


@pytest.mark.parametrize("normalization", ["percentile", "tissue_mode"])
def test_training_validation_and_inference_normalise_identically(data_dir, tmp_path, normalization):
    datalist = _whole_head_datalist(data_dir, tmp_path)
    items = load_items(data_dir / "datalist.json", "training", ["t1w", "flair"], "pet")
    chain = preprocessing_transforms(["t1w", "flair"], None, 1.0, (0.0, 3.0), normalization)
    prior = fit_prior(items, chain, ["t1w", "flair"], normalization)  # the third channel must agree too
    common = {"datalist": str(datalist), "intensity_normalization": normalization, "prior": prior}
    train = _parsed("train.json", data_dir, **common)
    infer = _parsed("inference.json", data_dir, **common)
    validation_item = train.get_parsed_content("validate#dataset")[0]
    inference_item = infer.get_parsed_content("dataset")[0]
    assert torch.equal(torch.as_tensor(validation_item["mask"]), torch.as_tensor(inference_item["mask"]))
    assert torch.equal(torch.as_tensor(validation_item["image"]), torch.as_tensor(inference_item["image"]))
    # the datalist's brain mask is used, not a threshold of the whole head: nothing outside the brain is kept
    truth = np.asanyarray(nib.load(json.loads(datalist.read_text())["test"][0]["mask"]).dataobj) > 0
    assert torch.as_tensor(inference_item["mask"])[0].numpy().astype(bool).sum() == truth.sum()
    # and the baselines see the same normalised values as the networks
    entry = json.loads(datalist.read_text())["test"][0]
    raw = [np.asanyarray(nib.load(entry[k]).dataobj) for k in ("t1w", "flair")]
    baseline_inputs = scaled_inputs(raw, truth, normalization, ["t1w", "flair"])
    network_inputs = np.asarray(torch.as_tensor(inference_item["image"]))[:2, truth]  # channel 2: the prior
    np.testing.assert_allclose(baseline_inputs, network_inputs, atol=1e-6)


def test_inference_without_a_mask_derives_one(data_dir, tmp_path):
    """MONAI Label requests carry the image only: the mask is derived from the (skull-stripped) inputs."""
    entry = json.loads((data_dir / "datalist.json").read_text())["test"][0]
    for key in ("t1w", "flair"):
        image = nib.load(str(data_dir / entry[key]))
        values = np.asanyarray(image.dataobj).astype(np.float32)
        values[:8] = 0  # background, as around a skull-stripped brain
        nib.save(nib.Nifti1Image(values, image.affine), str(tmp_path / f"{key}.nii.gz"))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{k: str(tmp_path / f"{k}.nii.gz") for k in ("t1w", "flair")}]}))
    parser = _parsed("inference.json", data_dir, datalist=str(datalist), per_voxel_prior=False)
    mask = torch.as_tensor(parser.get_parsed_content("dataset")[0]["mask"])
    assert mask[0, :8].sum() == 0 and mask[0, 8:].mean() > 0.9


def test_tissue_mode_normalisation_ignores_the_lesion_share():
    """The white-matter peak does not move when a tenth of the brain turns hyperintense; the 99.5th percentile does."""
    rng = np.random.default_rng(0)
    brain = np.ones((32, 32, 32), dtype=bool)
    flair = np.where(rng.random(brain.shape) < 0.6, 100.0, 130.0) + rng.normal(0, 3, brain.shape)
    lesioned = flair.copy()
    lesioned[:3] = 260 + rng.normal(0, 3, lesioned[:3].shape)
    core = (slice(10, 30),) * 3
    for method, moves in (("tissue_mode", False), ("percentile", True)):
        before = normalize_intensity(flair, brain, method, "flair")[core].mean()
        after = normalize_intensity(lesioned, brain, method, "flair")[core].mean()
        assert (abs(after - before) / before > 0.1) == moves, (method, before, after)


@pytest.mark.parametrize("bad", ["median", ""])
def test_unknown_normalisation_is_refused(bad):
    with pytest.raises(ValueError, match="percentile"):
        normalize_intensity(np.ones(8), np.ones(8, dtype=bool), bad)


@pytest.mark.parametrize(
    "iteration, fraction, expected",
    [(0, 0.0, 1.0), (5, 0.0, 0.5), (10, 0.0, 0.0), (2, 0.5, 0.5), (9, 0.2, math.cos(math.pi * 0.9) * 0.5 + 0.5)],
)
def test_cosine_factor_follows_the_larger_progress(iteration, fraction, expected):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert CosineSchedule([optimizer], total_iterations=10).factor(iteration, fraction) == pytest.approx(expected)


def _learning_rates(data_dir, root, **overrides):
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "tasks" / "pet.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=str(data_dir),
        **{**TINY_TRAIN, **overrides},
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    rates = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rates.append(e.g_optimizer.param_groups[0]["lr"]))
    workflow.run()
    workflow.finalize()
    return trainer, rates


def test_epoch_length_and_schedule_length_equal_the_iterations_run(data_dir, tmp_path):
    # 3 training subjects, 1 patch per batch: an epoch of 5 iterations cycles the loader; validation every 2 epochs
    trainer, rates = _learning_rates(data_dir, tmp_path, epochs=2, epoch_length=5, val_interval=2, lr_g=0.01)
    assert trainer.state.iteration == 10 and trainer.state.epoch == 2
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_time_budget_ends_the_epoch_validates_and_stops(data_dir, tmp_path):
    trainer, rates = _learning_rates(data_dir, tmp_path, epochs=3, epoch_length=5, time_budget_minutes=1e-5)
    assert trainer.state.iteration == 1 and trainer.state.epoch == 1
    assert (tmp_path / "models" / "model_pet.pt").is_file()  # the epoch-end validation saved the final weights
    assert (tmp_path / "models" / "resume_pet.pt").is_file()


def test_non_finite_loss_stops_training_before_any_step(data_dir, tmp_path):
    # a loss weight beyond float32 makes the loss infinite from the first iteration on (a NaN weight is refused by
    # the config check, NaN data on load)
    with pytest.raises(RuntimeError) as raised:
        _learning_rates(data_dir, tmp_path / "run", lambda_rmse=1e300)
    assert any(isinstance(e, FloatingPointError) and "non-finite loss" in str(e) for e in error_chain(raised.value))
    assert not list((tmp_path / "run" / "models").glob("model*.pt"))


def test_non_finite_data_is_refused_on_load_naming_the_file(data_dir, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    content = json.loads((data_dir / "datalist.json").read_text())
    for entry in content["training"] + content["validation"]:
        for key in ("t1w", "flair", "mask", "pet"):
            entry[key] = str(data_dir / entry[key])
    image = nib.load(content["training"][0]["flair"])
    values = np.asanyarray(image.dataobj).astype(np.float32)
    values[:4, :4, :4] = np.nan  # background only, as a scanner export may have
    nib.save(nib.Nifti1Image(values, image.affine), str(bad / "nan_flair.nii.gz"))
    content["training"][0]["flair"] = str(bad / "nan_flair.nii.gz")
    (bad / "datalist.json").write_text(json.dumps(content))
    with pytest.raises(Exception) as raised:
        _learning_rates(data_dir, tmp_path / "run", datalist=str(bad / "datalist.json"))
    messages = "\n".join(str(e) for e in error_chain(raised.value))
    assert "nan_flair.nii.gz holds 64 non-finite values" in messages and "key 'flair'" in messages
    assert not list((tmp_path / "run" / "models").glob("*.pt"))
