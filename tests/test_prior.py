"""The per-voxel prior channel: fitted like the cubic-polynomial baseline, identical values in the network's input,
stored beside the weights, refused when it does not match the config; a bundle round trip with it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_TRAIN, error_messages  # noqa: F401 (data_dir is a fixture of conftest)
from monai.bundle import ConfigParser, ConfigWorkflow

from custom_nets.data import load_items
from custom_nets.evaluation.baselines import predict_split
from custom_nets.prior import AppendPriord, fit_prior, load_or_fit_prior, load_prior

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"


def _chain(input_keys=("t1w", "flair"), normalization="percentile"):
    from custom_nets.transforms import preprocessing_transforms

    return preprocessing_transforms(list(input_keys), None, 1.0, (0.0, 3.0), normalization)


def test_prior_channel_equals_the_cubic_polynomial_baseline(data_dir, tmp_path):
    datalist = data_dir / "datalist.json"
    items = load_items(datalist, "training", ["t1w", "flair"], "pet")
    prior = fit_prior(items, _chain(), ["t1w", "flair"], "percentile")
    folder = predict_split(datalist, "pet", tmp_path / "baselines", ("t1w", "flair"), "test")["cubic_polynomial"]
    entry = json.loads(datalist.read_text())["test"][0]
    baseline = np.asanyarray(nib.load(str(folder / f"{entry['subject']}_pet.nii.gz")).dataobj)
    # the network's input chain: the same normalised intensities, then the prior as the last channel
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "tasks" / "pet.json")])
    parser.update({"dataset_dir": str(data_dir), "per_voxel_prior": True, "prior": prior})
    item = parser.get_parsed_content("dataset")[0]
    assert item["image"].shape[0] == 3
    channel = np.asarray(item["image"][2]) * 3.0  # pet.json: target range 0-3 SUVR
    np.testing.assert_allclose(channel, np.clip(baseline, 0, 3), atol=1e-3)


def test_prior_is_written_once_and_checked(data_dir, tmp_path):
    path = tmp_path / "prior_pet.json"
    items = load_items(data_dir / "datalist.json", "training", ["t1w", "flair"], "pet")
    first = load_or_fit_prior(path, items, _chain(), ["t1w", "flair"], "percentile", "pet", (0.0, 3.0))
    written = path.stat().st_mtime_ns
    again = load_or_fit_prior(path, items, _chain(), ["t1w", "flair"], "percentile", "pet", (0.0, 3.0))
    assert again == first and path.stat().st_mtime_ns == written  # reused (a resumed run), not refitted
    with pytest.raises(ValueError, match="target_key"):
        load_prior(path, ["t1w", "flair"], "percentile", "fa")
    with pytest.raises(ValueError, match="input_keys"):
        load_prior(path, ["t1w"])
    with pytest.raises(ValueError, match="normalization"):
        load_prior(path, ["t1w", "flair"], "tissue_mode")
    with pytest.raises(FileNotFoundError, match="per_voxel_prior"):
        load_prior(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="label"):
        fit_prior([{"image": items[0]["image"]}], _chain(), ["t1w", "flair"], "percentile")


def _rewrite_first_target(items, tmp_path):
    """The same items, the first target rewritten with other values at the same path (a regenerated dataset)."""
    label = Path(items[0]["label"])
    image = nib.load(str(label))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj) * 0.5 + 0.1, image.affine), str(label))
    return items


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda items, tmp_path: items[:-1], "training_data_fingerprint"),  # other subjects
        (_rewrite_first_target, "training_data_fingerprint"),  # same paths, new data
        (lambda items, tmp_path: items, "target_key"),  # another target: reached through ``target``
        (lambda items, tmp_path: items, "target_range"),
    ],
)
def test_a_prior_fitted_for_other_data_or_target_is_refitted(change, reason, data_dir, tmp_path, caplog):
    """A prior left beside the weights by another dataset, target or range (the demo's ``models/prior_pet.json`` when
    the user trains on their own data) is refitted, with the reason logged, never reused."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    path = tmp_path / "prior_pet.json"
    items = load_items(data / "datalist.json", "training", ["t1w", "flair"], "pet")
    first = load_or_fit_prior(path, items, _chain(), ["t1w", "flair"], "percentile", "pet", (0.0, 3.0))
    target, target_range = "pet", (0.0, 3.0)
    if reason == "target_key":
        target = "pet_suvr"
    if reason == "target_range":
        target_range = (0.0, 4.0)
    with caplog.at_level("WARNING", logger="custom_nets.prior"):
        refitted = load_or_fit_prior(
            path, change(items, tmp_path), _chain(), ["t1w", "flair"], "percentile", target, target_range
        )
    assert reason in caplog.text and "refitting" in caplog.text
    assert refitted[reason] != first[reason] and json.loads(path.read_text()) == refitted
    if reason == "training_data_fingerprint":
        assert refitted["coefficients"] != first["coefficients"]


