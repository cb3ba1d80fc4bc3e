# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""One synthetic subject: latent variables, anatomy changes, contrasts, deformation, resolution and noise.

Literature values: T1w/FLAIR tissue ratios from BrainWeb and the inversion-recovery signal equation at 3 T; the
Centiloid anchors (Klunk et al., Alzheimers Dement 2015) and tracer conversions; FA by tract from young-adult DTI
series; MD from Helenius et al. (Radiology 2002) and free water at 37 °C. Each subject draws its own contrast values
from the quoted ranges, so no two subjects share a look-up table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from custom_nets.datasets.phantom.anatomy import REGION_LABELS, Template
from custom_nets.datasets.phantom.deform import random_displacement, sampling_grid, upsample_smooth, warp

__all__ = ["Latents", "sample_latents", "synthesise_subject", "target_suvr", "MODALITIES", "NOISE_FREE", "PET_FWHM_MM"]

MODALITIES = ("t1w", "flair", "mask", "pet", "fa", "md", "labels")
# Each target without its measurement noise (the same resolution and scaling): the best any synthesis can do, the
# "oracle" row of the benchmarks. Written beside the targets, keyed "<target>_noisefree".
NOISE_FREE = ("pet_noisefree", "fa_noisefree", "md_noisefree")
PET_FWHM_MM = 8.0  # ADNI's "uniform resolution" PET product

# Centiloid anchors of PiB with a whole-cerebellum reference (Klunk et al. 2015) and florbetapir's conversion
# (amypet's anchor tables): SUVR_PiB = 1.0129 + 0.010670 CL; SUVR_FBP = 0.5232 SUVR_PiB + 0.5129.
TRACERS = {"florbetapir": (0.5232, 0.5129), "florbetaben": (0.6079, 0.3952), "pib": (1.0, 0.0)}


def target_suvr(centiloid: float, tracer: str = "florbetapir") -> float:
    """Composite cortical SUVR (whole-cerebellum reference) given by a tracer's Centiloid equation at ``centiloid``."""
    slope, intercept = TRACERS[tracer]
    return slope * (1.0129 + 0.010670 * centiloid) + intercept


@dataclass
class Latents:
    """A subject's hidden variables (all saved to its JSON)."""

    subject: str
    seed: list[int]
    age: float
    amyloid_positive: bool
    centiloid: float
    tracer: str
    atrophy: float  # fraction of cortical grey matter turned into CSF where the atrophy weight is 1
    wmh_ml: float  # white-matter hyperintensity volume
    contrast: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    while True:
        value = rng.normal(mean, sd)
        if low <= value <= high:
            return float(value)


def sample_latents(subject: str, seed: list[int], rng: np.random.Generator, tracer: str = "florbetapir") -> Latents:
    """Age ~ U(55, 90); amyloid positivity more likely with age; Centiloid, atrophy and lesion load follow both."""
    age = float(rng.uniform(55, 90))
    positive = bool(rng.random() < np.clip(0.15 + 0.012 * (age - 55), 0, 0.7))
    centiloid = _truncated_normal(rng, 70, 30, 20, 150) if positive else _truncated_normal(rng, 0, 8, -15, 20)
    atrophy = float(np.clip(0.0025 * (age - 55) + 0.0005 * max(centiloid, 0) + rng.normal(0, 0.01), 0, 0.18))
    wmh_ml = float(2.0 * np.exp(0.06 * (age - 55)) * (1 + 0.3 * positive) * rng.lognormal(0, 0.5))
    contrast = {
        # T1w and FLAIR relative to white matter = 1 (data.md §5.4)
        "t1_gm": rng.uniform(0.60, 0.75),
        "t1_csf": rng.uniform(0.20, 0.36),
        "t1_wmh": rng.uniform(0.75, 0.90),
        "flair_gm": rng.uniform(1.12, 1.35),
        "flair_csf": rng.uniform(0.03, 0.20),
        "flair_wmh": rng.uniform(1.6, 2.5),
        "mri_noise": rng.uniform(0.01, 0.04),
        "mri_bias": rng.uniform(0.10, 0.20),
        "mri_scale": rng.uniform(500, 1500),
        # amyloid PET "true" concentrations before blurring, cerebellar grey matter = 1 (data.md §5.5)
        "pet_wm": rng.uniform(1.4, 2.0),
        "pet_csf": rng.uniform(0.2, 0.4),
        "pet_noise_cov": rng.uniform(0.03, 0.08),
        # FA and MD (data.md §5.6); MD in 1e-3 mm²/s
        "fa_wm": rng.uniform(0.40, 0.50),
        "fa_noise": rng.uniform(0.02, 0.04),
        "md_wm": rng.uniform(0.66, 0.74),
        "md_gm": rng.uniform(0.85, 0.90),
        "md_csf": rng.uniform(2.9, 3.2),
    }
    contrast = {k: float(v) for k, v in contrast.items()}
    return Latents(subject, list(seed), age, positive, centiloid, tracer, atrophy, wmh_ml, contrast)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, coarse: int = 4) -> np.ndarray:
    """A smooth random field with values of order ±1 (cubic upsampling of a coarse Gaussian grid)."""
    return upsample_smooth(rng.normal(0, 1, size=(1,) + (coarse,) * len(shape)), shape)[0]


