"""``--resume True``: the resumed run equals an uninterrupted one, and a worse validation keeps the best model."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, run_training  # noqa: F401 (data_dir is a fixture of conftest)
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, Randomizable, Transform
from monai.utils import set_determinism

from custom_nets.handlers import ResumeCheckpoint

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"


def _train(data_dir: Path, root: Path, **overrides) -> ConfigWorkflow:
    return run_training(data_dir, root, **overrides)


def _state(workflow: ConfigWorkflow, name: str) -> dict[str, torch.Tensor]:
    return workflow.parser.get_parsed_content(name).state_dict()


def _differences(expected, actual, where: str = "") -> list[str]:
    """Where two nested state dicts differ (tensors bitwise)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{where} keys"]
        return [d for key in expected for d in _differences(expected[key], actual[key], f"{where}.{key}")]
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        return [] if torch.equal(expected, actual) else [where]
    return [] if expected == actual else [where]


def test_resumed_training_equals_an_uninterrupted_run(data_dir, tmp_path):
    # fp32 and the default memory format: bitwise reproducible on CPU. 3 training subjects, batch 1, 1 patch each:
    # a pass is 3 batches, so the second 1-iteration epoch continues the first pass. Validation every epoch (it draws
    # from torch's random state too), without window overlap to save time
    settings = {"amp": False, "channels_last": False, "epoch_length": 1, "val_interval": 1, "sw_overlap": 0.0}
    whole = _train(data_dir, tmp_path / "whole", epochs=2, **settings)
    # the first epoch alone, on the 2-epoch learning-rate schedule, then resumed for the second
    _train(data_dir, tmp_path / "parts", epochs=1, total_iterations=2, **settings)
    resumed = _train(data_dir, tmp_path / "parts", epochs=2, resume=True, **settings)
    trainer = resumed.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (2, 2)
    for name in ("network", "discriminator", "g_optimizer", "d_optimizer"):
        different = _differences(_state(whole, name), _state(resumed, name))
        assert not different, f"{name} differs at {different[:5]}"
    best = [torch.load(tmp_path / run / "models" / "model.pt", weights_only=True) for run in ("whole", "parts")]
    assert not _differences(*best)
    evaluators = [w.parser.get_parsed_content("validate#evaluator").state for w in (whole, resumed)]
    assert evaluators[0].best_metric == evaluators[1].best_metric
    assert evaluators[0].best_metric_epoch == evaluators[1].best_metric_epoch


def _saver(directory: Path, network: torch.nn.Module) -> CheckpointSaver:
    return CheckpointSaver(
        save_dir=str(directory),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_name="val_rmse",
        key_metric_filename="model.pt",
        key_metric_negative_sign=True,
    )


def _validate(evaluator: Engine, saver: CheckpointSaver, rmse: float, epoch: int) -> None:
    """What a validation run does with its metric: the saver keeps the best model (lowest RMSE)."""
    evaluator.state.metrics = {"val_rmse": rmse}
    evaluator.state.epoch = epoch
    saver.metrics_completed(evaluator)


def test_a_worse_validation_after_resume_keeps_the_best_model(tmp_path):
    best_file = tmp_path / "model.pt"
    network = torch.nn.Linear(1, 1)
    torch.nn.init.constant_(network.weight, 1.0)
    evaluator, trainer = Engine(lambda e, b: None), Engine(lambda e, b: None)
    saver = _saver(tmp_path, network)
    _validate(evaluator, saver, rmse=0.1, epoch=1)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.1, 1
    trainer.state.epoch, trainer.state.iteration = 1, 3
    ResumeCheckpoint(tmp_path / "resume.pt", {"generator": network}, evaluator=evaluator, savers=[saver]).save(trainer)

    # a new process: fresh network, evaluator and saver, then the resume at the trainer's start
    network = torch.nn.Linear(1, 1)
    evaluator, trainer = Engine(lambda e, b: None), Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    saver = _saver(tmp_path, network)
    resume = ResumeCheckpoint(tmp_path / "resume.pt", {"generator": network}, True, evaluator=evaluator, savers=[saver])
    resume.load(trainer)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.1, 1)
    torch.nn.init.constant_(network.weight, 2.0)  # trained on
    _validate(evaluator, saver, rmse=0.5, epoch=2)  # worse: the best model stays
    assert torch.load(best_file, weights_only=True)["weight"].item() == 1.0
    _validate(evaluator, saver, rmse=0.05, epoch=3)  # better: replaced
    assert torch.load(best_file, weights_only=True)["weight"].item() == 2.0
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["model.pt", "resume.pt"]


