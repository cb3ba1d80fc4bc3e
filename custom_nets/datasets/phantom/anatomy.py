# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Template anatomy for the synthetic subjects: real MNI152 tissue maps plus coarse regions in MNI coordinates.

The tissue maps are the ICBM 2009a nonlinear-symmetric grey- and white-matter templates that ship inside nilearn's
wheel (loaded offline). CSF is the brain mask minus GM and WM; the three are sharpened towards single-subject
boundaries. Regions (cerebellum, brainstem, deep grey matter, medial temporal lobe, ventricles, corpus callosum,
internal capsule, corticospinal tract, cingulum, amyloid-prone cortex) are
boxes in MNI millimetres intersected with the tissue maps: coarse, but in the right places for contrast synthesis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Template", "load_template", "REGION_LABELS"]

# Region codes of the saved label map.
REGION_LABELS = {
    "background": 0,
    "cortex_amyloid_prone": 1,
    "cortex_other": 2,
    "cerebellum": 3,
    "brainstem": 4,
    "thalamus": 5,
    "striatum": 6,
    "medial_temporal": 7,
    "ventricles": 8,
    "csf_other": 9,
    "cc_genu": 10,
    "cc_body": 11,
    "cc_splenium": 12,
    "internal_capsule": 13,
    "corticospinal": 14,
    "cingulum": 15,
    "white_matter_other": 16,
    "wmh": 17,  # white-matter hyperintensity, set per subject
}


