"""Deployment: the Model Zoo's offline checks, MONAI Label's inference and training calls (emulated without
installing MONAI Label), TorchScript/ONNX export through the bundle CLI, and the image formats users have."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import SaveImaged
from packaging.requirements import Requirement

from custom_nets.transforms import preprocessing_transforms

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
TASKS = sorted(p.stem for p in (CONFIGS / "tasks").glob("*.json"))
MANDATORY = [
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
]
TENSOR_FIELDS = [
    "type",
    "format",
    "modality",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
]
ZOO_README_SECTIONS = [
    "Overview",
    "Data",
    "Training configuration",
    "Input and output",
    "Performance",
    "Commands",
    "References",
    "Intended use and disclaimer",
]


def _metadata() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text(encoding="utf-8"))


def _requirements() -> dict[str, Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in setup["options"]["install_requires"].splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def test_zoo_required_files_and_readme_outline():
    for relative in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md"):
        assert (BUNDLE / relative).is_file(), relative
    assert (BUNDLE / "docs" / "data_license.txt").is_file()
    readme = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    headings = [line[3:].strip() for line in readme.splitlines() if line.startswith("## ")]
    assert headings[: len(ZOO_README_SECTIONS)] == ZOO_README_SECTIONS
    assert all(
        json.loads(p.read_text(encoding="utf-8")) is not None for p in CONFIGS.rglob("*.json")
    )  # every config is valid JSON


def test_metadata_mandatory_keys_versions_and_tensor_specs():
    import monai

    meta = _metadata()
    assert [key for key in MANDATORY if key not in meta] == []
    assert meta["version"] in meta["changelog"]
    assert {"schema", "name"} <= set(meta)
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    requirements = _requirements()
    assert requirements["numpy"].specifier.contains(meta["numpy_version"])
    for package, version in meta["required_packages_version"].items():
        assert package.lower() in requirements, f"{package} is not an install requirement"
        assert requirements[package.lower()].specifier.contains(version), (package, version)
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert [f for f in TENSOR_FIELDS if f not in image] == [] and [f for f in TENSOR_FIELDS if f not in pred] == []
    assert image["num_channels"] == 3 and [image["channel_def"][k] for k in "01"] == ["T1w", "FLAIR"]
    assert meta["image_classes"].startswith(f"{image['num_channels']} channels: T1w and FLAIR")  # one count
    assert pred["num_channels"] == 1 and pred["dtype"] == "float32"


def _workflow(configs: list[str], kind: str, tmp_path, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=kind,
        bundle_root=str(tmp_path),
        **overrides,
    )
    return workflow


WORKFLOWS = [
    (["train.json"], "train"),
    (["inference.json"], "infer"),
    (["train.json", "evaluate.json"], "train"),
    (["train.json", "evaluate.json"], "eval"),  # MONAI's InferProperties, as evaluate.json defines them
]


@pytest.mark.parametrize(
    "configs, kind",
    WORKFLOWS + [(c[:1] + [f"tasks/{t}.json"] + c[1:], k) for t in TASKS for c, k in WORKFLOWS],
)
def test_check_properties_of_every_workflow_and_task(configs, kind, data_dir, tmp_path):
    if kind == "infer":  # inference reads the per-voxel prior that training writes beside the weights
        _write_prior(tmp_path, data_dir, configs)
    workflow = _workflow(configs, kind, tmp_path, dataset_dir=str(data_dir), cache_rate=0.0, **TINY)
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.fixture(scope="module")
def stacked_case(data_dir, tmp_path_factory) -> dict:
    """One test subject as MONAI Label sends it: T1w and FLAIR stacked in one 4D NIfTI, no mask."""
    out = tmp_path_factory.mktemp("stacked")
    entry = json.loads((data_dir / "datalist.json").read_text(encoding="utf-8"))["test"][0]
    t1w, flair = (nib.load(str(data_dir / entry[k])) for k in ("t1w", "flair"))
    stacked = np.stack([np.asanyarray(t1w.dataobj), np.asanyarray(flair.dataobj)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(stacked, t1w.affine), str(out / "image.nii.gz"))
    return {"image": str(out / "image.nii.gz"), "label": str(data_dir / entry["pet"]), "affine": t1w.affine}


def _write_prior(root: Path, data_dir: Path, configs: list[str] = ("inference.json",)) -> Path:
    """``models/prior_<task>.json`` as training writes it, for the task of ``configs``."""
    from custom_nets.data import load_items
    from custom_nets.prior import load_or_fit_prior

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"bundle_root": str(root), "dataset_dir": str(data_dir)})
    keys, target = parser.get_parsed_content("input_keys"), parser.get_parsed_content("target_key")
    transforms = preprocessing_transforms(
        keys, None, parser.get_parsed_content("degrade_factor"), [parser["target_min"], parser["target_max"]]
    )
    items = load_items(data_dir / "datalist.json", "training", keys, target)
    path = root / "models" / f"prior_{parser.get_parsed_content('task')}.json"
    load_or_fit_prior(path, items, transforms, keys, "percentile")
    return path


def _bundle_copy(tmp_path, data_dir: Path | None = None) -> Path:
    """A bundle folder as MONAI Label sees it, with random generator weights at models/model.pt (and the per-voxel
    prior beside them when ``data_dir`` gives training subjects to fit it on)."""
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    (root / "configs").symlink_to(CONFIGS)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(TINY)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    if data_dir is not None:
        _write_prior(root, data_dir)
    return root


@pytest.mark.parametrize("as_list", [False, True])
def test_monai_label_inference_call(as_list, stacked_case, data_dir, tmp_path):
    """What MONAI Label's BundleInferTask does: read inference.json alone, build network_def, load models/model.pt,
    then preprocessing → inferer → postprocessing without SaveImaged, on a request with a single image."""
    root = _bundle_copy(tmp_path, data_dir)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), "device": torch.device("cpu"), **TINY})
    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint))
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    postprocessing.transforms = tuple(
        t for t in postprocessing.transforms if not isinstance(t, SaveImaged)
    )  # as MONAI Label

    if as_list:  # a list of per-modality files is accepted too
        entry = json.loads((data_dir / "datalist.json").read_text(encoding="utf-8"))["test"][0]
        image = [str(data_dir / entry["t1w"]), str(data_dir / entry["flair"])]
    else:
        image = stacked_case["image"]
    data = preprocessing({"image": image})
    assert "mask" in data and data["image"].shape[0] == 3  # T1w, FLAIR, the per-voxel prior
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    result = postprocessing(data)
    pred = result["pred"]
    reference = nib.load(
        str(data_dir / json.loads((data_dir / "datalist.json").read_text(encoding="utf-8"))["test"][0]["t1w"])
    )
    assert tuple(pred.shape) == (1, *reference.shape)
    assert pred.dtype == torch.float32 and torch.isfinite(pred).all()
    np.testing.assert_allclose(np.asarray(pred.affine), reference.affine, atol=1e-4)


def test_monai_label_training_call(stacked_case, tmp_path):
    """What BundleTrainTask does on one GPU: monai.bundle.run('run', init_id=None, final_id=None) on train.json with
    bundle_root, device, max_epochs, image/label pairs (no mask) and the raw train#handlers list."""
    import monai.bundle

    root = _bundle_copy(tmp_path)
    (root / "models" / "model.pt").unlink()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    handlers = parser.get("train#handlers")
    pairs = [{"image": stacked_case["image"], "label": stacked_case["label"]}] * 2
    overrides = {
        "bundle_root": str(root),
        "train#trainer#max_epochs": 1,
        "train#dataset#data": pairs,
        "validate#dataset#data": pairs[:1],
        "device": torch.device("cpu"),
        "train#handlers": handlers,
        **{k: v for k, v in TINY.items()},
        "discriminator_def#channels": [8, 8, 16, 16],
        "progress_bar": False,
        "batch_size": 1,
        "num_samples": 1,
    }
    monai.bundle.run(
        run_id="run",
        init_id=None,
        final_id=None,
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "train.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        **overrides,
    )
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    inference = ConfigParser()
    inference.read_config(str(root / "configs" / "inference.json"))
    inference.update({**TINY, "bundle_root": str(root)})
    inference.get_parsed_content("network_def").load_state_dict(state)  # what MONAI Label's infer task loads next


