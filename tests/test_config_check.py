"""Configuration checked before anything runs: unknown command-line ids, task names, patch sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from custom_nets.config_check import check_settings, parse_overrides, unknown_cli_ids

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"
MAIN = "/site-packages/monai/bundle/__main__.py"
FILES = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'tasks' / 'fa.json'}']"


@pytest.mark.parametrize(
    "task, patch_size, message",
    [
        ("xyz", [64, 64, 64], "task 'xyz' has no overlay"),
        ("a/b", [64, 64, 64], "plain name"),
        ("pet", "abc", "patch_size 'abc': expected a list"),
        ("pet", [64, 64, 0], "positive integers"),
        ("pet", [48, 64, 64], "multiple of 32"),
        ("pet", [64, 64], r"patch_size \[64, 64\]: expected 3 sizes"),
    ],
)
def test_bad_settings_are_named(task, patch_size, message):
    with pytest.raises(ValueError, match=message):
        check_settings(task, patch_size, 32, CONFIGS / "tasks", argv=[])


def test_good_settings_pass():
    assert check_settings("fa", [64, 96, 64], 32, CONFIGS / "tasks", argv=[])


PET_IDS = {"target_key": "pet", "out_act": "relu", "degrade_factor": 1}


SR_IDS = {"target_key": "fa", "out_act": "sigmoid", "degrade_factor": 2}


@pytest.mark.parametrize(
    "task, task_ids, argv, message, task_overrides",
    [
        ("fa", PET_IDS, [], "task 'fa': target_key is 'pet', but the task's overlay .*fa.json sets 'fa'", ()),
        ("sr", {**PET_IDS, "target_key": "fa"}, [], "out_act is 'relu', but .*sr.json sets 'sigmoid'", ()),
        ("fa", {**PET_IDS, "target_key": "fa"}, [MAIN, "--target_key", "fa"], "out_act is 'relu'", ()),
        ("md", {**PET_IDS, "target_key": "md"}, [MAIN, "--task=md", "--target_key=md"], None, ()),  # as md.json
        ("fa", {**PET_IDS, "out_act": "sigmoid"}, [MAIN, "--target_key", "pet"], None, ()),  # overridden on purpose
        ("pet", PET_IDS, [], None, ()),
        # sr on maps already at low resolution: another entry point (custom_nets.predict) sets it on purpose
        ("sr", {**SR_IDS, "degrade_factor": 1}, [], "degrade_factor is 1, but .*sr.json sets 2", ()),
        ("sr", {**SR_IDS, "degrade_factor": 1}, [], None, ["degrade_factor"]),
        ("fa", {**PET_IDS, "degrade_factor": 2}, [], "target_key is 'pet'", ["degrade_factor"]),
    ],
)
def test_the_task_overlay_must_have_been_applied(task, task_ids, argv, message, task_overrides):
    """``--task fa`` on ``train.json`` alone used to train the PET defaults under the name fa, without a word."""
    check = dict(argv=argv, task_ids=task_ids, task_overrides=task_overrides)
    if message is None:
        assert check_settings(task, [64] * 3, 32, CONFIGS / "tasks", **check)
        return
    with pytest.raises(ValueError, match=message):
        check_settings(task, [64] * 3, 32, CONFIGS / "tasks", **check)


def test_task_without_its_overlay_stops_before_anything_is_written(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json"]
    command += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--task", "fa"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=CONFIGS.parent)
    assert result.returncode != 0
    assert "task 'fa': target_key is 'pet', but the task's overlay" in result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("roi", [None, 32, [32, 48, 16]])
def test_discriminator_roi_sizes_accepted(roi):
    assert check_settings("fa", [64] * 3, 32, argv=[], discriminator_roi_size=roi)


@pytest.mark.parametrize("roi", [0, [32, 32], [32, 0, 32], "32", True, [16.0, 16, 16]])
def test_bad_discriminator_roi_size_is_named(roi):
    with pytest.raises(ValueError, match=r"discriminator_roi_size .*: expected null .*patch_size \[64, 64, 64\]"):
        check_settings("fa", [64] * 3, 32, argv=[], discriminator_roi_size=roi)


def test_missing_file_of_an_id_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher_weights .*absent.pt': no such file"):
        check_settings("fa", [64] * 3, 32, argv=[], files={"teacher_weights": str(tmp_path / "absent.pt")})
    assert check_settings("fa", [64] * 3, 32, argv=[], files={"teacher_weights": ""})  # empty: not used


@pytest.mark.parametrize(
    "items, expected",
    [
        (["generator_preset=student"], {"generator_preset": "student"}),
        (["network_def#channels=[8,16]", "lr_g=0.002"], {"network_def#channels": [8, 16], "lr_g": 0.002}),
        (["per_voxel_prior=false"], {"per_voxel_prior": False}),
    ],
)
def test_overrides_from_the_command_line(items, expected):
    assert parse_overrides(items) == expected


@pytest.mark.parametrize("item", ["generator_preset", "=3"])
def test_malformed_override_is_named(item):
    with pytest.raises(ValueError, match=f"--override '{item}': expected ID=JSON"):
        parse_overrides([item])


@pytest.mark.parametrize(
    "extra, unknown",
    [
        (["--patch_sizee", "[32,32,32]"], ["patch_sizee"]),
        (["--network_def#channels", "[8,16]", "--epochs", "1"], []),
        (["--lr_gg=0.1"], ["lr_gg"]),
        (["--meta_file", "m.json", "--logging_file", "l.conf"], []),  # monai.bundle.run's own arguments
        (["--fa_only_overlay_id", "1"], ["fa_only_overlay_id"]),
        # ids that MONAI's tracking settings add at run time exist only when tracking is on
        (["--tracking", "mlflow", "--tracking_uri", "sqlite:///m.db", "--experiment_name", "x"], []),
        (["--tracking=mlflow", "--run_name", "r"], []),
        (["--tracking_uri", "sqlite:///m.db"], ["tracking_uri"]),
    ],
)
def test_unknown_command_line_ids(extra, unknown):
    argv = [MAIN, "run", "training", "--config_file", FILES, *extra]
    assert [name for name, _ in unknown_cli_ids(argv)] == unknown


def test_ids_of_other_configs_are_not_ids_of_the_given_ones():
    """A training id given to an inference command would be ignored: it is named."""
    argv = [MAIN, "run", "inferring", "--config_file", f"['{CONFIGS / 'inference.json'}']", "--lambda_adv", "0"]
    assert [name for name, _ in unknown_cli_ids(argv)] == ["lambda_adv"]


def test_ids_of_a_tracking_settings_file_are_known(tmp_path):
    settings = tmp_path / "tracking.json"
    settings.write_text(json.dumps({"configs": {"my_tracking_dir": "/tmp"}}))
    argv = [MAIN, "run", "training", "--config_file", FILES, "--tracking", str(settings)]
    assert unknown_cli_ids([*argv, "--my_tracking_dir", "/x"]) == []
    assert [name for name, _ in unknown_cli_ids([*argv, "--tracking_uri", "x"])] == ["tracking_uri"]


def test_python_api_and_other_programs_are_not_checked():
    assert unknown_cli_ids(["pytest", "--patch_sizee", "1"]) == []


def test_cli_typo_stops_before_anything_is_written(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", FILES]
    command += ["--bundle_root", str(tmp_path), "--patch_sizee", "[32,32,32]"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "--patch_sizee: no such id in the bundle's configs (did you mean patch_size" in result.stderr
    assert not (tmp_path / "models").exists()


def test_ids_shared_by_training_and_inference_agree():
    """Inference must rebuild the network and the preprocessing training used: every id both configs define has one
    value, except those whose job differs (what to import and run, fitting vs reading the prior, the files checked
    before a run (training also checks a distillation teacher's weights and both of its splits), and spectral norm as
    a parametrisation to train vs folded into the weights: the same outputs, tests/test_export.py)."""
    import json

    train = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))
    infer = json.loads((CONFIGS / "inference.json").read_text(encoding="utf-8"))
    differing = {"imports", "initialize", "run", "prior", "check_config", "check_data", "checked_settings"}
    differing.add("fold_spectral_norm")
    shared = sorted(set(train) & set(infer) - differing)
    assert {"network_def", "load_transforms", "input_keys", "per_voxel_prior", "residual_on_prior"} <= set(shared)
    assert {key for key in shared if train[key] != infer[key]} == set()


@pytest.mark.parametrize("overlay", sorted((CONFIGS / "models").glob("*.json")), ids=lambda p: p.stem)
def test_comparison_models_write_to_their_own_folders(overlay):
    """Each comparison model names itself, so its weights, resume file, prior, TensorBoard runs, predictions and test
    metrics go to ``models/<model_variant>/``, ``runs/<task>_<model_variant>`` and ``eval/<model_variant>/``: training
    or running one never replaces SC-GAN's files."""
    from monai.bundle import ConfigParser

    assert json.loads(overlay.read_text())["model_variant"] == overlay.stem
    for config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / config), str(CONFIGS / "tasks" / "pet.json"), str(overlay)])
        default = ConfigParser()
        default.read_config([str(CONFIGS / config), str(CONFIGS / "tasks" / "pet.json")])
        assert parser.get_parsed_content("ckpt_dir") == f"./models/{overlay.stem}"
        assert default.get_parsed_content("ckpt_dir") == "./models"
        assert parser.get_parsed_content("output_dir") == f"./eval/{overlay.stem}"  # predictions and test metrics
        assert default.get_parsed_content("output_dir") == "./eval"
        if config == "train.json":
            assert parser.get_parsed_content("log_dir") == f"./runs/pet_{overlay.stem}"


