"""Shared fixtures: tiny phantom data and tiny network settings for the bundle's workflows."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_nets.datasets.phantom import MODALITIES, NOISE_FREE, generate_dataset

CONFIGS = Path(__file__).resolve().parent.parent / "bundle" / "configs"

TINY = {
    "network_def#channels": [8, 16, 16],
    "network_def#encoder_attention_levels": [2],
    "network_def#decoder_attention_levels": [1],
    "network_def#output_attention_stride": 4,
    "patch_size": [16, 16, 16],
    "sw_batch_size": 2,
}
TINY_TRAIN = {
    **TINY,
    "discriminator_def#channels": [8, 8, 16, 16],
    "epochs": 1,
    "epoch_length": 2,
    "batch_size": 1,
    "num_samples": 1,
    "progress_bar": False,
}


def error_chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and the errors it was raised from (MONAI re-raises config and transform errors as RuntimeError)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def error_messages(error: BaseException | None) -> str:
    """The messages of ``error_chain(error)``, one per line."""
    return "\n".join(str(e) for e in error_chain(error))


def run_training(data_dir: Path, root: Path, task: str | None = None, configs: Path = CONFIGS, **overrides):
    """Train ``train.json`` (+ ``tasks/<task>.json``) of ``configs`` with TINY_TRAIN and ``overrides`` into ``root``;
    returns the finished ``ConfigWorkflow``."""
    from monai.bundle import ConfigWorkflow

    files = [str(configs / "train.json")] + ([str(configs / "tasks" / f"{task}.json")] if task else [])
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=str(data_dir),
        **{**TINY_TRAIN, **overrides},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Five phantom subjects cropped to a central 32³ block (3 training, 1 validation, 1 test)."""
    out = tmp_path_factory.mktemp("bundle_data")
    generate_dataset(out, subjects=5, seed=11, progress=False)
    for folder in out.glob("sub-*"):
        for modality in MODALITIES + NOISE_FREE:
            path = folder / f"{folder.name}_{modality}.nii.gz"
            image = nib.load(str(path))
            start = np.array([34, 42, 32])
            block = np.asanyarray(image.dataobj)[34:66, 42:74, 32:64]
            affine = image.affine.copy()
            affine[:3, 3] = image.affine[:3, :3] @ start + image.affine[:3, 3]
            nib.save(nib.Nifti1Image(block, affine), str(path))
    return out