@pytest.mark.parametrize("use_trace", [False, True])  # scripting is what the Model Zoo's CI runs
def test_ckpt_export_torchscript_and_onnx_match_eager(use_trace, tmp_path):
    root = _bundle_copy(tmp_path)
    overrides = ["--" + k.replace("#", "#") + "=" + json.dumps(v) for k, v in TINY.items()]
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(root / "models" / "model.ts"),
        "--ckpt_file",
        str(root / "models" / "model.pt"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--bundle_root",
        str(root),
        *(["--use_trace", "True", "--input_shape", "[1, 3, 32, 32, 32]"] if use_trace else []),
        *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(TINY)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    x = torch.rand(1, 3, 32, 32, 32)
    with torch.no_grad():
        expected = network(x)
        scripted = torch.jit.load(str(root / "models" / "model.ts"))(x)
    torch.testing.assert_close(scripted, expected, atol=1e-5, rtol=1e-4)

    if not use_trace:
        return
    onnxruntime = pytest.importorskip("onnxruntime")
    from custom_nets import bake_spectral_norm

    baked = bake_spectral_norm(network).eval()
    torch.onnx.export(baked, (x,), str(root / "models" / "model.onnx"), input_names=["image"], output_names=["pred"])
    session = onnxruntime.InferenceSession(str(root / "models" / "model.onnx"))
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-4, rtol=1e-3)