@pytest.mark.parametrize("setting, first, second", [("degrade_factor", 1, 2), ("pixdim", None, [3.0, 3.0, 3.0])])
def test_training_refits_the_prior_when_the_preprocessing_changes(setting, first, second, data_dir, tmp_path, caplog):
    """``--degrade_factor`` or ``--pixdim`` change what the polynomial sees: train.json's prior must not be the one
    fitted with the old value. Inference with another ``pixdim`` than training's is refused, naming the id; another
    ``degrade_factor`` is how sr is applied to maps already at low resolution (``--degrade_factor 1``)."""

    def prior(value):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "tasks" / "pet.json")])
        parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(data_dir), setting: value})
        return parser.get_parsed_content("prior")

    fitted = prior(first)
    with caplog.at_level("WARNING", logger="custom_nets.prior"):
        refitted = prior(second)
    assert "preprocessing" in caplog.text and "refitting" in caplog.text
    assert refitted["preprocessing"][setting] == second and refitted["coefficients"] != fitted["coefficients"]
    path = tmp_path / "models" / "prior_pet.json"
    assert load_prior(path, preprocessing={setting: second}) == refitted
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "tasks" / "pet.json")])
    parser.update({"bundle_root": str(tmp_path), setting: first})
    if setting == "degrade_factor":
        assert parser.get_parsed_content("prior") == refitted
        return
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("prior")
    assert f"trained with {setting} {second!r}, but the config has {first!r}; give --{setting}" in error_messages(
        raised.value
    )


def test_no_prior_leaves_the_image_alone():
    data = {"image": torch.rand(2, 4, 4, 4), "mask": torch.ones(1, 4, 4, 4)}
    assert AppendPriord("image", "mask", None)(data)["image"] is data["image"]


@pytest.mark.parametrize("residual_on_prior", [False, True])
def test_bundle_round_trip_with_the_prior(residual_on_prior, data_dir, tmp_path):
    common = {
        "bundle_root": str(tmp_path),
        "dataset_dir": str(data_dir),
        "per_voxel_prior": True,
        "residual_on_prior": residual_on_prior,
    }
    train = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "tasks" / "md.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        **{**TINY_TRAIN, **common},
    )
    train.initialize()
    train.run()
    train.finalize()
    assert (tmp_path / "models" / "prior_md.json").is_file() and (tmp_path / "models" / "model_md.pt").is_file()
    network = train.parser.get_parsed_content("network")
    # the residual head: zero-initialised, no spectral norm (model.pt holds folded weights, so ask the trained network)
    assert ("head.0.weight" in network.state_dict()) == residual_on_prior
    assert (network.residual_channel is not None) == residual_on_prior
    weights = torch.load(tmp_path / "models" / "model_md.pt", weights_only=True)
    assert not any("parametrizations" in key for key in weights)  # deployed weights: spectral norm folded
    infer = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "tasks" / "md.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="infer",
        output_dir=str(tmp_path / "pred"),
        **{**TINY, **common},
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    assert len(list((tmp_path / "pred").glob("*_md.nii.gz"))) == 1
