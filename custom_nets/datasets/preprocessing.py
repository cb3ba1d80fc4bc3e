# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""From raw scans to the bundle's inputs: rigid co-registration of each modality to the T1w, optional N4 bias-field
correction and resampling onto one grid, with ITK (Insight Toolkit 5, already a dependency of the bundle).

- ``rigid_register``: ITK's ``ImageRegistrationMethodv4`` with a ``VersorRigid3DTransform`` (6 parameters), Mattes
  mutual information (works across contrasts: FLAIR, PET, DTI maps to T1w), a centred moments initialisation, a
  three-level pyramid (shrink 4, 2, 1; smoothing 2, 1, 0 mm) and a regular-step gradient descent, as ANTs' and ITK's
  rigid recipes do.
- ``n4_correct``: ``N4BiasFieldCorrectionImageFilter`` (Tustison et al., IEEE TMI 2010) at a shrink factor of 2 inside
  an Otsu head mask.
- ``resample``: linear (images) or nearest-neighbour (masks, labels) interpolation onto a reference grid.

Arrays are ``(x, y, z)`` with a 4×4 RAS affine in mm (as ``custom_nets.io.load_volume`` returns them); conversion to
ITK's LPS physical space happens here only. ``python -m custom_nets.preprocess`` is the command line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from custom_nets.io import atomic_save_nifti, atomic_write_json, load_volume

__all__ = [
    "RigidResult",
    "rigid_register",
    "resample",
    "n4_correct",
    "rotation_degrees",
    "rigid_matrix",
    "transform_error",
    "preprocess_subject",
]

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS ↔ LPS (ITK's physical space)
MR_KEYS = ("t1w", "flair", "t2w", "pd")  # the contrasts N4 corrects
# output file suffixes by key, BIDS' where it has one, so that the predict command's BIDS patterns find the files
BIDS_SUFFIXES = {"t1w": "T1w", "flair": "FLAIR", "t2w": "T2w", "pd": "PD", "mask": "mask", "pet": "pet"}


def _to_itk(array: np.ndarray, affine: np.ndarray):
    import itk

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = itk.image_from_array(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in _LPS @ affine[:3, 3]])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(_LPS @ (affine[:3, :3] / spacing))))
    return image


def _from_itk(image) -> tuple[np.ndarray, np.ndarray]:
    import itk

    direction = _LPS @ np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = _LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return itk.array_from_image(image).transpose(2, 1, 0).copy(), affine


class RigidResult(NamedTuple):
    """``matrix``: 4×4 RAS mm transform that maps a point of the fixed image to the corresponding point of the moving
    image (the resampling direction); ``metric``: the final Mattes mutual information (negative, lower is better);
    ``iterations``: optimiser iterations at the last level; ``stop``: the optimiser's stop condition."""

    matrix: np.ndarray
    metric: float
    iterations: int
    stop: str


def rigid_register(
    fixed: tuple[np.ndarray, np.ndarray],
    moving: tuple[np.ndarray, np.ndarray],
    iterations: int = 300,
    sampling: float = 0.25,
    seed: int = 0,
) -> RigidResult:
    """Rigidly register ``moving`` to ``fixed`` (each ``(array, RAS affine)``).

    Raises:
        ValueError: the registration did not converge (the optimiser stopped on its iteration limit at the finest
            level with a step still large) or produced a non-finite transform.
    """
    import itk

    image_type = itk.Image[itk.F, 3]
    fixed_image, moving_image = _to_itk(*fixed), _to_itk(*moving)
    transform = itk.VersorRigid3DTransform[itk.D].New()
    initializer = itk.CenteredTransformInitializer[itk.VersorRigid3DTransform[itk.D], image_type, image_type].New(
        Transform=transform, FixedImage=fixed_image, MovingImage=moving_image
    )
    initializer.MomentsOn()
    initializer.InitializeTransform()
    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New(NumberOfHistogramBins=32)
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New(Metric=metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
        LearningRate=1.0,
        MinimumStepLength=1e-4,
        RelaxationFactor=0.5,
        NumberOfIterations=iterations,
        GradientMagnitudeTolerance=1e-6,
        ScalesEstimator=scales,
    )
    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New(
        FixedImage=fixed_image,
        MovingImage=moving_image,
        Metric=metric,
        Optimizer=optimizer,
        InitialTransform=transform,
    )
    registration.InPlaceOn()  # ``transform`` itself ends optimised
    registration.SetNumberOfLevels(3)
    registration.SetShrinkFactorsPerLevel([4, 2, 1])
    registration.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(sampling)
    registration.MetricSamplingReinitializeSeed(seed)
    registration.Update()
    matrix_lps = np.eye(4)
    matrix_lps[:3, :3] = np.asarray(itk.array_from_matrix(transform.GetMatrix()), dtype=np.float64)
    matrix_lps[:3, 3] = np.asarray(transform.GetOffset(), dtype=np.float64)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    matrix = flip @ matrix_lps @ flip
    stop = str(optimizer.GetStopConditionDescription())
    if not np.isfinite(matrix).all():
        raise ValueError(f"rigid registration produced a non-finite transform ({stop}).")
    if optimizer.GetCurrentIteration() >= iterations and optimizer.GetCurrentStepLength() > 1e-2:
        raise ValueError(
            f"rigid registration did not converge within {iterations} iterations (step "
            f"{optimizer.GetCurrentStepLength():.3g}; {stop}); check that the images overlap and show the same head."
        )
    return RigidResult(matrix, float(optimizer.GetValue()), int(optimizer.GetCurrentIteration()), stop)