def _write_itk(array: np.ndarray, path: Path, spacing, origin, kind: str) -> str:
    """Write an (X, Y, Z) array with ITK: one NRRD or MHA file, or a DICOM series (int16, one file per slice)."""
    import itk

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind != "dicom":
        image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in origin])
        itk.imwrite(image, str(path))
        return str(path)
    path.mkdir()
    volume = np.round(array * 1000).astype(np.int16)
    for k in range(volume.shape[2]):
        plane = itk.image_from_array(np.ascontiguousarray(volume[:, :, k].T))
        plane.SetSpacing([float(spacing[0]), float(spacing[1])])
        plane.SetOrigin([float(origin[0]), float(origin[1])])
        tags = plane.GetMetaDataDictionary()
        # the slice position and orientation make the series read back as one volume with the right geometry
        tags["0020|0032"] = "\\".join(f"{p:.4f}" for p in (origin[0], origin[1], origin[2] + k * spacing[2]))
        tags["0020|0037"] = "1\\0\\0\\0\\1\\0"
        tags["0018|0050"] = f"{spacing[2]:.4f}"
        tags["0020|0013"] = str(k + 1)
        tags["0020|000e"] = "1.2.826.0.1.3680043.2.1125.1"
        tags["0008|0060"] = "MR"
        dicom_io = itk.GDCMImageIO.New()
        dicom_io.KeepOriginalUIDOn()
        writer = itk.ImageFileWriter[type(plane)].New()
        writer.SetInput(plane)
        writer.SetFileName(str(path / f"IM{k:04d}.dcm"))
        writer.SetImageIO(dicom_io)
        writer.Update()
    return str(path)


@pytest.mark.parametrize("kind", ["nrrd", "mha", "dicom"])
def test_inference_reads_itk_formats_and_writes_nifti_on_the_input_grid(kind, data_dir, tmp_path):
    from monai.transforms import LoadImage

    entry = json.loads((data_dir / "datalist.json").read_text(encoding="utf-8"))["test"][0]
    spacing, origin = (2.0, 2.0, 2.0), (-30.0, -40.0, -20.0)
    files = {}
    for key in ("t1w", "flair"):
        array = np.asanyarray(nib.load(str(data_dir / entry[key])).dataobj).astype(np.float32)
        array = array / max(float(array.max()), 1e-6)
        suffix = "" if kind == "dicom" else f".{kind}"
        files[key] = _write_itk(array, tmp_path / "in" / f"{entry['subject']}_{key}{suffix}", spacing, origin, kind)
    datalist = {"training": [], "validation": [], "test": [{"subject": entry["subject"], **files}]}
    (tmp_path / "in" / "datalist.json").write_text(json.dumps(datalist))
    _write_prior(tmp_path, data_dir)
    workflow = _workflow(
        ["inference.json"],
        "infer",
        tmp_path,
        datalist=str(tmp_path / "in" / "datalist.json"),
        output_dir=str(tmp_path / "out"),
        load_pretrain=False,
        **TINY,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    (written,) = list((tmp_path / "out").glob("*.nii.gz"))
    reference = LoadImage(reader="ITKReader", image_only=True)(files["t1w"])
    output = nib.load(str(written))
    assert output.shape[:3] == tuple(reference.shape)
    np.testing.assert_allclose(output.affine, np.asarray(reference.affine), atol=1e-3)
    assert output.get_data_dtype() == np.float32


def test_release_writes_large_files_with_hashes(tmp_path):
    import hashlib

    from custom_nets.release import write_large_files

    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        write_large_files(tmp_path, "https://example.org/v1")
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match="--url-base"):
        write_large_files(tmp_path, "ftp://example.org")
    lines = write_large_files(tmp_path, "https://example.org/v1/").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "large_files:"
    entry = json.loads(lines[1].removeprefix("  - "))
    assert entry == {
        "path": "models/model.pt",
        "url": "https://example.org/v1/model.pt",
        "hash_val": hashlib.sha256(b"weights").hexdigest(),
        "hash_type": "sha256",
    }