@pytest.mark.parametrize("variant", ["a/b", "", 3])
def test_model_variant_must_be_a_plain_name(variant):
    with pytest.raises(ValueError, match="model_variant .*plain name"):
        check_settings("pet", [64] * 3, 32, argv=[], model_variant=variant)


SLIDING_WINDOW = {"sw_mode": "hann", "sw_overlap": 0.5, "sw_batch_size": 4, "sw_sigma_scale": 0.125}


@pytest.mark.parametrize(
    "changed, message",
    [
        (
            {"sw_mode": "gausian"},
            r"sw_mode 'gausian': expected one of \['hann', 'gaussian', 'constant'\] \(did you mean",
        ),
        ({"sw_mode": None}, "sw_mode None: expected one of"),
        ({"sw_overlap": 1.0}, r"sw_overlap 1.0: expected a number in \[0, 1\)"),
        ({"sw_overlap": "0.5"}, "sw_overlap '0.5'"),
        ({"sw_batch_size": 0}, "sw_batch_size 0: expected a positive integer"),
        ({"sw_sigma_scale": -1}, "sw_sigma_scale -1: expected a positive number"),
        ({"sw_mode": "gaussian", "sw_overlap": 0.0}, None),
    ],
)
def test_sliding_window_settings_are_named(changed, message):
    settings = {**SLIDING_WINDOW, **changed}
    if message is None:
        assert check_settings("pet", [64] * 3, 32, argv=[], settings=settings)
        return
    with pytest.raises(ValueError, match=message):
        check_settings("pet", [64] * 3, 32, argv=[], settings=settings)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("epochs", 1.5, "epochs 1.5: expected a positive integer"),
        ("epochs", 0, "epochs 0: expected a positive integer"),
        ("val_interval", 0, "val_interval 0: expected a positive integer"),
        ("num_samples", 0, "num_samples 0"),
        ("amp", "maybe", "amp 'maybe': expected True or False"),
        ("augmentation_prob", 2, r"augmentation_prob 2: expected a number in \[0, 1\]"),
        ("time_budget_minutes", -1, "time_budget_minutes -1: expected a number of minutes >= 0"),
        ("ema_decay", 1.5, r"ema_decay 1.5: expected a number in \[0, 1\)"),
        ("adversarial_start", 2, "adversarial_start 2"),
        ("lambda_l1", -5, "lambda_l1 -5: expected a number >= 0"),
        ("lambda_rmse", float("nan"), "lambda_rmse nan: expected a number >= 0"),
        ("lr_g", -1, "lr_g -1: expected a number > 0"),
        ("d_steps", 0, "d_steps 0"),
        ("instance_noise", -1, "instance_noise -1"),
        ("adversarial_criterion", "wgan", r"adversarial_criterion 'wgan': expected one of \['least_squares'"),
        ("pixdim", "null", "pixdim 'null': expected None"),
        ("pixdim", [0, 1, 1], "pixdim"),
        ("degrade_factor", 0.5, "degrade_factor 0.5: expected a number >= 1"),
        ("target_max", -1.0, "target_min 0.0 and target_max -1.0: expected target_min < target_max"),
        ("train_limit", 0, "train_limit 0"),
        ("pixdim", [1.5, 1.5, 2], None),
        ("train_limit", None, None),
    ],
)
def test_setting_values_are_named(name, value, message):
    settings = {"target_min": 0.0, "target_max": 3.0, name: value}
    if message is None:
        assert check_settings("pet", [64] * 3, 32, argv=[], settings=settings)
        return
    with pytest.raises(ValueError, match=message):
        check_settings("pet", [64] * 3, 32, argv=[], settings=settings)


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_every_checked_id_of_a_config_is_passed_to_the_check(config):
    """Each id of ``SETTING_RULES`` that a config defines reaches ``check_settings`` through its ``checked_settings``,
    and the defaults pass."""
    from monai.bundle import ConfigParser

    from custom_nets.config_check import SETTING_RULES

    content = json.loads((CONFIGS / config).read_text(encoding="utf-8"))
    assert set(content["checked_settings"]) == set(SETTING_RULES) & set(content)
    assert "settings=@checked_settings" in content["check_config"]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / config), str(CONFIGS / "tasks" / "pet.json")])
    assert check_settings("pet", [64] * 3, 32, argv=[], settings=parser.get_parsed_content("checked_settings"))


