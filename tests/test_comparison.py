"""Equal-budget comparison runs, their scores and figure, and the SPM real-template case (with a stand-in wheel)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY

import custom_nets.datasets.templates as realdata
import custom_nets.evaluation.pipeline as pipeline
from custom_nets.evaluation.comparison import markdown_table
from custom_nets.evaluation.figures import comparison_figure
from custom_nets.evaluation.pipeline import (
    RunSettings,
    compare,
    interleaved_iteration_seconds,
    machine_speed_probe,
    model_overlays,
    run_baselines,
    task_settings,
)
from custom_nets.io import sha256_of
from custom_nets.trainer import ConditionalGanTrainer

TINY_RUN = {**TINY, "discriminator_def#channels": [8, 8, 16, 16]}
BUNDLE = Path(__file__).resolve().parent.parent / "bundle"


def test_equal_budget_runs_are_scored_and_reused(data_dir, tmp_path):
    settings = RunSettings(iterations=3, patch_size=16, batch_size=1, num_samples=1)
    datalist = data_dir / "datalist.json"
    quiet = {"overrides": TINY_RUN, "log": lambda *_: None}
    result = compare(BUNDLE, "fa", datalist, tmp_path, settings, ["unet3d", "scgan"], **quiet)
    rows = result["rows"]
    assert list(rows) == ["population_mean", "intensity_lookup", "cubic_polynomial", "unet3d", "scgan"]
    for model in ("unet3d", "scgan"):
        assert rows[model]["run"]["iterations"] == 3, model  # 3 training subjects, batch 1: one epoch
        assert np.isfinite(rows[model]["scores"]["summary"]["nrmse"]["mean"])
        # the final weights, written by the config's FinalWeightsSaver handler
        variant = "" if model == "scgan" else model  # a comparison model's own folder
        assert (tmp_path / model / "models" / variant / "model_fa.pt").is_file()
        assert not (tmp_path / model / "final_weights.pt").exists()
        probe = rows[model]["run"]["probe_seconds"]  # the machine's speed before and after training
        assert set(probe) == {"before", "after"} and all(0 < value < 60 for value in probe.values())
    again = compare(BUNDLE, "fa", datalist, tmp_path, settings, ["scgan"], **quiet)["rows"]
    assert again["scgan"]["run"]["train_seconds"] == rows["scgan"]["run"]["train_seconds"]  # reused, not retrained

    table = markdown_table(rows, {})
    assert len(table) == 2 + 5 and table[0].startswith("| model | NRMSE")
    assert sum("**" in line for line in table) == 1  # exactly one best row
    figure = comparison_figure(
        tmp_path / "figure.png",
        datalist,
        ["t1w", "flair"],
        "fa",
        {"lookup": rows["intensity_lookup"]["predictions"], "SC-GAN": rows["scgan"]["predictions"]},
        "FA",
    )
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_interleaved_costs_time_every_model_on_the_same_batch(data_dir, tmp_path):
    settings = RunSettings(minutes=1, patch_size=16, batch_size=1, num_samples=1)
    costs = interleaved_iteration_seconds(
        BUNDLE, "fa", ["unet3d", "scgan"], data_dir / "datalist.json", tmp_path, settings, TINY_RUN, rounds=2
    )
    assert set(costs) == {"unet3d", "scgan"} and all(0 < value < 60 for value in costs.values())
    written = sorted(str(p.relative_to(tmp_path / "models")) for p in (tmp_path / "models").rglob("*") if p.is_file())
    assert written == ["prior_fa.json", "unet3d/prior_fa.json"]  # the fitted priors (each model's folder), no weights
    assert not list(tmp_path.rglob("*.pt"))
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        interleaved_iteration_seconds(BUNDLE, "fa", ["scgan"], data_dir / "datalist.json", tmp_path, settings, rounds=0)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({}, 1.0),
        ({"adversarial_interval": 4}, 0.25 * 1.0 + 0.75 * 0.25),  # D on one iteration in 4
        ({"adversarial_start": 0.5}, 0.5 * 1.0 + 0.5 * 0.25),  # D on the second half of the run
        ({"adversarial_start": 0.5, "adversarial_interval": 2}, 0.25 * 1.0 + 0.75 * 0.25),
    ],
)
def test_interleaved_cost_weights_each_kind_of_iteration_by_its_share(
    data_dir, tmp_path, monkeypatch, schedule, expected
):
    clock = [0.0]

    def iteration(self, engine, batch):  # a fake step: 1 s with D, 0.25 s without
        clock[0] += 1.0 if engine.adversarial_now() else 0.25

    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ConditionalGanTrainer, "_iteration", iteration)
    settings = RunSettings(minutes=1, patch_size=16, batch_size=1, num_samples=1)
    costs = interleaved_iteration_seconds(
        BUNDLE, "fa", ["unet3d", "scgan"], data_dir / "datalist.json", tmp_path, settings, {**TINY_RUN, **schedule}
    )
    assert costs == pytest.approx({"unet3d": 0.25, "scgan": expected})


def test_interleaved_cost_turns_the_minutes_into_each_models_iterations(tmp_path, monkeypatch):
    measured, trained = [], {}

    def measure(bundle, task, models, datalist, work_dir, settings, overrides=None, rounds=6):
        measured.append(list(models))
        return {"unet3d": 0.5, "scgan": 2.0}

    def train(bundle, task, overlays, datalist, out_dir, settings, **kwargs):
        trained[Path(out_dir).name] = dict(settings)
        return {"predictions": str(out_dir), "seconds_per_iteration": 1.0}

    monkeypatch.setattr(pipeline, "interleaved_iteration_seconds", measure)
    monkeypatch.setattr(pipeline, "train_and_infer", train)
    monkeypatch.setattr(pipeline, "evaluate_predictions", lambda *a, **k: {"summary": {"nrmse": {"mean": 0.1}}})
    settings = RunSettings(minutes=0.1, patch_size=16)
    run = lambda: pipeline.run_models(  # noqa: E731
        BUNDLE,
        "fa",
        ["unet3d", "scgan"],
        "datalist.json",
        tmp_path,
        settings,
        log=lambda *_: None,
        interleaved_cost=True,
    )
    results = run()
    assert {m: s["iterations"] for m, s in trained.items()} == {"unet3d": 12, "scgan": 3}  # 6 s / cost
    assert all(s["minutes"] == 0 and s["patch_size"] == 16 for s in trained.values())
    assert results["scgan"]["run"]["interleaved_seconds_per_iteration"] == 2.0
    run()
    assert measured == [["unet3d", "scgan"]]  # the recorded costs are reused for the same models and settings
    with pytest.raises(ValueError, match="give minutes > 0"):
        pipeline.run_models(
            BUNDLE, "fa", ["scgan"], "d.json", tmp_path, RunSettings(iterations=3), interleaved_cost=True
        )


def test_machine_speed_probe_times_a_fixed_workload():
    assert 0 < machine_speed_probe(repeats=1) < 60
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        machine_speed_probe(repeats=0)


def test_unknown_model_and_task_are_named():
    with pytest.raises(ValueError, match="unknown model 'gan9'"):
        model_overlays(BUNDLE, "gan9")
    with pytest.raises(ValueError, match="unknown task 'ct'"):
        task_settings(BUNDLE, "ct")
    with pytest.raises(FileNotFoundError, match="no configs/train.json"):
        task_settings(BUNDLE / "configs", "pet")


def test_task_settings_come_from_the_configs():
    assert task_settings(BUNDLE, "md", ("target_key", "input_keys", "target_unit")) == {
        "target_key": "md",
        "input_keys": ["t1w", "flair"],
        "target_unit": "10^-3 mm^2/s",
    }


def _fake_spm_wheel(path):
    """A wheel with SPM's layout whose images are a 20×6×5 LAS grid: PET = 2·T1 inside a box-shaped brain."""
    affine = np.array([[-2.0, 0, 0, 19], [0, 2, 0, -6], [0, 0, 2, -4], [0, 0, 0, 1]])
    grid = np.indices((20, 6, 5)).astype(np.float32)
    t1 = 0.2 + 0.03 * np.abs(grid[0] - 9.5) + 0.05 * grid[1]  # symmetric in x, like a brain
    volumes = {"t1w": t1, "t2w": 1 - t1, "pd": t1**2, "pet": 2 * t1, "brainmask": np.ones_like(t1)}
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for key, member in realdata.SPM_MEMBERS.items():
            archive.writestr(realdata._PREFIX + member, nib.Nifti1Image(volumes[key], affine).to_bytes())
    with zipfile.ZipFile(path, "w") as outer:
        outer.writestr(realdata._ARCHIVE, inner.getvalue())
    return affine


