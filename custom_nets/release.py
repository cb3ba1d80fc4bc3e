# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Release one task as a self-contained MONAI bundle for the Model Zoo and MONAI Label.

    python -m custom_nets.release --bundle bundle --task pet --out dist
    python -m custom_nets.release --bundle bundle --task fa --out dist --weights runs/fa/models/model_fa.pt \\
        --url-base https://github.com/ORG/REPO/releases/download/v0.3.0

writes ``dist/scgan_<task>/``:

- ``configs/``: ``train.json`` and ``inference.json`` with the task's overlay merged in (so ``inference.json`` alone
  serves the task, as MONAI Label reads it), ``evaluate.json``, ``multi_gpu_train.json``, ``logging.conf``,
  ``tasks/<task>.json`` and ``metadata.json`` with the task's name, channels, units and value range;
- ``models/model.pt``: the generator's flat state dict with spectral norm folded into the weights (the form
  ``network_def`` of ``inference.json`` builds, ``fold_spectral_norm``), CPU tensors; ``models/model.ts``: that
  network exported by MONAI's ``ckpt_export`` with ``torch.jit.script`` (the Model Zoo's own check);
  ``models/prior_<task>.json``: the per-voxel prior the inputs carry;
- ``custom_nets/``: this package's source, vendored, because the Model Zoo and MONAI Label put only the bundle folder
  on ``sys.path``; ``docs/`` and ``LICENSE``; ``large_files.yml`` with the weights' URLs and SHA-256 when
  ``--url-base`` is given (upload ``models/*`` there: the zoo caps committed files at 25 MB).

Then runs the Model Zoo's offline checks on the result (``verify_release``) and prints them. Resume checkpoints
(``resume_<task>.pt``) are never released.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from custom_nets.config_check import parse_overrides
from custom_nets.io import atomic_write_json, atomic_write_text, read_checkpoint, read_json, sha256_of

__all__ = ["release_bundle", "verify_release", "write_large_files", "ZOO_CHECKS"]

WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx")
# configs that are overlays on train.json (zoo convention): copied as they are
OVERLAY_CONFIGS = ("evaluate.json", "multi_gpu_train.json")
TASK_MODALITY = {"pet": "PT"}  # DICOM modality of the output (the others are MR maps)
CHANNEL_NAMES = {"t1w": "T1w", "flair": "FLAIR", "t2w": "T2w", "pd": "PD", "fa": "DTI FA", "md": "DTI MD"}
ZOO_CHECKS = ("directory", "metadata", "net_in_out", "torchscript", "torchscript_trace", "train", "infer", "eval")


def _merged(config: dict, overlay: dict, name: str) -> dict:
    """``config`` with the task overlay's top-level ids set (overlays only set ids the configs define)."""
    unknown = sorted(set(overlay) - set(config))
    if unknown:
        raise ValueError(f"task overlay sets ids that {name} does not define: {unknown}.")
    return {**config, **overlay}


def _metadata(metadata: dict, task: str, overlay: dict, version: str | None) -> dict:
    """The bundle's metadata for one task: name, task, channels, modality, units and value range of the output."""
    meta = json.loads(json.dumps(metadata))  # a deep copy
    target, unit = overlay["target_key"], overlay["target_unit"]
    low, high = overlay["target_min"], overlay["target_max"]
    inputs = [CHANNEL_NAMES.get(key, key) for key in overlay["input_keys"]]
    meta["name"] = f"SC-GAN {' + '.join(inputs)} to {CHANNEL_NAMES.get(target, target.upper())} synthesis ({task})"
    meta["task"] = (
        f"Synthesis of {target.upper()} ({unit}, {low:g} to {high:g}) from {' + '.join(inputs)} brain MRI"
        + (f", {overlay['degrade_factor']}x super-resolution" if overlay.get("degrade_factor", 1) > 1 else "")
    )
    if version:
        meta["version"] = version
        meta["changelog"] = {version: f"single-task release for '{task}'", **meta["changelog"]}
    image = meta["network_data_format"]["inputs"]["image"]
    prior = image["channel_def"][str(len(image["channel_def"]) - 1)]
    image["channel_def"] = {str(i): name for i, name in enumerate(inputs)}
    image["channel_def"][str(len(inputs))] = prior
    image["num_channels"] = len(inputs) + 1
    meta["image_classes"] = (
        f"{len(inputs) + 1} channels: {', '.join(inputs)}, each scaled to [0, 1] by its 0.5-99.5 percentiles inside"
        f" the brain mask, and the per-voxel prior that the bundle computes from them (channel {len(inputs)})"
    )
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["modality"] = TASK_MODALITY.get(task, "MR")
    pred["channel_def"] = {"0": f"synthesised {target.upper()} scaled to [0, 1] ({low:g} to {high:g} {unit})"}
    return meta


def _vendor_package(out: Path) -> None:
    """Copy this package's Python source (no caches) into ``out/custom_nets``."""
    source = Path(__file__).resolve().parent
    shutil.copytree(source, out / "custom_nets", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _deployed_weights(out: Path, weights: Path) -> None:
    """Load ``weights`` (folded or with spectral-norm parametrisations) into the released ``network_def`` strictly
    and save its flat state dict as ``models/model.pt``."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    parser["bundle_root"] = str(out)
    network = parser.get_parsed_content("network_def")
    state = read_checkpoint(weights)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"--weights {weights}: does not fit the task's network_def ({str(error).splitlines()[0]}); release the "
            "weights with the configs they were trained with."
        ) from error
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, out / "models" / "model.pt")


def release_bundle(
    bundle: str | Path,
    task: str,
    out: str | Path,
    weights: str | Path | None = None,
    prior: str | Path | None = None,
    url_base: str | None = None,
    version: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the self-contained bundle of ``task`` to ``out/scgan_<task>`` (see the module docstring); returns it.

    Args:
        bundle: the development bundle (``configs/``, ``docs/``, ``LICENSE``).
        task: a task overlay name in ``bundle/configs/tasks``.
        out: parent folder of the release.
        weights: trained generator weights (default ``bundle/models/model_<task>.pt``).
        prior: the per-voxel prior fitted with them (default ``prior_<task>.json`` beside ``weights``).
        url_base: where ``models/*`` will be downloadable; writes ``large_files.yml``.
        version: the released bundle's version (default: the development bundle's).
        overrides: ``{id: value}`` written into ``train.json`` and ``inference.json`` (MONAI ids, ``#`` for nested
            ones, e.g. ``{"network_def#channels": [16, 32, 64]}``): the settings the weights were trained with.

    Raises:
        FileNotFoundError: no such task, weights or prior (the message names the file).
        ValueError: weights that do not fit the task's network, or a ``url_base`` that is not http(s).
    """
    from monai.bundle import ConfigParser

    bundle, out = Path(bundle), Path(out)
    configs = bundle / "configs"
    overlay_file = configs / "tasks" / f"{task}.json"
    if not overlay_file.is_file():
        known = sorted(p.stem for p in (configs / "tasks").glob("*.json"))
        raise FileNotFoundError(f"--task {task!r}: no {overlay_file}; known tasks: {known}.")
    overlay = {
        **read_json(overlay_file, "task overlay", "fix the JSON"),
        "ckpt_name": "model.pt",
    }  # MONAI Label and the zoo read models/model.pt
    weights = Path(weights) if weights else bundle / "models" / f"model_{task}.pt"
    prior = Path(prior) if prior else weights.parent / f"prior_{task}.json"
    for name, path in (("--weights", weights), ("--prior", prior)):
        if not path.is_file():
            raise FileNotFoundError(f"{name} {path}: not found (train the task first, or give the file).")
    if url_base is not None and not url_base.startswith(("https://", "http://")):
        raise ValueError(f"--url-base must be an http(s) URL, got {url_base!r}.")

    target = out / f"scgan_{task}"
    staging = Path(tempfile.mkdtemp(prefix=f".scgan_{task}.", dir=out if out.is_dir() else None))
    try:
        (staging / "configs" / "tasks").mkdir(parents=True)
        (staging / "models").mkdir()
        for name in ("train.json", "inference.json"):
            merged = _merged(read_json(configs / name, "config", "fix the JSON"), overlay, name)
            if overrides:
                parser = ConfigParser(merged)
                parser.update(overrides)
                merged = parser.config
            atomic_write_text(staging / "configs" / name, json.dumps(merged, indent=4, ensure_ascii=True) + "\n")
        for name in (*OVERLAY_CONFIGS, "logging.conf"):
            shutil.copy2(configs / name, staging / "configs" / name)
        atomic_write_json(staging / "configs" / "tasks" / f"{task}.json", overlay)
        metadata = _metadata(read_json(configs / "metadata.json", "metadata", "fix the JSON"), task, overlay, version)
        atomic_write_text(staging / "configs" / "metadata.json", json.dumps(metadata, indent=4) + "\n")
        shutil.copytree(bundle / "docs", staging / "docs")
        shutil.copy2(bundle / "LICENSE", staging / "LICENSE")
        _vendor_package(staging)
        shutil.copy2(prior, staging / "models" / f"prior_{task}.json")
        _deployed_weights(staging, weights)
        _export_torchscript(staging)
        if url_base is not None:
            write_large_files(staging, url_base)
        out.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_torchscript(root: Path) -> None:
    """``models/model.ts`` by MONAI's ``ckpt_export`` with scripting, as the Model Zoo's CI runs it."""
    from monai.bundle import ckpt_export

    ckpt_export(
        net_id="network_def",
        filepath=str(root / "models" / "model.ts"),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        bundle_root=str(root),
    )


def write_large_files(bundle: str | Path, url_base: str) -> Path:
    """Write ``bundle/large_files.yml`` for every weight file in ``bundle/models``, as the zoo's
    ``download_large_files`` reads it; returns its path.

    Raises:
        ValueError: ``url_base`` is not an http(s) URL.
        FileNotFoundError: ``bundle/models`` holds no weight file.
    """
    bundle = Path(bundle)
    if not url_base.startswith(("https://", "http://")):
        raise ValueError(f"--url-base must be an http(s) URL, got {url_base!r}.")
    weights = sorted(p for p in (bundle / "models").glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise FileNotFoundError(f"{bundle / 'models'}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to release.")
    entries = [
        {
            "path": f"models/{p.name}",
            "url": f"{url_base.rstrip('/')}/{p.name}",
            "hash_val": sha256_of(p),
            "hash_type": "sha256",
        }
        for p in weights
    ]
    # JSON is valid YAML: no YAML writer needed, and every YAML reader (the zoo's included) parses it
    lines = ["large_files:"] + [f"  - {json.dumps(entry)}" for entry in entries]
    return atomic_write_text(bundle / "large_files.yml", "\n".join(lines) + "\n")


# The checks run in a fresh interpreter with only the released bundle on sys.path before site-packages, as the
# zoo's CI and MONAI Label run a bundle: its vendored custom_nets is the one imported.
_CHECK_SCRIPT = r"""
import json, os, sys, tempfile
root = sys.argv[1]
sys.path.insert(0, root)
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

results = {}
def check(name, function):
    try:
        function()
        results[name] = "passed"
    except LookupError as error:
        results[name] = str(error)
    except Exception as error:
        results[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"

def directory():
    for relative in ("LICENSE", "configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert os.path.isfile(os.path.join(root, relative)), f"missing {relative}"
    import custom_nets
    vendored = os.path.dirname(os.path.abspath(custom_nets.__file__))
    assert vendored == os.path.join(root, "custom_nets"), f"custom_nets imported from {vendored}"

def metadata():
    meta = json.load(open(os.path.join(root, "configs", "metadata.json"), encoding="utf-8"))
    mandatory = ["version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                 "description", "authors", "copyright", "network_data_format", "changelog", "schema", "name"]
    missing = [key for key in mandatory if key not in meta]
    assert not missing, f"missing keys {missing}"
    assert meta["version"] in meta["changelog"], "version not in changelog"

configs = {name: os.path.join(root, "configs", name) for name in ("train.json", "inference.json", "evaluate.json")}
meta_file = os.path.join(root, "configs", "metadata.json")

def net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=configs["inference.json"],
                      bundle_root=root, n=1, device="cpu")

def torchscript():
    path = os.path.join(root, "models", "verify_model.ts")
    try:
        ckpt_export(net_id="network_def", filepath=path, ckpt_file=os.path.join(root, "models", "model.pt"),
                    meta_file=meta_file, config_file=configs["inference.json"], bundle_root=root)
        scripted = torch.jit.load(path)
    finally:
        if os.path.exists(path):
            os.remove(path)
    shipped = torch.jit.load(os.path.join(root, "models", "model.ts"))
    channels = json.load(open(meta_file, encoding="utf-8"))["network_data_format"]["inputs"]["image"]["num_channels"]
    x = torch.rand(1, channels, 64, 64, 64)
    torch.testing.assert_close(scripted(x), shipped(x))

def torchscript_trace():
    path = os.path.join(root, "models", "verify_model_traced.ts")
    channels = json.load(open(meta_file, encoding="utf-8"))["network_data_format"]["inputs"]["image"]["num_channels"]
    try:
        ckpt_export(net_id="network_def", filepath=path, ckpt_file=os.path.join(root, "models", "model.pt"),
                    meta_file=meta_file, config_file=configs["inference.json"], bundle_root=root, use_trace=True,
                    input_shape=[1, channels, 64, 64, 64])
        traced = torch.jit.load(path)
    finally:
        if os.path.exists(path):
            os.remove(path)
    shipped = torch.jit.load(os.path.join(root, "models", "model.ts"))
    x = torch.rand(1, channels, 64, 64, 64)
    torch.testing.assert_close(traced(x), shipped(x))

def workflow(kind, files):
    def run():
        if not os.environ.get("SCGAN_DATASET_DIR"):
            raise LookupError("skipped: needs a dataset (--data)")
        # training and evaluation fit a prior and open TensorBoard logs when built: in scratch folders, so that the
        # checks neither replace the shipped prior nor ship their own event files
        scratch = {} if kind == "infer" else {"ckpt_dir": tempfile.mkdtemp(), "log_dir": tempfile.mkdtemp()}
        flow = ConfigWorkflow(config_file=files, meta_file=meta_file, workflow_type=kind, bundle_root=root,
                              dataset_dir=os.environ["SCGAN_DATASET_DIR"], output_dir=tempfile.mkdtemp(), **scratch)
        flow.initialize()
        missing = flow.check_properties()
        assert not missing, f"missing properties {missing}"
    return run

check("directory", directory)
check("metadata", metadata)
check("net_in_out", net_in_out)
check("torchscript", torchscript)
check("torchscript_trace", torchscript_trace)
check("train", workflow("train", [configs["train.json"]]))
check("infer", workflow("infer", [configs["inference.json"]]))
check("eval", workflow("eval", [configs["train.json"], configs["evaluate.json"]]))
print("RESULTS " + json.dumps(results))
"""


def verify_release(root: str | Path, dataset_dir: str | Path | None = None) -> dict[str, str]:
    """Run the Model Zoo's offline checks on a released bundle in a fresh interpreter: required files and the
    vendored package, metadata keys and changelog, ``verify_net_in_out``, TorchScript export by scripting
    (``ckpt_export``, as the zoo runs it) and by tracing, each against the shipped ``model.ts``, and
    ``check_properties`` of the train, infer and eval (``train.json`` + ``evaluate.json``) workflows on the datalist
    of ``dataset_dir`` (these three are skipped without one: the workflows build their datasets).
    Returns ``{check: "passed" | "failed: ..." | "skipped: ..."}``."""
    import os

    env = {**os.environ, "PYTHONPATH": "", "SCGAN_DATASET_DIR": str(Path(dataset_dir).resolve()) if dataset_dir else ""}
    result = subprocess.run(
        [sys.executable, "-c", _CHECK_SCRIPT, str(Path(root).resolve())],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        env=env,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    if not lines:
        raise RuntimeError(f"the checks of {root} did not run: {result.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULTS "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.release", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the development bundle")
    parser.add_argument("--task", required=True, help="pet, fa, md or sr (bundle/configs/tasks)")
    parser.add_argument("--out", default="dist", help="parent folder of the released bundle")
    parser.add_argument("--weights", help="generator weights (default BUNDLE/models/model_<task>.pt)")
    parser.add_argument("--prior", help="per-voxel prior (default prior_<task>.json beside the weights)")
    parser.add_argument("--url-base", help="where models/* will be downloadable (writes large_files.yml)")
    parser.add_argument("--version", help="version of the released bundle (default: the development bundle's)")
    parser.add_argument(
        "--data", help="a dataset folder with datalist.json, for the workflow checks (e.g. data/synthetic)"
    )
    parser.add_argument(
        "--override", action="append", default=[], metavar="ID=JSON", help="a setting the weights were trained with"
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.override)
        root = release_bundle(
            args.bundle, args.task, args.out, args.weights, args.prior, args.url_base, args.version, overrides
        )
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    results = verify_release(root, args.data)
    width = max(len(name) for name in results)
    print(f"released: {root}\n" + "\n".join(f"  {name:<{width}}  {state}" for name, state in results.items()))
    print(json.dumps({"release": str(root), "task": args.task, "checks": results}))
    return 1 if any(state.startswith("failed") for state in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