@dataclass(frozen=True)
class Template:
    """Tissue probabilities and region maps on one MNI grid (all arrays share ``shape``; float32 unless noted).

    Attributes:
        affine: voxel-to-MNI-mm affine (RAS).
        gm, wm, csf: tissue probabilities summing to 1 inside the brain, 0 outside.
        brain: brain mask as float (0/1).
        labels: int16 region codes (``REGION_LABELS``) by dominant tissue and location.
        amyloid_weight: smooth 0–1 weight of amyloid-prone cortex (1 in the Centiloid-like composite regions).
        atrophy_weight: smooth 0.5–1 weight of atrophy (highest in temporal, parietal and medial temporal cortex).
        depth_mm: distance to the outside of the brain in mm.
        ventricle_proximity: smooth 0–1 map, 1 at the ventricles, decaying over ~8 mm into the white matter.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    amyloid_weight: np.ndarray
    atrophy_weight: np.ndarray
    depth_mm: np.ndarray
    ventricle_proximity: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))

    def region(self, *names: str) -> np.ndarray:
        """Boolean mask of the union of the named regions."""
        return np.isin(self.labels, [REGION_LABELS[name] for name in names])


def _mni_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    return xyz[..., 0], xyz[..., 1], xyz[..., 2]


def _box(x, y, z, x_abs=None, y_range=None, z_range=None) -> np.ndarray:
    """Voxels with |x| in ``x_abs``, y in ``y_range`` and z in ``z_range`` (each a (low, high) pair or None)."""
    inside = np.ones(x.shape, dtype=bool)
    for values, bounds in ((np.abs(x), x_abs), (y, y_range), (z, z_range)):
        if bounds is not None:
            inside &= (values >= bounds[0]) & (values <= bounds[1])
    return inside


@functools.lru_cache(maxsize=4)
def load_template(resolution: int = 2) -> Template:
    """Build the template at ``resolution`` mm (1 or 2) from nilearn's packaged MNI152 maps; cached per process."""
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), got {resolution}.")
    from nilearn import datasets  # imported here: nilearn is slow to import and only the phantom needs it

    gm = datasets.load_mni152_gm_template(resolution=resolution)
    affine = gm.affine.copy()
    gm = np.clip(gm.get_fdata(dtype=np.float32), 0, 1)
    wm = np.clip(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(dtype=np.float32), 0, 1)
    brain = (datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(dtype=np.float32) > 0.5).astype(
        np.float32
    )
    # The brain mask misses a little tissue at its edge; keep every voxel that is mostly tissue.
    brain = np.maximum(brain, ((gm + wm) > 0.5).astype(np.float32))
    gm, wm = gm * brain, wm * brain
    tissue = gm + wm
    scale = np.where(tissue > 1, 1 / np.maximum(tissue, 1e-6), 1).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(brain - gm - wm, 0, 1)
    # A population average has blurred boundaries (13 % "GM" inside the ventricles); squaring and renormalising the
    # probabilities gives the sharper tissue boundaries of a single subject.
    sharpened = np.stack([csf, gm, wm]) ** 2
    csf, gm, wm = sharpened / np.maximum(sharpened.sum(axis=0), 1e-6) * brain
    voxel = float(abs(affine[0, 0]))
    depth = ndimage.distance_transform_edt(brain > 0).astype(np.float32) * voxel
    x, y, z = _mni_coordinates(gm.shape, affine)

    inside = brain > 0
    dominant = np.argmax(np.stack([csf, gm, wm]), axis=0)  # 0 CSF, 1 GM, 2 WM
    is_csf, is_gm, is_wm = inside & (dominant == 0), inside & (dominant == 1), inside & (dominant == 2)

    cerebellum = inside & ((y < -40) & (z < -16) | (y < -58) & (z < -8) & (np.abs(x) < 28))
    brainstem = inside & _box(x, y, z, (0, 13), (-44, -12), (-62, -6))
    cerebellum &= ~brainstem
    deep = inside & _box(x, y, z, (0, 32), (-36, 28), (-12, 22)) & (depth > 18)
    thalamus = deep & _box(x, y, z, (0, 22), (-36, -4), (-6, 20))
    striatum = deep & ~thalamus & (y > -12)
    medial_temporal = inside & _box(x, y, z, (16, 38), (-42, -2), (-30, -6))
    ventricles = is_csf & _box(x, y, z, (0, 32), (-48, 36), (-8, 34)) & (depth > 16)

    labels = np.zeros(gm.shape, dtype=np.int16)
    codes = REGION_LABELS
    labels[is_gm] = codes["cortex_other"]
    labels[is_wm] = codes["white_matter_other"]
    labels[is_csf] = codes["csf_other"]
    labels[is_csf & ventricles] = codes["ventricles"]
    labels[(is_gm | is_wm) & cerebellum] = codes["cerebellum"]
    labels[(is_gm | is_wm) & brainstem] = codes["brainstem"]
    labels[is_gm & thalamus] = codes["thalamus"]
    labels[is_gm & striatum] = codes["striatum"]
    labels[is_gm & medial_temporal] = codes["medial_temporal"]
    corpus_callosum = is_wm & _box(x, y, z, (0, 10), (-44, 36), (0, 34))
    labels[corpus_callosum & (y > 12)] = codes["cc_genu"]
    labels[corpus_callosum & (y <= 12) & (y >= -26)] = codes["cc_body"]
    labels[corpus_callosum & (y < -26)] = codes["cc_splenium"]
    labels[is_wm & ~corpus_callosum & _box(x, y, z, (13, 30), (-28, 18), (-6, 18))] = codes["internal_capsule"]
    labels[is_wm & ~cerebellum & _box(x, y, z, (0, 18), (-34, -10), (-40, -6))] = codes["corticospinal"]
    labels[is_wm & ~corpus_callosum & _box(x, y, z, (5, 14), (-50, 34), (20, 44))] = codes["cingulum"]

    # Amyloid-prone cortex (Centiloid-like composite: frontal, precuneus/posterior cingulate, lateral temporal and
    # parietal), low in sensorimotor, occipital and medial temporal cortex (Thal amyloid phases).
    prone = (
        (y > 8)
        | _box(x, y, z, (0, 16), (-78, -35), (15, 62))
        | _box(x, y, z, (42, 80), (-65, 10), (-40, 5))
        | _box(x, y, z, (28, 80), (-75, -28), (20, 80))
    )
    weight = np.where(prone, 1.0, 0.5).astype(np.float32)
    weight[_box(x, y, z, (10, 80), (-38, 0), (40, 90))] = 0.3
    weight[y < -75] = 0.35
    weight[medial_temporal] = 0.3
    cortex = labels == codes["cortex_other"]
    labels[cortex & (weight == 1.0)] = codes["cortex_amyloid_prone"]
    cerebral = inside & ~cerebellum & ~brainstem
    amyloid_weight = ndimage.gaussian_filter(weight * cerebral, 5.0 / voxel) * cerebral

    atrophy = np.where(
        _box(x, y, z, (28, 80), (-70, 10), (-40, 5)) | _box(x, y, z, (0, 80), (-75, -28), (20, 80)), 1.0, 0.5
    )
    atrophy = np.where(medial_temporal, 1.0, atrophy).astype(np.float32)
    atrophy_weight = ndimage.gaussian_filter(atrophy, 6.0 / voxel) * cerebral

    proximity = ndimage.gaussian_filter(ventricles.astype(np.float32), 4.0 / voxel)
    proximity = np.clip(proximity / max(proximity.max(), 1e-6) * 2.0, 0, 1) * inside

    as32 = functools.partial(np.asarray, dtype=np.float32)
    return Template(
        affine=affine,
        gm=as32(gm),
        wm=as32(wm),
        csf=as32(csf),
        brain=as32(brain),
        labels=labels,
        amyloid_weight=as32(amyloid_weight),
        atrophy_weight=as32(atrophy_weight),
        depth_mm=depth,
        ventricle_proximity=as32(proximity),
    )