@pytest.mark.parametrize("argv", [[MAIN, "--final_act", "null"], [MAIN, "--pixdim=NULL"]])
def test_null_on_the_command_line_is_named(argv):
    with pytest.raises(ValueError, match=r"--(final_act|pixdim) null: on the command line write None"):
        check_settings("pet", [64] * 3, 32, argv=argv)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sw_mode", "gausian"], "sw_mode 'gausian': expected one of"),
        (["--val_interval", "0"], "val_interval 0: expected a positive integer"),
    ],
)
def test_a_bad_value_stops_training_before_anything_is_written(extra, message, tmp_path):
    """The inferer is built at the first validation and ignite reads val_interval when the trainer is built, after
    the prior is fitted: the check runs before either."""
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", FILES]
    command += ["--bundle_root", str(tmp_path), *extra]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("custom_nets.preprocess", ["--image", "t1w=x.nii.gz", "--out", "o", "--voxel-size", "0"], "> 0"),
        ("custom_nets.preprocess", ["--image", "t1w=x.nii.gz", "--out", "o", "--voxel-size", "-2"], "> 0"),
        ("custom_nets.datasets.folders", ["--root", "r", "--affine-tol", "-1"], ">= 0"),
        ("custom_nets.predict", ["--task", "sr", "--input", "i", "--output", "o", "--degrade-factor", "0.5"], ">= 1"),
        ("custom_nets.predict", ["--task", "sr", "--input", "i", "--output", "o", "--degrade-factor", "nan"], ">= 1"),
    ],
)
def test_numeric_cli_options_are_checked_by_argparse(module, argv, message, capsys):
    import importlib

    with pytest.raises(SystemExit) as raised:
        importlib.import_module(module).main(argv)
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {argv[-2]}: {argv[-1]!r}: expected a number {message}" in error


