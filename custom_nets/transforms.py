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

__all__ = ["DeriveBrainMaskd", "MaskedScaleIntensityd", "DegradeResolutiond", "CheckPatchFitsd"]


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


class MaskedScaleIntensityd(MapTransform):
    """Scale each channel to [0, 1] by its ``lower``–``upper`` percentiles inside the mask (clipped), zero outside.

    The paper z-scores each input over the brain then scales to [0, 1]; percentiles do the same job and are robust to
    the bias fields and lesions that make the extremes unreliable."""

    def __init__(
        self, keys: KeysCollection, mask_key: str = "mask", lower: float = 0.5, upper: float = 99.5, clip: bool = True
    ) -> None:
        super().__init__(keys)
        self.mask_key, self.lower, self.upper, self.clip = mask_key, lower, upper, clip

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        mask = torch.as_tensor(d[self.mask_key])[0] > 0
        if not mask.any():
            raise ValueError(f"{_source(d, self.mask_key)}: the brain mask is empty.")
        for key in self.key_iterator(d):
            image = d[key].float() if isinstance(d[key], torch.Tensor) else torch.as_tensor(d[key], dtype=torch.float32)
            channels = []
            for channel in image:
                inside = channel[mask]
                sample = inside[:: max(1, inside.numel() // 200_000)]  # torch.quantile caps its input size
                low, high = torch.quantile(sample, torch.tensor([self.lower, self.upper]) / 100)
                scaled = (channel - low) / (high - low).clamp_min(1e-8)
                channels.append((scaled.clamp(0, 1) if self.clip else scaled) * mask)
            d[key] = _like(d[key], torch.stack(channels))
        return d


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