def _lesions(template: Template, wm: np.ndarray, latents: Latents, rng: np.random.Generator) -> np.ndarray:
    """Fraction of each voxel's white matter that is lesion: periventricular caps and bands plus punctate blobs."""
    voxel_ml = template.voxel_mm**3 / 1000
    shape = template.shape
    modulation = np.clip(1 + 0.5 * _smooth_field(shape, rng, coarse=6), 0.2, 2.0)
    periventricular = template.ventricle_proximity**2 * modulation
    punctate = np.zeros(shape, dtype=np.float32)
    deep_wm = np.flatnonzero(((wm > 0.6) & (template.depth_mm > 10)).ravel())
    for centre in rng.choice(deep_wm, size=int(rng.poisson(1 + latents.wmh_ml / 2)), replace=False):
        punctate.ravel()[centre] = rng.uniform(0.5, 1.0)
    punctate = np.clip(ndimage.gaussian_filter(punctate, 2.0 / template.voxel_mm) * 30, 0, 1)
    raw = periventricular * 1.0 + punctate * 0.3
    # Scale the pattern so that the lesion volume matches the subject's load (bisection on the gain).
    low, high = 0.0, 50.0
    for _ in range(25):
        gain = (low + high) / 2
        volume = float((np.clip(gain * raw, 0, 1) * wm).sum()) * voxel_ml
        low, high = (gain, high) if volume < latents.wmh_ml else (low, gain)
    return np.clip(low * raw, 0, 1).astype(np.float32)


def _regional(labels: np.ndarray, values: dict[str, float], default: float) -> np.ndarray:
    out = np.full(labels.shape, default, dtype=np.float32)
    for name, value in values.items():
        out[labels == REGION_LABELS[name]] = value
    return out