class _Jitter(Randomizable, Transform):
    """Adds a random number: a stand-in for random crops, drawing from its own generator."""

    def __call__(self, value: float) -> float:
        return value + self.R.rand()


def _batches(path: Path, epochs: int, epoch_length: int, num_workers: int, resume: bool) -> list:
    """A training run in miniature: shuffled batches through a random transform, a step drawing from torch's random
    state, an epoch-end validation drawing from it too (as a validation loader does), then the resume checkpoint.
    Everything is made afresh, as in a new process."""
    set_determinism(seed=0)
    transform = Compose([_Jitter()])
    loader = DataLoader(Dataset(list(range(5)), transform), batch_size=2, shuffle=True, num_workers=num_workers)
    validation = DataLoader(list(range(3)), batch_size=1)
    engine = Engine(lambda e, batch: (batch.tolist(), torch.rand(1).item()))
    outputs: list = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: outputs.append([int(v) for v in validation]))
    ResumeCheckpoint(path, {}, resume=resume, transform=transform).attach(engine)
    engine.run(loader, max_epochs=epochs, epoch_length=epoch_length)
    set_determinism(seed=None)
    return outputs


@pytest.mark.parametrize("epoch_length, num_workers", [(1, 0), (2, 0), (3, 0), (4, 0), (2, 2)])
def test_resumed_loader_draws_the_batches_of_an_uninterrupted_run(tmp_path, epoch_length, num_workers):
    # a pass over the data is 3 batches: an epoch of 1, 2 or 4 ends part-way through one, an epoch of 3 at its end
    expected = _batches(tmp_path / "whole.pt", 3, epoch_length, num_workers, resume=False)
    first = _batches(tmp_path / "parts.pt", 1, epoch_length, num_workers, resume=False)
    rest = _batches(tmp_path / "parts.pt", 3, epoch_length, num_workers, resume=True)
    assert first + rest == expected


def _transform() -> Compose:
    keys = ["image", "mask"]
    return Compose(
        [
            RandCropByPosNegLabeld(keys, label_key="mask", spatial_size=[4, 4], pos=1, neg=0, num_samples=2),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
        ]
    )


def _draws(transform: Compose) -> list:
    item = {"image": torch.arange(256.0).reshape(1, 16, 16), "mask": (torch.arange(256) % 2).reshape(1, 16, 16)}
    patches = transform(item)
    return [torch.rand(3), np.random.rand(3), random.random(), [p["image"] for p in patches]]


def test_random_states_round_trip(tmp_path):
    transform = _transform()
    transform.set_random_state(seed=5)
    engine = Engine(lambda e, b: None)
    ResumeCheckpoint(tmp_path / "resume.pt", {}, transform=transform).save(engine)
    expected = _draws(transform)
    other = _transform()  # as constructed in a new process, seeded differently
    other.set_random_state(seed=7)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    ResumeCheckpoint(tmp_path / "resume.pt", {}, resume=True, transform=other).load(engine)
    actual = _draws(other)
    assert torch.equal(expected[0], actual[0]) and np.array_equal(expected[1], actual[1])
    assert expected[2] == actual[2]
    assert all(torch.equal(a, b) for a, b in zip(expected[3], actual[3]))