def rotation_degrees(matrix: np.ndarray) -> float:
    """The rotation angle of a rigid 4×4 (or 3×3) matrix, in degrees."""
    rotation = np.asarray(matrix)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def rigid_matrix(
    degrees: tuple[float, float, float], shift_mm: tuple[float, float, float], centre: Sequence[float] | np.ndarray
) -> np.ndarray:
    """4×4 RAS transform: rotations about x, y then z (degrees) around ``centre`` (mm), then a shift (mm)."""
    rx, ry, rz = np.radians(degrees)
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = z @ y @ x
    matrix[:3, 3] = np.asarray(centre) - matrix[:3, :3] @ np.asarray(centre) + np.asarray(shift_mm)
    return matrix


def transform_error(found: np.ndarray, true: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """The largest displacement (mm) between two 4×4 RAS transforms over the voxels of ``mask`` (on ``affine``'s
    grid), and the rotation (degrees) of ``found`` relative to ``true``: a registration's residual error."""
    points = affine @ np.vstack([np.argwhere(mask).T, np.ones(int(mask.sum()))])
    distance = np.linalg.norm((found @ points - true @ points)[:3], axis=0).max()
    return float(distance), rotation_degrees(found @ np.linalg.inv(true))


def resample(
    moving: tuple[np.ndarray, np.ndarray],
    reference_affine: np.ndarray,
    reference_shape: tuple[int, int, int],
    matrix: np.ndarray | None = None,
    nearest: bool = False,
) -> np.ndarray:
    """``moving`` resampled onto the reference grid through ``matrix`` (reference point → moving point, RAS mm;
    identity when None); zero outside the moving image."""
    import itk

    image = _to_itk(*moving)
    reference = _to_itk(np.zeros(reference_shape, np.float32), reference_affine)
    transform = itk.AffineTransform[itk.D, 3].New()
    if matrix is not None:
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        lps = flip @ np.asarray(matrix, dtype=np.float64) @ flip
        transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3])))
        transform.SetTranslation([float(t) for t in lps[:3, 3]])
    image_type = itk.Image[itk.F, 3]
    interpolator = (
        itk.NearestNeighborInterpolateImageFunction[image_type, itk.D].New()
        if nearest
        else itk.LinearInterpolateImageFunction[image_type, itk.D].New()
    )
    resampler = itk.ResampleImageFilter[image_type, image_type].New(
        Input=image, Transform=transform, Interpolator=interpolator, DefaultPixelValue=0.0
    )
    resampler.SetReferenceImage(reference)
    resampler.UseReferenceImageOn()
    resampler.Update()
    return _from_itk(resampler.GetOutput())[0]


