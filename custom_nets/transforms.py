# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Dictionary transforms the bundle needs beyond MONAI's: brain-mask derivation, masked per-channel intensity
scaling, resolution degradation (super-resolution task) and an early check that the patch fits the volume."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = [
    "DeriveBrainMaskd",
    "NormalizeIntensityInMaskd",
    "normalize_intensity",
    "preprocessing_transforms",
    "DegradeResolutiond",
    "CheckPatchFitsd",
]


def _source(data: Mapping, key: Hashable) -> str:
    meta = getattr(data[key], "meta", {}) or {}
    return str(meta.get("filename_or_obj", key))


class DeriveBrainMaskd(MapTransform):
    """Add ``mask_key`` when absent: voxels where the mean of the image channels exceeds ``threshold`` × its 99th
    percentile, holes filled, largest connected component kept. Meant for skull-stripped inputs (background ≈ 0),
    as MONAI Label requests carry no mask. An existing mask is binarised and kept."""

    def __init__(self, image_key: str = "image", mask_key: str = "mask", threshold: float = 0.05) -> None:
        super().__init__([image_key], allow_missing_keys=False)
        self.image_key, self.mask_key, self.threshold = image_key, mask_key, threshold

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        if self.mask_key in d and d[self.mask_key] is not None:
            d[self.mask_key] = (torch.as_tensor(d[self.mask_key]) > 0).to(torch.float32)
            return d
        values = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
        mean = np.abs(values).mean(axis=0)
        level = np.percentile(mean[mean > 0], 99) if (mean > 0).any() else 0.0
        mask = mean > self.threshold * level
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = ndimage.sum(mask, labels, range(1, count + 1))
            mask = labels == (int(np.argmax(sizes)) + 1)
        mask = ndimage.binary_fill_holes(mask)
        if not mask.any():
            raise ValueError(f"{_source(d, self.image_key)}: cannot derive a brain mask, the image is empty.")
        out = torch.as_tensor(mask[None].astype(np.float32))
        d[self.mask_key] = _like(image, out)
        return d


def _like(reference, array: torch.Tensor):
    """``array`` as a MetaTensor with ``reference``'s meta (affine, applied operations) when it has one."""
    from monai.data import MetaTensor

    if isinstance(reference, MetaTensor):
        # keep the applied operations too, so that Invertd can undo the orientation change at inference
        return MetaTensor(
            array,
            meta=dict(reference.meta),
            applied_operations=list(reference.applied_operations),
        )
    return array


NORMALIZATIONS = ("percentile", "tissue_mode")
# input key → the contrast whose tissue peak ``tissue_mode`` normalises to (intensity-normalization's modalities)
CONTRASTS = {"t1w": "t1", "t1": "t1", "flair": "flair", "t2w": "t2", "t2": "t2", "pdw": "pd", "pd": "pd"}


def normalize_intensity(
    channel: np.ndarray, mask: np.ndarray, method: str = "percentile", contrast: str = "other"
) -> np.ndarray:
    """One channel mapped to about [0, 1] by statistics of its voxels inside ``mask``; zero outside the mask.

    The single definition of the input normalisation: the bundle's transform and the baselines without learning both
    call it, so both see the same numbers.

    - ``"percentile"``: its 0.5 and 99.5 percentiles in the mask map to 0 and 1, clipped (the bundle's default; the
      paper z-scores over the brain and rescales to [0, 1], percentiles do the same job robustly).
    - ``"tissue_mode"``: divided by twice the intensity of its reference tissue peak, clipped to [0, 1], so the peak
      maps to 0.5: the white-matter peak on T1w (the last mode of the kernel density), the largest mode on T2w/FLAIR,
      the first on PD (``intensity_normalization.KDENormalizer``; Reinhold et al., "Evaluating the impact of intensity
      normalization on MR image synthesis", SPIE Medical Imaging 2019). Unlike percentiles it does not move with the
      share of lesions or CSF in the mask.

    Args:
        channel: intensities, any shape.
        mask: boolean array of the same shape (the brain).
        method: one of ``NORMALIZATIONS``.
        contrast: ``"t1"``, ``"t2"``, ``"flair"``, ``"pd"`` or ``"other"`` (peak choice of ``"tissue_mode"``).

    Returns:
        float32 array of ``channel``'s shape.

    Raises:
        ValueError: unknown ``method``, empty mask, or a channel that is constant inside the mask.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"intensity normalisation must be one of {NORMALIZATIONS}, got {method!r}.")
    channel, mask = np.asarray(channel, dtype=np.float32), np.asarray(mask, dtype=bool)
    inside = channel[mask]
    if inside.size == 0:
        raise ValueError("the brain mask is empty.")
    if method == "percentile":
        low, high = np.percentile(inside, [0.5, 99.5])
        scale = high - low
    else:
        from intensity_normalization import KDENormalizer, Modality, create_image

        modality = Modality(contrast) if contrast in {m.value for m in Modality} else Modality.OTHER
        normalizer = KDENormalizer(modality=modality).fit(create_image(channel), create_image(mask))
        low, scale = 0.0, 2.0 * float(normalizer.tissue_mode)
    if not np.isfinite(scale) or scale <= 1e-12:
        raise ValueError(f"the channel is constant inside the brain mask ({method} scale {scale}).")
    return (np.clip((channel - low) / scale, 0.0, 1.0) * mask).astype(np.float32)


class NormalizeIntensityInMaskd(MapTransform):
    """Normalise each channel of ``keys`` with ``normalize_intensity`` over the brain mask; zero outside it.

    Args:
        keys: image keys, ``(C, *spatial)``.
        mask_key: the brain mask ``(1, *spatial)``.
        method: ``"percentile"`` or ``"tissue_mode"`` (see ``normalize_intensity``).
        contrasts: per channel, ``"t1"``/``"t2"``/``"flair"``/``"pd"``/``"other"`` (used by ``"tissue_mode"``).

    Raises:
        ValueError: naming the file, when the mask is empty or a channel is constant inside it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        method: str = "percentile",
        contrasts: Sequence[str] | None = None,
    ) -> None:
        super().__init__(keys)
        if method not in NORMALIZATIONS:
            raise ValueError(f"intensity normalisation must be one of {NORMALIZATIONS}, got {method!r}.")
        self.mask_key, self.method, self.contrasts = mask_key, method, list(contrasts or [])

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        mask = np.asarray(torch.as_tensor(d[self.mask_key]).detach().cpu())[0] > 0
        for key in self.key_iterator(d):
            image = np.asarray(torch.as_tensor(d[key]).detach().cpu(), dtype=np.float32)
            channels = []
            for index, channel in enumerate(image):
                contrast = self.contrasts[index] if index < len(self.contrasts) else "other"
                try:
                    channels.append(normalize_intensity(channel, mask, self.method, contrast))
                except ValueError as error:
                    raise ValueError(f"{_source(d, key)} (channel {index}): {error}") from None
            d[key] = _like(d[key], torch.as_tensor(np.stack(channels)))
        return d


