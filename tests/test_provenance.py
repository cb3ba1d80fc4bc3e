# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The generated documents name the commit and machine they were measured on (benchmarks/_common.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(folder: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    return subprocess.run(["git", *identity, *args], cwd=folder, capture_output=True, text=True, check=True).stdout


@needs_git
@pytest.mark.parametrize("edit, suffix", [(None, ""), ("tracked", " with uncommitted changes"), ("untracked", "")])
def test_source_revision_names_the_commit_and_uncommitted_changes(tmp_path, edit, suffix):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD").strip()
    if edit == "tracked":
        (tmp_path / "a.txt").write_text("two")
    elif edit == "untracked":  # run outputs beside the code do not make a measurement's code differ
        (tmp_path / "b.txt").write_text("new")
    assert _module("_common").source_revision(tmp_path) == f"commit {head}{suffix}"


def test_source_revision_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert _module("_common").source_revision(tmp_path) == "no git checkout"


def test_provenance_states_cores_gpu_and_torch():
    import torch

    text = _module("_common").provenance()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f"; {cores} CPU cores (" in text and f"torch {torch.__version__}" in text
    assert ("no GPU" in text) != torch.cuda.is_available()
    assert "bf16" in text


@pytest.mark.parametrize("script", ["recipe", "real_case", "paper_table", "tuning"])
def test_document_generators_state_the_provenance_not_a_fixed_machine(script):
    """Each generated document's head says where it was measured, never a hard-coded '2 CPU cores'."""
    source = (BENCHMARKS / f"{script}.py").read_text(encoding="utf-8")
    assert "on this machine ({provenance()})" in source and "2 CPU cores" not in source
    assert callable(_module(script).provenance)
