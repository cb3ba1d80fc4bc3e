"""Writes that a crash cannot half-do: the best model, the resume checkpoint and every file of ``custom_nets.io`` are
replaced in one rename; an interrupted write leaves the previous file; temporaries of killed runs are removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine, Events

from custom_nets.handlers import AtomicCheckpointSaver
from custom_nets.io import atomic_torch_save, atomic_write_text, remove_stale_temporaries


def _evaluator_with_scores(scores: list[float]) -> Engine:
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(engine):
        engine.state.metrics["val_rmse"] = scores[engine.state.epoch - 1]

    evaluator.state.key_metric_name = "val_rmse"
    return evaluator


def _run(evaluator: Engine, epochs: int) -> None:
    evaluator.run([0], max_epochs=epochs)


def test_best_model_is_replaced_atomically_and_survives_a_failed_save(tmp_path, monkeypatch):
    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_filename="model.pt",
        key_metric_negative_sign=True,
    )
    evaluator = _evaluator_with_scores([0.5, 0.4, 0.3])
    # MONAI's handler picks the key metric from the engine: emulate what SupervisedEvaluator sets
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: None)
    saver.attach(evaluator)
    evaluator.state.metrics = {}
    with torch.no_grad():
        network.weight.fill_(1.0)
    _run(evaluator, 1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1.0).all()
    assert stat.S_IMODE(os.stat(tmp_path / "model.pt").st_mode) == 0o666 & ~_umask()

    def failing_save(obj, file, *args, **kwargs):  # dies half-way through writing the new best model
        with open(file, "wb") as stream:
            stream.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with torch.no_grad():
        network.weight.fill_(2.0)
    with pytest.raises(KeyboardInterrupt):
        _run(evaluator, 2)
    monkeypatch.undo()
    # the previous best model is still there, whole; no temporary is left
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1.0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model_pet.pt.{dead_pid}.abcd1234.tmp"
    live = tmp_path / f".model_pet.pt.{os.getpid()}.efgh5678.tmp"
    stale_nifti = tmp_path / f".sub-01_pet.nii.gz.{dead_pid}.ijkl9012.nii.gz"
    user_file = tmp_path / "notes.tmp"
    for path in (stale, live, stale_nifti, user_file):
        path.write_bytes(b"x")
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == sorted([stale.name, stale_nifti.name])
    assert live.exists() and user_file.exists()
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(1, 1)})  # cleans on start
    assert live.exists()


@pytest.mark.parametrize("write", [lambda p: atomic_write_text(p, "{}"), lambda p: atomic_torch_save(p, {"a": 1})])
def test_atomic_writes_get_the_mode_of_a_plain_open(write, tmp_path):
    path = write(tmp_path / "file")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