def preprocessing_transforms(
    input_keys: Sequence[str] = ("t1w", "flair"),
    pixdim: Sequence[float] | None = None,
    degrade_factor: float = 1.0,
    target_range: Sequence[float] = (0.0, 3.0),
    normalization: str = "percentile",
    mask_threshold: float = 0.05,
    prior: Mapping | None = None,
) -> list:
    """The one preprocessing chain of training, validation, evaluation and inference (MONAI Label included).

    Items ``{"image": [input files], "label": target file (optional), "mask": brain mask file (optional)}``: load
    (channel first), reorient to RAS, optionally resample to ``pixdim``, take the datalist's brain mask when the item
    has one and derive it from the inputs otherwise (``DeriveBrainMaskd``; for skull-stripped inputs only), degrade the
    inputs by ``degrade_factor`` (super-resolution task), normalise every input channel inside the mask
    (``NormalizeIntensityInMaskd``), append the per-voxel ``prior``'s prediction as a channel when one is given
    (``custom_nets.prior``), scale the target from ``target_range`` to [0, 1] and zero it outside the mask.

    Returns:
        a list of MONAI dictionary transforms (append augmentation for training, or wrap in ``Compose``).
    """
    from monai.transforms import LoadImaged, MaskIntensityd, Orientationd, ScaleIntensityRanged, Spacingd

    from custom_nets.prior import AppendPriord

    keys = ["image", "label", "mask"]
    contrasts = [CONTRASTS.get(str(key).lower(), "other") for key in input_keys]
    transforms = [
        LoadImaged(keys, ensure_channel_first=True, image_only=True, allow_missing_keys=True),
        Orientationd(keys, axcodes="RAS", allow_missing_keys=True),
    ]
    if pixdim is not None:
        transforms.append(
            Spacingd(keys, pixdim=pixdim, mode=["bilinear", "bilinear", "nearest"], allow_missing_keys=True)
        )
    return transforms + [
        DeriveBrainMaskd("image", "mask", threshold=mask_threshold),
        DegradeResolutiond("image", factor=degrade_factor),
        NormalizeIntensityInMaskd("image", "mask", method=normalization, contrasts=contrasts),
        AppendPriord("image", "mask", prior=prior),
        ScaleIntensityRanged(
            "label", a_min=target_range[0], a_max=target_range[1], b_min=0.0, b_max=1.0, allow_missing_keys=True
        ),
        MaskIntensityd("label", mask_key="mask", allow_missing_keys=True),
    ]


class DegradeResolutiond(MapTransform):
    """Lower the resolution of ``keys`` by ``factor`` (Gaussian anti-aliasing, decimation, trilinear upsampling back
    to the grid): the input of the super-resolution task. ``factor`` 1 leaves the data unchanged."""

    def __init__(self, keys: KeysCollection, factor: float = 1.0) -> None:
        super().__init__(keys)
        if factor < 1:
            raise ValueError(f"degrade factor must be >= 1, got {factor}.")
        self.factor = factor

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.factor == 1:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key], dtype=torch.float32)
            spatial = image.shape[1:]
            # anti-aliasing: a Gaussian with a FWHM of `factor` voxels before decimation
            blurred = torch.as_tensor(
                np.stack([ndimage.gaussian_filter(c.numpy(), self.factor / 2.3548) for c in image]), dtype=torch.float32
            )
            mode = "trilinear" if len(spatial) == 3 else "bilinear"
            small = torch.nn.functional.interpolate(blurred[None], scale_factor=1 / self.factor, mode=mode)
            restored = torch.nn.functional.interpolate(small, size=tuple(spatial), mode=mode)
            d[key] = _like(d[key], restored[0])
        return d


class CheckPatchFitsd(MapTransform):
    """Raise a clear error when a volume is smaller than the training patch (instead of a silently smaller crop)."""

    def __init__(self, keys: KeysCollection, patch_size: Sequence[int]) -> None:
        super().__init__(keys)
        self.patch_size = tuple(int(p) for p in patch_size)

    def __call__(self, data: Mapping) -> dict:
        for key in self.key_iterator(data):
            spatial = tuple(data[key].shape[1:])
            if len(spatial) != len(self.patch_size) or any(s < p for s, p in zip(spatial, self.patch_size)):
                raise ValueError(
                    f"{_source(data, key)}: volume {spatial} is smaller than patch_size {self.patch_size}; "
                    "lower patch_size or pad the data."
                )
        return dict(data)