def test_old_resume_files_load_and_a_missing_file_starts_from_scratch(tmp_path, caplog):
    network = torch.nn.Linear(1, 1)
    path = tmp_path / "resume.pt"
    engine = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    with caplog.at_level(logging.WARNING, logger="custom_nets.handlers"):
        ResumeCheckpoint(path, {"generator": network}, resume=True).load(engine)
    assert f"{path} does not exist: training starts from scratch" in caplog.text
    torch.save({"generator": network.state_dict(), "progress": {"epoch": 2, "iteration": 6}}, path)  # older format
    engine.state.epoch_length = 3
    handler = ResumeCheckpoint(path, {"generator": network}, True, _transform(), evaluator, [_saver(tmp_path, network)])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="custom_nets.handlers"):
        handler.load(engine)
    assert (engine.state.epoch, engine.state.iteration) == (2, 6)
    assert "best validation metric" in caplog.text and "random states" in caplog.text


def _cli_training(data_dir: Path, root: Path, resume: bool) -> subprocess.Popen:
    settings = {**TINY_TRAIN, "epochs": 4, "epoch_length": 2, "val_interval": 1, "sw_overlap": 0.0}
    settings.update(amp=False, channels_last=False, bundle_root=str(root), dataset_dir=str(data_dir), resume=resume)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json")]
    for key, value in settings.items():
        command += [f"--{key}", str(value).replace(" ", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_kill_during_training_then_resume_gives_the_uninterrupted_weights(data_dir, tmp_path):
    """kill -9 at a random moment after the first epoch's checkpoint, then --resume True: the final generator, the
    discriminator and the best model equal an uninterrupted run's, bit for bit (fp32, one thread)."""
    whole = _cli_training(data_dir, tmp_path / "whole", resume=True)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-2000:]
    killed = _cli_training(data_dir, tmp_path / "killed", resume=True)
    resume_file = tmp_path / "killed" / "models" / "resume_pet.pt"
    deadline = time.monotonic() + 600
    while not resume_file.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.0))
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    finished = _cli_training(data_dir, tmp_path / "killed", resume=True)
    assert finished.wait(timeout=600) == 0, finished.stderr.read()[-2000:]
    states = [torch.load(tmp_path / run / "models" / "resume_pet.pt", weights_only=True) for run in ("whole", "killed")]
    assert states[0]["progress"] == states[1]["progress"]
    for name in ("generator", "discriminator"):
        assert not _differences(states[0][name], states[1][name]), name
    best = [torch.load(tmp_path / run / "models" / "model.pt", weights_only=True) for run in ("whole", "killed")]
    assert not _differences(*best)
    leftovers = [p.name for p in (tmp_path / "killed" / "models").iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_time_budget_resumes_with_the_time_already_spent(tmp_path, monkeypatch):
    """A time-bound run killed and resumed spends the rest of its budget, not a new one, and its cosine goes on from
    the fraction reached (the resume file keeps TimeBudget's clock)."""
    from custom_nets.handlers import CosineSchedule, TimeBudget

    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])

    def run(resume: bool, kill_after: int | None = None) -> tuple[Engine, list[float]]:
        network = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
        rates = []

        def step(engine, batch):
            rates.append(optimizer.param_groups[0]["lr"])
            clock["now"] += 6.0  # every iteration takes 6 s of a 60 s budget
            if kill_after is not None and engine.state.iteration == kill_after:
                engine.terminate()

        engine = Engine(step)
        CosineSchedule([optimizer], total_iterations=10**6).attach(engine)
        ResumeCheckpoint(tmp_path / "resume.pt", {"generator": network, "g_optimizer": optimizer}, resume).attach(
            engine
        )
        TimeBudget(minutes=1.0).attach(engine)
        engine.run(range(2), max_epochs=100)
        return engine, rates

    _, uninterrupted = run(resume=False)
    assert len(uninterrupted) == 10  # 60 s / 6 s
    (tmp_path / "resume.pt").unlink()
    run(resume=False, kill_after=5)  # killed during epoch 3: the resume file holds epoch 2, 24 s spent
    clock["now"] += 500.0  # the restart comes later: wall-clock time between runs is not training time
    engine, resumed = run(resume=True)
    assert engine.state.iteration == 10 and len(resumed) == 6  # iterations 5-10: the rest of the budget only
    assert resumed == pytest.approx(uninterrupted[4:])  # the cosine goes on from 24 s of 60