def n4_correct(image: tuple[np.ndarray, np.ndarray], shrink: int = 2, iterations: int = 50) -> np.ndarray:
    """N4 bias-field correction of ``(array, affine)`` inside an Otsu head mask; returns the corrected array."""
    import itk

    itk_image = _to_itk(*image)
    mask_type = itk.Image[itk.UC, 3]
    mask = itk.OtsuThresholdImageFilter[type(itk_image), mask_type].New(Input=itk_image, InsideValue=0, OutsideValue=1)
    mask.Update()
    shrunk = itk.ShrinkImageFilter[type(itk_image), type(itk_image)].New(Input=itk_image, ShrinkFactors=shrink)
    shrunk_mask = itk.ShrinkImageFilter[mask_type, mask_type].New(Input=mask.GetOutput(), ShrinkFactors=shrink)
    shrunk.Update()
    shrunk_mask.Update()
    corrector = itk.N4BiasFieldCorrectionImageFilter[type(itk_image), mask_type, type(itk_image)].New(
        Input=shrunk.GetOutput(), MaskImage=shrunk_mask.GetOutput()
    )
    corrector.SetNumberOfFittingLevels(4)
    corrector.SetMaximumNumberOfIterations([iterations] * 4)
    corrector.Update()
    # the bias field at full resolution: the log ratio input / corrected on the shrunk grid (extended from the
    # voxels where both are positive to the rest by nearest neighbour), smooth by construction, interpolated linearly
    small, small_affine = _from_itk(shrunk.GetOutput())
    corrected = _from_itk(corrector.GetOutput())[0]
    valid = (small > 0) & (corrected > 0)
    log_field = np.zeros(small.shape, np.float32)
    log_field[valid] = np.log(small[valid] / corrected[valid])
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    log_field = log_field[tuple(nearest)]
    field = np.exp(resample((log_field, small_affine), image[1], image[0].shape))
    return (np.asarray(image[0], dtype=np.float32) / field).astype(np.float32)


def preprocess_subject(
    images: Mapping[str, str | Path],
    out_dir: str | Path,
    subject: str,
    reference_key: str = "t1w",
    voxel_size: float | None = None,
    n4: bool = False,
    masks: tuple[str, ...] = ("mask",),
    mr_keys: tuple[str, ...] = MR_KEYS,
) -> dict[str, Path]:
    """Bring one subject's modalities onto the reference modality's grid (or an isotropic ``voxel_size`` grid over
    the same field of view): each other modality rigidly registered to the reference, N4 on MR contrasts with
    ``n4`` (``mr_keys`` only: never on PET or DTI maps), masks (given in the reference's space) resampled with
    nearest neighbour. Writes ``<subject>_<key>.nii.gz`` and ``<subject>.json`` (the
    transforms, metrics and software versions) into ``out_dir``, ``<key>`` as BIDS names it (``T1w``, ``FLAIR``,
    ``mask``: ``BIDS_SUFFIXES``); returns the written files by key.

    Raises:
        ValueError: ``reference_key`` missing, a file unreadable, not 3D or not finite (named), or a registration
            that did not converge (named); nothing is written then.
    """
    import itk

    if reference_key not in images:
        raise ValueError(f"{subject}: the reference modality '{reference_key}' is missing (got {sorted(images)}).")
    loaded = {key: load_volume(path, f"{subject}, key '{key}'") for key, path in images.items()}
    reference, reference_affine = loaded[reference_key]
    shape = reference.shape
    if voxel_size is not None:  # an isotropic grid over the reference's field of view
        spacing = np.linalg.norm(reference_affine[:3, :3], axis=0)
        shape = tuple(int(np.ceil(n * s / voxel_size)) for n, s in zip(reference.shape, spacing))
        target_affine = reference_affine.copy()
        target_affine[:3, :3] = reference_affine[:3, :3] / spacing * voxel_size
    else:
        target_affine = reference_affine
    outputs, record = {}, {"subject": subject, "reference": reference_key, "voxel_size_mm": voxel_size, "images": {}}
    for key, (array, affine) in loaded.items():
        entry = {"source": str(Path(images[key]).absolute()), "n4": bool(n4 and key in mr_keys)}
        matrix = None
        if key != reference_key and key not in masks:
            try:
                result = rigid_register((reference, reference_affine), (array, affine))
            except ValueError as error:
                raise ValueError(f"{subject}, key '{key}' ({images[key]}) to '{reference_key}': {error}") from None
            matrix = result.matrix
            entry.update(
                rigid_ras_mm=result.matrix.round(6).tolist(),
                rotation_deg=round(rotation_degrees(result.matrix), 3),
                mattes_mi=round(result.metric, 5),
                iterations=result.iterations,
            )
        if entry["n4"]:
            array = n4_correct((array, affine))
        outputs[key] = resample((array, affine), target_affine, shape, matrix, nearest=key in masks)
        record["images"][key] = entry
    record["software"] = {"itk": itk.Version.GetITKVersion(), "custom_nets": _version()}
    out_dir = Path(out_dir)
    written = {
        key: atomic_save_nifti(out_dir / f"{subject}_{BIDS_SUFFIXES.get(key, key)}.nii.gz", value, target_affine)
        for key, value in outputs.items()
    }
    written["sidecar"] = atomic_write_json(out_dir / f"{subject}.json", json.loads(json.dumps(record)))
    return written


def _version() -> str:
    from custom_nets import __version__

    return __version__
