"""Single-task releases (``python -m custom_nets.release``): built from a short training run, each passes the Model
Zoo's offline checks in a fresh interpreter that sees only the released folder, and serves MONAI Label's inference
call from ``configs/inference.json`` alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY, run_training
from monai.bundle import ConfigParser
from monai.transforms import SaveImaged

from custom_nets.release import ZOO_CHECKS, main, release_bundle, verify_release

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
NETWORK = {key: value for key, value in TINY.items() if key.startswith("network_def#")}  # weights' shapes


def _train(task: str, data_dir: Path, root: Path) -> Path:
    run_training(data_dir, root, task)
    return root / "models" / f"model_{task}.pt"


@pytest.mark.parametrize("task", ["pet", "fa", "md"])
def test_released_bundle_passes_the_zoo_checks_and_serves_monai_label(task, data_dir, tmp_path):
    weights = _train(task, data_dir, tmp_path / "train")
    root = release_bundle(BUNDLE, task, tmp_path / "dist", weights, overrides=TINY, version="0.4.0")
    assert root.name == f"scgan_{task}"
    models = sorted(p.name for p in (root / "models").iterdir())
    assert models == ["model.pt", "model.ts", f"prior_{task}.json"]  # no resume checkpoint
    assert (root / "custom_nets" / "networks" / "generator.py").is_file() and not list(root.rglob("__pycache__"))
    meta = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert task in meta["name"] and meta["network_data_format"]["outputs"]["pred"]["modality"] == (
        "PT" if task == "pet" else "MR"
    )
    image = meta["network_data_format"]["inputs"]["image"]
    assert meta["image_classes"].startswith(f"{image['num_channels']} channels: T1w, FLAIR,")
    shipped_prior = (root / "models" / f"prior_{task}.json").read_bytes()
    check_data = tmp_path / "check_data"  # other files than training's: the checks' training workflow would refit
    shutil.copytree(data_dir, check_data)
    assert verify_release(root, check_data) == {check: "passed" for check in ZOO_CHECKS}
    assert (root / "models" / f"prior_{task}.json").read_bytes() == shipped_prior  # the checks leave it alone
    assert not (root / "runs").exists()  # and ship no TensorBoard files of their own
    if task == "pet":  # without a dataset the workflow checks say so, the others still run
        offline = verify_release(root)
        assert [offline[c] for c in ZOO_CHECKS[:5]] == ["passed"] * 5
        assert all(offline[c].startswith("skipped") for c in ZOO_CHECKS[5:])

    # MONAI Label's BundleInferTask: inference.json alone (the task's defaults), models/model.pt, an image-only request
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), "device": torch.device("cpu")})
    assert parser["task"] == task and parser["ckpt_name"] == "model.pt"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    network.eval()
    entry = json.loads((data_dir / "datalist.json").read_text(encoding="utf-8"))["test"][0]
    data = parser.get_parsed_content("preprocessing")({"image": [str(data_dir / entry[k]) for k in ("t1w", "flair")]})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    postprocessing = parser.get_parsed_content("postprocessing")
    postprocessing.transforms = tuple(t for t in postprocessing.transforms if not isinstance(t, SaveImaged))
    pred = postprocessing(data)["pred"]
    reference = nib.load(str(data_dir / entry["t1w"]))
    assert tuple(pred.shape) == (1, *reference.shape) and torch.isfinite(pred).all()
    assert float(pred.min()) >= parser["target_min"] and float(pred.max()) <= parser["target_max"]
    np.testing.assert_allclose(np.asarray(pred.affine), reference.affine, atol=1e-4)


def test_release_errors_name_the_problem(data_dir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--task 'ct'.*known tasks"):
        release_bundle(BUNDLE, "ct", tmp_path)
    with pytest.raises(FileNotFoundError, match="--weights .*missing.pt: not found"):
        release_bundle(BUNDLE, "pet", tmp_path, tmp_path / "missing.pt")
    weights = _train("pet", data_dir, tmp_path / "train")
    with pytest.raises(ValueError, match="does not fit the task's network_def"):
        release_bundle(BUNDLE, "pet", tmp_path / "dist", weights)  # trained with a smaller network than the default
    with pytest.raises(ValueError, match="--url-base"):
        release_bundle(BUNDLE, "pet", tmp_path / "dist", weights, overrides=NETWORK, url_base="ftp://example.org")
    assert not (tmp_path / "dist" / "scgan_pet").exists() and not list((tmp_path / "dist").glob(".scgan_*"))
    with pytest.raises(SystemExit) as stop:
        main(["--bundle", str(BUNDLE), "--task", "pet", "--out", str(tmp_path), "--override", "channels"])
    assert stop.value.code == 2 and "--override 'channels': expected ID=JSON" in capsys.readouterr().err
