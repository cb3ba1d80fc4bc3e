# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Write a synthetic cohort: one NIfTI per subject and modality, latent variables as JSON, and a decathlon datalist."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from custom_nets.data import split_subjects
from custom_nets.datasets.phantom.anatomy import REGION_LABELS, load_template
from custom_nets.datasets.phantom.subject import MODALITIES, NOISE_FREE, sample_latents, synthesise_subject
from custom_nets.io import atomic_save_nifti, atomic_write_json

DATASET_NAME = "scgan-synthetic-brains"  # the datalist's "name": tells synthetic cohorts from users' data

__all__ = ["generate_dataset", "synthetic_datalist", "DATALIST_NAME"]

DATALIST_NAME = "datalist.json"
MODALITY_DESCRIPTIONS = {
    "t1w": "T1-weighted MRI, skull-stripped, arbitrary units",
    "flair": "T2-FLAIR MRI, skull-stripped, arbitrary units",
    "mask": "brain mask (uint8)",
    "pet": "amyloid PET (florbetapir) SUVR, whole-cerebellum reference, 8 mm FWHM",
    "fa": "DTI fractional anisotropy (0-1)",
    "md": "DTI mean diffusivity, 1e-3 mm^2/s",
    "labels": "tissue/region labels (int16), see label_names",
    **{key: f"{key.split('_')[0]} without its measurement noise (the oracle of the benchmarks)" for key in NOISE_FREE},
}


def generate_dataset(
    out_dir: str | Path,
    subjects: int = 12,
    seed: int = 0,
    resolution: int = 2,
    tracer: str = "florbetapir",
    progress: bool = True,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Path:
    """Generate ``subjects`` synthetic subjects into ``out_dir`` and return the datalist's path.

    Layout: ``out_dir/sub-XXXX/sub-XXXX_{t1w,flair,mask,pet,fa,md,labels}.nii.gz``, ``sub-XXXX_latents.json``, and
    ``out_dir/datalist.json`` (paths relative to ``out_dir``; lists ``training``, ``validation``, ``test``). Subject
    ``i`` depends only on ``(seed, i)``, so the same seed gives identical files and a larger cohort extends a smaller
    one. Every file is written atomically; the datalist last, so it never names a file that is not complete.
    ``fractions`` are the training/validation/test shares (``split_subjects``).
    """
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}.")
    out_dir = Path(out_dir)
    template = load_template(resolution)
    names = [f"sub-{index:04d}" for index in range(subjects)]
    split = split_subjects(names, seed, tuple(fractions))  # checks the fractions before any file is written
    entries = {}
    start = time.perf_counter()
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        latents = sample_latents(name, [seed, index], rng, tracer=tracer)
        volumes = synthesise_subject(template, latents, rng)
        entry = {"subject": name}
        for modality in MODALITIES + NOISE_FREE:
            relative = f"{name}/{name}_{modality}.nii.gz"
            atomic_save_nifti(out_dir / relative, volumes[modality], template.affine)
            entry[modality] = relative
        atomic_write_json(out_dir / name / f"{name}_latents.json", latents.to_dict())
        entry["latents"] = f"{name}/{name}_latents.json"
        entries[name] = entry
        if progress:
            elapsed = time.perf_counter() - start
            print(
                f"[{index + 1}/{subjects}] {name}: age {latents.age:.0f}, CL {latents.centiloid:.0f}, "
                f"WMH {latents.wmh_ml:.1f} ml ({elapsed / (index + 1):.2f} s/subject)",
                file=sys.stderr,
                flush=True,
            )
    datalist = {
        "name": DATASET_NAME,
        "description": "Synthetic multimodal brain subjects built on the MNI152 (ICBM 2009a) tissue templates",
        "reference": "custom_nets.datasets.phantom (contrast values and their sources: "
        "custom_nets/datasets/phantom/subject.py)",
        "seed": seed,
        "resolution_mm": resolution,
        "tracer": tracer,
        "modality": {"0": "T1w", "1": "FLAIR"},
        "keys": MODALITY_DESCRIPTIONS,
        "label_names": {str(code): name for name, code in REGION_LABELS.items()},
        **{part: [entries[name] for name in members] for part, members in split.items()},
    }
    return atomic_write_json(out_dir / DATALIST_NAME, datalist)


def synthetic_datalist(
    out_dir: str | Path, subjects: int, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> Path:
    """The datalist of the synthetic cohort in ``out_dir``, generated first (``generate_dataset``) when the folder
    has none; an existing cohort is reused as it is. Returns its absolute path."""
    datalist = Path(out_dir).absolute() / DATALIST_NAME
    if not datalist.is_file():
        print(f"generating {subjects} synthetic subjects (seed {seed}, split {tuple(fractions)}) in {out_dir}")
        generate_dataset(out_dir, subjects=subjects, seed=seed, progress=False, fractions=fractions)
    return datalist