def synthesise_subject(template: Template, latents: Latents, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Render every modality of one subject on the template grid (float32 arrays, ``MODALITIES`` and ``NOISE_FREE``
    keys).

    The order follows the physics: anatomy changes (atrophy, ventricles, lesions) and "true" tissue maps in template
    space, one random deformation applied to all of them, then each scanner's resolution, bias and noise.
    """
    c = latents.contrast
    labels = template.labels
    voxel = template.voxel_mm
    cerebral_gm = ~template.region("cerebellum", "brainstem")

    # Anatomy: cortical atrophy (GM -> CSF), ventricular enlargement (periventricular WM -> CSF), lesions in WM.
    gm_loss = template.gm * np.clip(latents.atrophy * template.atrophy_weight * cerebral_gm, 0, 0.5)
    wm_loss = template.wm * np.clip(2.5 * latents.atrophy * template.ventricle_proximity**2, 0, 0.8)
    gm = template.gm - gm_loss
    csf = template.csf + gm_loss + wm_loss
    wm_all = template.wm - wm_loss
    lesion_fraction = _lesions(template, wm_all, latents, rng)
    lesion = wm_all * lesion_fraction
    wm = wm_all - lesion

    deep_gm = template.region("thalamus", "striatum")
    t1 = (
        gm * c["t1_gm"] * np.where(deep_gm, np.float32(1.08), np.float32(1.0))
        + wm
        + csf * c["t1_csf"]
        + lesion * c["t1_wmh"]
    )
    flair = gm * c["flair_gm"] + wm + csf * c["flair_csf"] + lesion * c["flair_wmh"]

    # Amyloid PET: nonspecific uptake B plus specific cortical (and, at high load, striatal) binding S, scaled later.
    brainstem = template.region("brainstem")
    pet_base = gm * np.where(brainstem, c["pet_wm"], 1.0) + (wm + 0.9 * lesion) * c["pet_wm"] + csf * c["pet_csf"]
    striatal = 0.6 * np.clip((latents.centiloid - 80) / 70, 0, 1)
    pet_specific = gm * (template.amyloid_weight + striatal * template.region("striatum"))

    # FA: tract values (young adult) lowered with age, in lesions, and in splenium/cingulum with amyloid load.
    wm_fa = _regional(
        labels,
        {
            "cc_genu": 0.70,
            "cc_body": 0.65,
            "cc_splenium": 0.75,
            "internal_capsule": 0.66,
            "corticospinal": 0.65,
            "cingulum": 0.55,
            "brainstem": 0.55,
            "cerebellum": 0.40,
        },
        c["fa_wm"],
    )
    wm_fa = ndimage.gaussian_filter(wm_fa, 1.0 / voxel) * (1 - 0.003 * max(latents.age - 40, 0))
    amyloid_effect = 0.07 * np.clip(latents.centiloid / 100, 0, 1.5)
    wm_fa = wm_fa * np.where(template.region("cc_splenium", "cingulum"), 1 - amyloid_effect, 1.0)
    gm_fa = _regional(labels, {"thalamus": 0.30, "striatum": 0.22, "brainstem": 0.45}, 0.15)
    fa = wm * wm_fa + lesion * wm_fa * 0.7 + gm * gm_fa + csf * 0.05

    # MD: tissue means, ageing, lesions, and medial temporal increase with amyloid load (partial volume gives the rim).
    ageing = 1 + 0.004 * max(latents.age - 40, 0)
    gm_md = _regional(labels, {"thalamus": 0.75, "striatum": 0.75}, c["md_gm"])
    gm_md = gm_md * np.where(template.region("medial_temporal"), 1 + 0.15 * np.clip(latents.centiloid / 100, 0, 1), 1.0)
    md = (wm * c["md_wm"] + lesion * c["md_wm"] * 1.3 + gm * gm_md) * ageing + csf * c["md_csf"]

    reference = template.region("cerebellum").astype(np.float32)
    composite = template.region("cortex_amyloid_prone").astype(np.float32)
    stack = np.stack(
        [t1, flair, pet_base, pet_specific, fa, md, template.brain, reference, composite], dtype=np.float32
    )
    grid = sampling_grid(random_displacement(template.shape, voxel, rng))
    t1, flair, pet_base, pet_specific, fa, md, brain, reference, composite = warp(stack, grid)
    mask = brain > 0.5
    labels = np.where(lesion > 0.7 * template.brain, np.int16(REGION_LABELS["wmh"]), labels)
    tissue_labels = warp(labels[None].astype(np.float32), grid, mode="nearest")[0]
    tissue_labels = np.where(mask, tissue_labels, 0)

    def mri(image: np.ndarray) -> np.ndarray:
        bias = np.exp(c["mri_bias"] * np.tanh(_smooth_field(image.shape, rng, coarse=3)))
        blurred = ndimage.gaussian_filter(image, 0.25)  # ~0.5 mm sigma at 2 mm voxels
        noisy = np.hypot(
            blurred + rng.normal(0, c["mri_noise"], image.shape), rng.normal(0, c["mri_noise"], image.shape)
        )
        return (noisy * bias * c["mri_scale"] * mask).astype(np.float32)

    # PET at 8 mm FWHM; the specific-binding gain k solves composite SUVR = the Centiloid equation's value exactly.
    sigma = PET_FWHM_MM / 2.3548 / voxel
    pet_base = ndimage.gaussian_filter(pet_base, sigma)
    pet_specific = ndimage.gaussian_filter(pet_specific, sigma)
    ref, ctx = reference > 0.5, composite > 0.5
    goal = target_suvr(latents.centiloid, latents.tracer)
    b_ctx, s_ctx, b_ref, s_ref = (
        pet_base[ctx].mean(),
        pet_specific[ctx].mean(),
        pet_base[ref].mean(),
        pet_specific[ref].mean(),
    )
    gain = max((goal * b_ref - b_ctx) / (s_ctx - goal * s_ref), -0.4)
    pet = pet_base + gain * pet_specific
    pet_noise = ndimage.gaussian_filter(rng.normal(0, 1, pet.shape), 1.0)
    pet_noisefree = pet
    pet = pet * (1 + c["pet_noise_cov"] * pet_noise / pet_noise.std())
    pet_noisefree = (pet_noisefree / pet[ref].mean() * mask).astype(np.float32)  # the same SUVR normalisation
    pet = (pet / pet[ref].mean() * mask).astype(np.float32)

    fa_sigma = 2.25 / 2.3548 / voxel
    fa_noisefree = ndimage.gaussian_filter(fa, fa_sigma) + 0.03
    fa = fa_noisefree + rng.normal(0, c["fa_noise"], fa.shape)
    fa, fa_noisefree = ((np.clip(v, 0, 1) * mask).astype(np.float32) for v in (fa, fa_noisefree))
    md_noisefree = ndimage.gaussian_filter(md, fa_sigma)
    md = md_noisefree + rng.normal(0, 0.03, md.shape)
    md, md_noisefree = ((np.clip(v, 0, 4) * mask).astype(np.float32) for v in (md, md_noisefree))

    latents.measured = {
        "composite_suvr_target": float(goal),
        "composite_suvr": float(pet[ctx].mean() / pet[ref].mean()),
        "specific_gain": float(gain),
        "brain_ml": float(mask.sum() * voxel**3 / 1000),
    }
    return {
        "t1w": mri(t1),
        "flair": mri(flair),
        "mask": mask.astype(np.uint8),
        "pet": pet,
        "fa": fa,
        "md": md,
        "labels": tissue_labels.astype(np.int16),
        "pet_noisefree": pet_noisefree,
        "fa_noisefree": fa_noisefree,
        "md_noisefree": md_noisefree,
    }
