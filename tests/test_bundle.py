"""The bundle's workflows on tiny synthetic data (32³ crops of phantom subjects, 16³ patches, shallow networks)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_TRAIN, error_messages  # noqa: F401 (data_dir is a fixture of conftest)
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from scipy import ndimage

from custom_nets.data import entry_id
from custom_nets.handlers import training_losses

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
CONFIGS = BUNDLE / "configs"
TASKS = ["pet", "fa", "md", "sr"]
MODELS = sorted(p.stem for p in (CONFIGS / "models").glob("*.json"))


def _workflow(config: str, overlays: list[str], workflow_type: str, **overrides) -> ConfigWorkflow:
    files = [str(CONFIGS / config)] + [str(CONFIGS / o) for o in overlays]
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )
    workflow.initialize()
    return workflow


def _train(data_dir, root, overlays=(), **overrides):
    workflow = _workflow(
        "train.json",
        list(overlays),
        "train",
        bundle_root=str(root),
        dataset_dir=str(data_dir),
        **{**TINY_TRAIN, **overrides},
    )
    workflow.run()
    workflow.finalize()
    return workflow


def _inference(data_dir, root, task: str = "pet", **overrides) -> ConfigWorkflow:
    return _workflow(
        "inference.json",
        [f"tasks/{task}.json"],
        "infer",
        bundle_root=str(root),
        dataset_dir=str(data_dir),
        **{**TINY, **overrides},
    )


def test_properties_of_train_and_infer(data_dir, tmp_path):
    for config, kind in (("train.json", "train"), ("inference.json", "infer")):
        workflow = _workflow(config, [], kind, bundle_root=str(tmp_path), dataset_dir=str(data_dir), **TINY)
        assert workflow.check_properties() == []


@pytest.mark.parametrize("task", TASKS)
def test_training_each_task(task, data_dir, tmp_path):
    workflow = _train(data_dir, tmp_path, [f"tasks/{task}.json"])
    trainer = workflow.parser.get_parsed_content("train#trainer")
    output = training_losses(trainer.state.output)
    assert {"g_loss", "d_loss", "adv", "fm", "l1", "rmse"} <= set(output)
    assert all(np.isfinite(output[k]) for k in ("g_loss", "d_loss"))
    weights = torch.load(tmp_path / "models" / f"model_{task}.pt", weights_only=True)
    # the deployed weights (flat, spectral norm folded) load strictly into inference's network_def
    _inference(data_dir, tmp_path, task).parser.get_parsed_content("network_def").load_state_dict(weights)
    assert (tmp_path / "models" / f"resume_{task}.pt").is_file()


@pytest.mark.parametrize("model", MODELS)
def test_training_each_comparison_model(model, data_dir, tmp_path):
    workflow = _train(data_dir, tmp_path, ["tasks/fa.json", f"models/{model}.json"])
    output = training_losses(workflow.parser.get_parsed_content("train#trainer").state.output)
    assert np.isfinite(output["g_loss"])
    assert ("d_loss" in output) == (model != "unet3d")
    assert (tmp_path / "models" / model / "model_fa.pt").is_file()  # its own folder: SC-GAN's model is kept
    assert not (tmp_path / "models" / "model_fa.pt").exists()


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"adversarial_start": 0.5}, [False, False, True, True]),
        ({"adversarial_interval": 2}, [True, False, True, False]),
    ],
)
def test_discriminator_schedule_from_the_config(data_dir, tmp_path, schedule, expected):
    workflow = _workflow(
        "train.json",
        ["tasks/pet.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(data_dir),
        **{**TINY_TRAIN, "epoch_length": 4, **schedule},
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    outputs = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: outputs.append(set(training_losses(engine.state.output)))
    )
    workflow.run()
    workflow.finalize()
    assert ["d_loss" in keys for keys in outputs] == expected


@pytest.mark.parametrize("final_act, expected", [(None, torch.nn.LeakyReLU), ("relu", torch.nn.ReLU)])
def test_final_act_reaches_training_and_inference_networks(final_act, expected, data_dir, tmp_path):
    """One top-level id (which a task overlay may set) builds the same last decoder layer for training and inference,
    so weights trained with one activation are never deployed with another."""
    for config, kind in (("train.json", "train"), ("inference.json", "infer")):
        workflow = _workflow(config, [], kind, bundle_root=str(tmp_path), dataset_dir=str(data_dir), **TINY)
        workflow.parser["final_act"] = final_act
        workflow.parser.parse()
        last_layer = workflow.parser.get_parsed_content("network_def").decoder[-1]
        assert isinstance(last_layer[3], expected), config


def test_resume_continues_from_the_checkpoint(data_dir, tmp_path):
    first = _train(data_dir, tmp_path, ["tasks/pet.json"])
    per_epoch = first.parser.get_parsed_content("train#trainer").state.iteration
    second = _train(data_dir, tmp_path, ["tasks/pet.json"], epochs=2, resume=True)
    trainer = second.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * per_epoch


def test_evaluate_and_infer_keep_shape_and_affine(data_dir, tmp_path):
    _train(data_dir, tmp_path, ["tasks/md.json"])
    evaluate = _workflow(
        "train.json",
        ["evaluate.json", "tasks/md.json"],
        "eval",
        bundle_root=str(tmp_path),
        dataset_dir=str(data_dir),
        **TINY_TRAIN,
    )
    evaluate.run()
    assert (tmp_path / "eval" / "md" / "metrics.csv").is_file()
    infer = _inference(data_dir, tmp_path, "md")
    infer.run()
    outputs = sorted((tmp_path / "eval").glob("*_md.nii.gz"))
    assert len(outputs) == 1
    test_subject = outputs[0].name.split("_")[0]
    source = nib.load(str(data_dir / test_subject / f"{test_subject}_t1w.nii.gz"))
    synthesis = nib.load(str(outputs[0]))
    assert synthesis.shape == source.shape and np.allclose(synthesis.affine, source.affine, atol=1e-4)
    assert synthesis.get_data_dtype() == np.float32 and np.isfinite(synthesis.get_fdata()).all()


def test_inference_on_any_voxel_order_returns_the_input_grid(data_dir, tmp_path):
    """Inputs re-stored in other voxel orders (a flip; a permutation, as sagittal acquisitions are stored): the
    prediction is written on each input's own grid and equals the RAS input's prediction, reordered."""
    _train(data_dir, tmp_path, ["tasks/pet.json"])
    content = json.loads((data_dir / "datalist.json").read_text())
    entry = content["test"][0]
    predictions = {}
    for order in ("RAS", "LPS", "LIP"):
        folder = tmp_path / order
        folder.mkdir()
        stored = {"id": f"{entry_id(entry)}-{order}"}
        for key in ("t1w", "flair", "mask"):
            image = nib.load(str(data_dir / entry[key]))
            change = nib.orientations.ornt_transform(
                nib.io_orientation(image.affine), nib.orientations.axcodes2ornt(tuple(order))
            )
            nib.save(image.as_reoriented(change), str(folder / f"{key}.nii.gz"))
            stored[key] = str(folder / f"{key}.nii.gz")
        (folder / "datalist.json").write_text(json.dumps({"test": [stored]}))
        infer = _workflow(
            "inference.json",
            ["tasks/pet.json"],
            "infer",
            bundle_root=str(tmp_path),
            datalist=str(folder / "datalist.json"),
            output_dir=str(folder / "out"),
            **TINY,
        )
        infer.run()
        output = nib.load(str(folder / "out" / f"{stored['id']}_pet.nii.gz"))
        source = nib.load(stored["t1w"])
        assert output.shape == source.shape and np.allclose(output.affine, source.affine, atol=1e-4)
        predictions[order] = nib.as_closest_canonical(output).get_fdata()
    np.testing.assert_allclose(predictions["LPS"], predictions["RAS"], atol=1e-4)
    np.testing.assert_allclose(predictions["LIP"], predictions["RAS"], atol=1e-4)


def test_inference_with_resampling_returns_the_input_grid(data_dir, tmp_path):
    _train(data_dir, tmp_path, ["tasks/pet.json"], pixdim=[3.0, 3.0, 3.0])
    # the tiny subjects are all brain: give the test subject a ball-shaped brain mask, so that there is background
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    test_entry = json.loads((data / "datalist.json").read_text())["test"][0]
    mask_file = data / test_entry["mask"]
    image = nib.load(str(mask_file))
    grid = np.indices(image.shape) - (np.array(image.shape) / 2)[:, None, None, None]
    brain = (np.sqrt((grid**2).sum(0)) < 10).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, image.affine), str(mask_file))
    infer = _inference(data, tmp_path, pixdim=[3.0, 3.0, 3.0])
    infer.run()
    (output,) = sorted((tmp_path / "eval").glob("*_pet.nii.gz"))
    source = nib.load(str(data / test_entry["t1w"]))
    assert nib.load(str(output)).shape == source.shape
    # masked to the brain on the input grid too: resampling back must not spread the synthesis into the background
    # (the mask itself went to the 3 mm grid and back by nearest neighbour: its border is exact to one 3 mm voxel)
    synthesis = np.asanyarray(nib.load(str(output)).dataobj)
    assert np.count_nonzero(synthesis[brain > 0]) > 0.9 * brain.sum()
    assert np.count_nonzero(synthesis[~ndimage.binary_dilation(brain > 0, iterations=2)]) == 0


def test_cli_training_and_torchrun_multi_gpu_overlay(data_dir, tmp_path):
    args = []
    for key, value in {**TINY_TRAIN, "bundle_root": str(tmp_path), "dataset_dir": str(data_dir)}.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        f"['{CONFIGS / 'train.json'}','{CONFIGS / 'tasks/pet.json'}']",
    ]
    result = subprocess.run(single + args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model_pet.pt").is_file()
    multi = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}','{CONFIGS / 'tasks/fa.json'}']",
    ]
    # two epochs with a tiny time budget: both ranks must stop together after the first (rank 0 decides)
    budget = ["--epochs", "2", "--time_budget_minutes", "0.0001"]
    result = subprocess.run(multi + args + budget, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = torch.load(tmp_path / "models" / "model_fa.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in weights)  # saved without the DDP wrapper
    progress = torch.load(tmp_path / "models" / "resume_fa.pt", weights_only=True)["progress"]
    assert progress["epoch"] == 1
    # without a budget every rank runs epochs × epoch_length iterations and the cosine ends at the last of them
    planned = ["--epochs", "2", "--epoch_length", "3", "--lr_g", "0.01", "--resume_ckpt", str(tmp_path / "ddp.pt")]
    result = subprocess.run(multi + args + planned, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert state["progress"]["iteration"] == 6
    last_lr = state["g_optimizer"]["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))


@pytest.mark.parametrize(
    "overrides, breaker, message",
    [
        ({"target_key": "t2w"}, None, "missing key(s) ['t2w']"),
        ({}, "delete", "sub-0001_pet.nii.gz does not exist"),
        ({"patch_size": [48, 48, 48]}, None, "smaller than patch_size"),
        ({}, "empty_mask", "_mask.nii.gz: the brain mask given as 'mask' is empty"),
        ({}, "delete_validation", "('validation'), key 'pet'"),
        ({}, "empty_validation", "the 'validation' list is empty"),
    ],
)
def test_bad_input_gets_a_clear_error(overrides, breaker, message, data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    datalist = json.loads((data / "datalist.json").read_text(encoding="utf-8"))
    first = datalist["training"][0]
    if breaker == "delete":
        (data / first["pet"]).unlink()
    if breaker == "empty_mask":
        mask = data / first["mask"]
        image = nib.load(str(mask))
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), str(mask))
    if breaker == "delete_validation":
        (data / datalist["validation"][0]["pet"]).unlink()
    if breaker == "empty_validation":
        datalist["validation"] = []
        (data / "datalist.json").write_text(json.dumps(datalist), encoding="utf-8")
    with pytest.raises(Exception) as error:
        _train(data, tmp_path / "root", ["tasks/pet.json"], **overrides)
    assert message in error_messages(error.value)
    if breaker in ("delete_validation", "empty_validation"):
        # both splits are checked when the workflow initialises: before the prior is fitted or a folder is made
        assert not (tmp_path / "root" / "models").exists()


def test_network_matches_metadata(tmp_path):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "train.json"),
        n=1,
        device="cpu",
        bundle_root=str(tmp_path),
    )


def test_unknown_task_in_the_demo(tmp_path):
    from custom_nets.demo import run_demo

    with pytest.raises(ValueError, match="unknown task 'ct'"):
        run_demo(task="ct", data_dir=tmp_path, bundle=BUNDLE)


def test_demo_refuses_a_synthetic_cohort_other_than_asked(data_dir, tmp_path, capsys):
    """``data/synthetic`` may hold another cohort (``custom_nets.datasets.phantom --subjects 12``): the demo says so
    before training instead of reporting on it as if it were the 20 subjects the README describes."""
    from custom_nets.demo import main as demo_cli
    from custom_nets.demo import run_demo

    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    with pytest.raises(
        ValueError, match=r"datalist.json holds 5 synthetic subjects of seed 11, but the demo asks for 20"
    ):
        run_demo(task="pet", data_dir=data_dir, bundle=bundle)
    with pytest.raises(SystemExit, match="--subjects 5 --seed 11 to use them"):
        demo_cli(["--data", str(data_dir), "--bundle", str(bundle), "--subjects", "5", "--seed", "0"])
    assert not (bundle / "models").exists()


def test_demo_end_to_end_in_brief(tmp_path):
    """The README's main job with a seconds-long budget: data, training, inference, scores and report."""
    from custom_nets.demo import run_demo

    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")  # outputs go into the bundle folder given
    report = run_demo(task="fa", minutes=0.01, data_dir=tmp_path / "data", subjects=5, bundle=bundle)
    assert set(report["nrmse"]) == {"scgan", "population_mean", "intensity_lookup", "cubic_polynomial"}
    assert all(np.isfinite(v) for v in report["nrmse"].values())
    assert report["run"]["iterations"] >= 1 and (bundle / "models" / "model_fa.pt").is_file()
    assert "| SC-GAN |" in (bundle / "eval" / "demo_fa" / "report.md").read_text(encoding="utf-8")
    assert Path(report["figure"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "damage, overrides, message",
    [
        ("truncate", {}, "model_pet.pt cannot be read"),
        (None, {"input_keys": ["t1w", "flair", "t1w"]}, "prior_pet.json: fitted for input_keys"),
        (None, {"per_voxel_prior": False}, "trained with 3 input channels, but this config gives the network 2"),
        (None, {"network_def#channels": [8, 16, 32]}, "does not fit network_def"),
        ("delete", {}, "model_pet.pt does not exist"),
    ],
)
def test_checkpoint_that_does_not_fit_is_named(damage, overrides, message, data_dir, tmp_path):
    _train(data_dir, tmp_path, ["tasks/pet.json"])
    model = tmp_path / "models" / "model_pet.pt"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "delete":
        model.unlink()
    infer = _inference(data_dir, tmp_path, **overrides)
    with pytest.raises(Exception) as raised:
        infer.run()
    assert message in error_messages(raised.value)
    assert not (tmp_path / "eval").exists() or not list((tmp_path / "eval").glob("*.nii.gz"))