def test_tracking_mlflow_with_a_local_store(data_dir, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # MLflow's local SQLite store (the `tracking` extra installs it)
    store = "sqlite:///" + str(tmp_path / "eval" / "mlruns.db")  # MONAI's default tracking_uri for mlflow
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        tracking="mlflow",
        bundle_root=str(tmp_path),
        dataset_dir=str(data_dir),
        output_dir=str(tmp_path / "eval"),
        experiment_name="scgan_test",
        **TINY,
        **{"discriminator_def#channels": [8, 8, 16, 16], "epochs": 1, "batch_size": 1, "num_samples": 1},
        progress_bar=False,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    import mlflow

    mlflow.set_tracking_uri(store)
    experiment = mlflow.get_experiment_by_name("scgan_test")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert runs and "train_loss" in runs[0].data.metrics, runs[0].data.metrics  # the generator's total loss


_IMPORTS = r"""
import importlib.metadata, json, sys
from monai.bundle import ConfigWorkflow
configs, data, root = sys.argv[1:4]
training, inference = json.loads(sys.argv[4]), json.loads(sys.argv[5])
for files, kind, ids, overrides in (
    (["train.json"], "train", ["train#trainer", "validate#evaluator"], training),
    (["train.json", "evaluate.json"], "eval", ["validate#evaluator"], training),
    (["inference.json"], "infer", ["evaluator"], inference),
):
    flow = ConfigWorkflow(config_file=[f"{configs}/{f}" for f in files], meta_file=f"{configs}/metadata.json",
                          workflow_type=kind, bundle_root=root, dataset_dir=data, **overrides)
    flow.initialize()
    for name in ids:
        flow.parser.get_parsed_content(name)
owners = importlib.metadata.packages_distributions()
loaded = {owner.lower() for module in list(sys.modules) if "." not in module for owner in owners.get(module, [])}
print("LOADED " + json.dumps(sorted(loaded)))
"""


def test_metadata_lists_the_packages_the_configs_import(data_dir, tmp_path):
    """Every required package is imported by the train, evaluate and inference workflows with their defaults, and the
    packages only the data generator, the reports or non-default settings use are not."""
    training = {**TINY, "epochs": 1, "progress_bar": True, "discriminator_def#channels": [8, 8, 16, 16]}
    command = [sys.executable, "-c", _IMPORTS, str(CONFIGS), str(data_dir), str(tmp_path)]
    command += [json.dumps(training), json.dumps(TINY)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("LOADED "))
    loaded = set(json.loads(line.removeprefix("LOADED ")))
    # fire: `python -m monai.bundle run ...` parses its command line with it (monai/bundle/__main__.py)
    required = {name.lower() for name in _metadata()["required_packages_version"]} - {"fire"}
    # a meta-package (itk) is imported through its parts (itk-core, ...)
    assert {name for name in required if not any(d == name or d.startswith(f"{name}-") for d in loaded)} == set()
    assert "tqdm" in required and "optional_packages_version" not in _metadata()  # MONAI 1.6.1 renames it to required
    # monai/utils/jupyter_utils.py imports matplotlib whenever it is installed, used or not: only required is checked
    assert "matplotlib" not in required
    assert loaded & {"nilearn", "deepbet", "pybids", "intensity-normalization"} == set()