def test_template_case_splits_hemispheres_with_a_guard_band(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    affine = _fake_spm_wheel(cache / realdata.SPM_WHEEL)
    monkeypatch.setattr(realdata, "SPM_SHA256", sha256_of(cache / realdata.SPM_WHEEL))
    datalist = realdata.build_template_case(tmp_path / "case", guard_mm=4.0, cache_dir=cache)
    content = json.loads(datalist.read_text(encoding="utf-8"))
    x = affine[0, 0] * np.arange(20) + affine[0, 3]  # 19, 17, ..., -19 mm

    train = nib.load(str(tmp_path / "case" / content["training"][0]["t1w"]))
    train_x = train.affine[0, 0] * np.arange(train.shape[0]) + train.affine[0, 3]
    assert train_x.max() < -4.0 and np.allclose(train_x, x[x < -4.0])  # left beyond the guard band, nothing else
    score = np.asanyarray(nib.load(str(tmp_path / "case" / content["test"][0]["score_mask"])).dataobj) > 0
    assert np.all(x[score.any(axis=(1, 2))] > 4.0) and score[x > 4.0].all()
    test_pet = np.asanyarray(nib.load(str(tmp_path / "case" / content["test"][0]["pet"])).dataobj)
    assert test_pet.shape == (20, 6, 5)

    baselines = run_baselines(
        datalist, tmp_path / "baselines", "pet", ["t1w", "t2w", "pd"], score_mask_key="score_mask"
    )
    # the target is a function of the inputs and the hemispheres mirror each other: the fit on the left carries over
    nrmse = {name: row["scores"]["summary"]["nrmse"]["mean"] for name, row in baselines.items()}
    assert nrmse["cubic_polynomial"] < 0.1 < nrmse["population_mean"]


def test_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fake_spm_wheel(cache / realdata.SPM_WHEEL)

    def fake_run(command, **kwargs):
        _fake_spm_wheel(__import__("pathlib").Path(command[command.index("-d") + 1]) / realdata.SPM_WHEEL)
        return type("Result", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(realdata.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="differs from the pinned"):
        realdata.fetch_spm_wheel(cache)


def test_table_of_the_oracle_alone_has_no_best_row():
    summary = {m: {"mean": 0.1, "std": float("nan")} for m in ("nrmse", "psnr", "ssim", "rmse")}
    table = markdown_table({"oracle": {"scores": {"summary": summary}}}, {"oracle": "oracle"})
    assert len(table) == 3 and "**" not in table[2]


def _paper_table_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "paper_table", Path(__file__).parents[1] / "benchmarks" / "paper_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"patch_size": [32, 32, 32]}, "32³, 1 subject × 2 patches"),
        ({"patch_size": 48, "batch_size": 2, "num_samples": 4}, "48³, 2 subjects × 4 patches"),
        ({"patch_size": [64, 32, 64], "batch_size": 1, "num_samples": 2}, "64×32×64, 1 subject × 2 patches"),
    ],
)
def test_paper_table_states_the_overridden_patch_and_batch(overrides, expected):
    """The table's budget text describes the patches the runs trained on, --override included."""
    train = json.loads((Path(__file__).parents[1] / "bundle" / "configs" / "train.json").read_text(encoding="utf-8"))
    assert train["batch_size"] == 1 and train["num_samples"] == 2  # the first case keeps train.json's batch
    assert _paper_table_module()._train_json_batch(overrides) == expected


def test_seed_spread_of_scored_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "seed_spread", Path(__file__).parent.parent / "benchmarks/seed_spread.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = {"a": [[0.10, 0.20], [0.12, 0.22]], "b": [[0.11, 0.25], [0.11, 0.25]]}  # model -> seed -> subject
    runs = {}
    for model, seeds in scores.items():
        for seed, values in enumerate(seeds):
            folder = tmp_path / model / f"seed{seed}"
            (folder / "scores").mkdir(parents=True)
            subjects = {f"sub-{i}": {"nrmse": v} for i, v in enumerate(values)}
            (folder / "scores" / "summary.json").write_text(json.dumps({"subjects": subjects}))
            runs.setdefault(model, []).append(folder)
    result = module.seed_spread(runs)
    assert result["a"]["seeds"] == pytest.approx([0.15, 0.17]) and result["a"]["sd"] == pytest.approx(0.02**0.5 * 0.1)
    assert result["b"]["minus_reference"]["mean"] == pytest.approx(0.16 - 0.18)
    assert "seeds_welch_ci95" in result["b"]["minus_reference"]