def test_multi_gpu_initialisation_runs_the_same_checks():
    """The multi-GPU overlay replaces ``initialize``; it must keep every up-front check of single-process training
    (settings and both splits of the datalist, before the prior is fitted or anything is written)."""
    train = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))["initialize"]
    multi = json.loads((CONFIGS / "multi_gpu_train.json").read_text(encoding="utf-8"))["initialize"]
    checks = [step for step in train if step.startswith("$@check_")]
    assert checks == ["$@check_config", "$@check_data"]
    assert [step for step in multi if step.startswith("$@check_")] == checks


@pytest.mark.parametrize("overlay", [None, "pet", "fa", "md", "sr"])
def test_training_and_inference_name_the_weights_alike(overlay):
    """With a task overlay both configs use ``models/model_<task>.pt``; alone both use ``models/model.pt``, the name
    MONAI Label and the Model Zoo read (a mix of the two is named by the missing-checkpoint error, see test_io)."""
    from monai.bundle import ConfigParser

    names = []
    for config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / config)] + ([str(CONFIGS / "tasks" / f"{overlay}.json")] if overlay else []))
        names.append(parser.get_parsed_content("ckpt_name"))
    assert names == [f"model_{overlay}.pt" if overlay else "model.pt"] * 2


def test_a_missing_checkpoint_names_the_weights_beside_it(tmp_path):
    """Trained with ``train.json`` alone (``model.pt``), synthesised with ``tasks/pet.json`` (``model_pet.pt``)."""
    import torch

    from custom_nets.io import read_checkpoint

    with pytest.raises(FileNotFoundError, match=r"model_pet.pt does not exist \(train first"):
        read_checkpoint(tmp_path / "model_pet.pt")
    torch.save({}, tmp_path / "model.pt")
    torch.save({}, tmp_path / "resume.pt")
    with pytest.raises(FileNotFoundError, match=r"its folder holds model.pt: trained with another task overlay"):
        read_checkpoint(tmp_path / "model_pet.pt")
