"""The per-voxel prior channel: fitted like the cubic-polynomial baseline, identical values in the network's input,
stored beside the weights, refused when it does not match the config; a bundle round trip with it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_TRAIN  # noqa: F401 (data_dir is a fixture of conftest)
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
    first = load_or_fit_prior(path, items, _chain(), ["t1w", "flair"], "percentile")
    assert path.is_file() and load_or_fit_prior(path, [], _chain(), ["t1w", "flair"], "percentile") == first
    with pytest.raises(ValueError, match="input_keys"):
        load_prior(path, ["t1w"])
    with pytest.raises(ValueError, match="normalization"):
        load_prior(path, ["t1w", "flair"], "tissue_mode")
    with pytest.raises(FileNotFoundError, match="per_voxel_prior"):
        load_prior(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="label"):
        fit_prior([{"image": items[0]["image"]}], _chain(), ["t1w", "flair"], "percentile")


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
