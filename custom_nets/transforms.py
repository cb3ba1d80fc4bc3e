# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Dictionary transforms the bundle needs beyond MONAI's: brain-mask derivation, masked per-channel intensity
scaling, resolution degradation (super-resolution task) and an early check that the patch fits the volume."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, SaveImaged
from scipy import ndimage

from custom_nets.data import names_a_file

__all__ = [
    "LoadEntryd",
    "SavePredictiond",
    "DeriveBrainMaskd",
    "derive_brain_mask",
    "ExtractBrainMaskd",
    "BRAIN_EXTRACTIONS",
    "NormalizeIntensityInMaskd",
    "normalize_intensity",
    "preprocessing_transforms",
    "DegradeResolutiond",
    "CheckPatchFitsd",
    "CheckTargetRanged",
]


def _source(data: Mapping, key: Hashable) -> str:
    meta = getattr(data[key], "meta", {}) or {}
    return str(meta.get("filename_or_obj", key))


class LoadEntryd(MapTransform):
    """Load a datalist entry's files, each checked (``custom_nets.io.load_volume``: readable, one 3D volume, finite),
    all on the grid of the entry's first input (shape, and affine within ``affine_tol`` mm), the files of a key stacked
    as channels. Replaces MONAI's ``LoadImaged(keys, ensure_channel_first=True)``, whose errors name no file.

    Items: ``{key: path or [paths], "id": entry id (optional)}``; a key holding an array or tensor already is kept.
    Output: each key a ``MetaTensor`` ``(C, x, y, z)`` with the first file's metadata: one channel per file, or per
    volume for the keys in ``volumes_as_channels`` (a 4D file holding T1w and FLAIR, as MONAI Label may send).
    ``channels`` gives the expected channel count per key (e.g. ``{"image": len(input_keys)}``), ``file_names`` the
    datalist key of each file of a key, for the messages (e.g. ``{"image": input_keys}``).

    Raises:
        FileNotFoundError, ValueError: naming the entry, the key and the file (see ``load_volume``), or the two files
            whose grids differ.
    """

    def __init__(
        self,
        keys: KeysCollection,
        id_key: str = "id",
        channels: Mapping[str, int] | None = None,
        volumes_as_channels: Sequence[str] = ("image",),
        file_names: Mapping[str, Sequence[str]] | None = None,
        affine_tol: float | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        from custom_nets.io import AFFINE_TOLERANCE_MM

        self.id_key, self.affine_tol = id_key, AFFINE_TOLERANCE_MM if affine_tol is None else affine_tol
        self.channels, self.volumes_as_channels = dict(channels or {}), set(volumes_as_channels)
        self.file_names = {key: list(names) for key, names in (file_names or {}).items()}

    def __call__(self, data: Mapping) -> dict:
        from monai.data import MetaTensor

        from custom_nets.io import check_same_grid, load_volume

        d = dict(data)
        entry = f"entry {d[self.id_key]}" if d.get(self.id_key) is not None else "entry"
        reference = None
        for key in self.key_iterator(d):
            if isinstance(d[key], (np.ndarray, torch.Tensor)):
                continue
            paths = [d[key]] if isinstance(d[key], (str, bytes)) or not isinstance(d[key], Sequence) else d[key]
            channels = []
            names = self.file_names.get(key, [])
            for index, path in enumerate(paths):
                name = names[index] if len(names) == len(paths) else key
                label = f"{entry}, key '{name}': {path}"
                volume = load_volume(
                    path,
                    f"{entry}, key '{name}'",
                    channel_first=True,
                    volumes_as_channels=key in self.volumes_as_channels,
                )
                grid = (tuple(volume.shape[1:]), np.asarray(volume.affine))
                if reference is None:
                    reference = (label, *grid)
                else:
                    check_same_grid(label, *grid, *reference, tolerance=self.affine_tol)
                channels.append(volume)
            stacked = torch.cat([torch.as_tensor(c) for c in channels]) if len(channels) > 1 else channels[0]
            d[key] = MetaTensor(stacked, meta=dict(channels[0].meta)) if len(channels) > 1 else stacked
            d[key].meta["source_files"] = "|".join(str(p) for p in paths)
            expected = self.channels.get(key)
            if expected is not None and d[key].shape[0] != expected:
                raise ValueError(
                    f"{entry}, key '{key}': {', '.join(str(p) for p in paths)} give {d[key].shape[0]} channel(s), but "
                    f"the model takes {expected}, one per input key ({self.file_names.get(key, 'input_keys')}); give "
                    "one 3D file per input key (split a 4D file, e.g. with nibabel or fslsplit)."
                )
        return d


def _stem(path: str) -> str:
    name = Path(str(path)).name
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class SavePredictiond(SaveImaged):
    """MONAI's ``SaveImaged`` with the guarantees a prediction needs: the file is
    ``output_dir/<entry id>_<output_postfix>.nii.gz`` (never another entry's, never one of the entry's inputs) and it
    is written atomically (a temporary file, then a rename: an interrupted run never leaves a partial file under the
    final name), float32, with the prediction's affine (after ``Invertd``: the input's grid, in its voxel order).

    The entry id is the item's ``id_key`` (the datalist entry's id, unique within a datalist, sessions included); an
    item without one (a MONAI Label request) is named after its first input file, as ``SaveImaged`` does. Being a
    ``SaveImaged``, it is dropped by MONAI Label's post-transform filter like MONAI's own saver.

    Raises:
        ValueError: the output would replace one of the entry's input files, or the id holds a path separator.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str = ".",
        output_postfix: str = "pred",
        id_key: str = "id",
        image_key: str = "image",
    ) -> None:
        super().__init__(
            keys, output_dir=output_dir, output_postfix=output_postfix, separate_folder=False, resample=False
        )
        self.output_dir, self.output_postfix = Path(output_dir), str(output_postfix)
        self.id_key, self.image_key = id_key, image_key

    def output_path(self, data: Mapping) -> Path:
        """The file the prediction of ``data`` is written to (checked, see the class)."""
        image_meta = getattr(data.get(self.image_key), "meta", {}) or {}
        sources = str(image_meta.get("source_files", image_meta.get("filename_or_obj", ""))).split("|")
        entry = data.get(self.id_key)
        name = str(entry) if entry not in (None, "") else _stem(sources[0]) if sources[0] else ""
        if not name:
            raise ValueError("cannot name the prediction: the item has no 'id' and its image no source file.")
        if not names_a_file(name):
            raise ValueError(f"entry id {name!r} cannot name a file (it holds a path separator).")
        path = self.output_dir / (f"{name}_{self.output_postfix}.nii.gz" if self.output_postfix else f"{name}.nii.gz")
        inputs = {Path(s).resolve() for s in sources if s}
        for key in ("label", "mask"):
            meta = getattr(data.get(key), "meta", {}) or {}
            inputs.update(Path(s).resolve() for s in str(meta.get("source_files", "")).split("|") if s)
        if path.resolve() in inputs:
            raise ValueError(
                f"the prediction of {name} would replace its input {path}; choose another output_dir or a non-empty "
                "output_postfix."
            )
        return path

    def __call__(self, data: Mapping) -> dict:
        from custom_nets.io import atomic_save_nifti

        d = dict(data)
        path = self.output_path(d)
        for key in self.key_iterator(d):
            prediction = d[key]
            affine = np.asarray(getattr(prediction, "affine", np.eye(4)), dtype=np.float64)
            array = np.asarray(torch.as_tensor(prediction).detach().cpu(), dtype=np.float32)
            atomic_save_nifti(path, array[0] if array.ndim == 4 else array, affine)
        return d


def binarise_given_mask(d: dict, mask_key: str) -> bool:
    """A mask the data already hold (the datalist's or a MONAI Label request's) is used as given, binarised in place;
    returns whether there was one (the mask transforms derive one only when not)."""
    if d.get(mask_key) is None:
        return False
    source = _source(d, mask_key)
    d[mask_key] = (torch.as_tensor(d[mask_key]) > 0).to(torch.float32)
    if not bool(d[mask_key].any()):
        raise ValueError(
            f"{source}: the brain mask given as '{mask_key}' is empty (no voxel above 0); give the entry's brain mask, "
            "or leave the key out to have one derived."
        )
    return True


def derive_brain_mask(channels: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """The brain mask of skull-stripped inputs ``channels`` ``(C, *spatial)``: voxels where the mean absolute value of
    the channels exceeds ``threshold`` × its 99th percentile (over nonzero voxels), the largest connected component,
    holes filled. Returns a boolean ``(*spatial)`` array, empty when every voxel is 0. The one derivation of the
    bundle (``DeriveBrainMaskd``), the baselines and the evaluation."""
    mean = np.abs(np.asarray(channels, dtype=np.float32)).mean(axis=0)
    level = np.percentile(mean[mean > 0], 99) if (mean > 0).any() else 0.0
    mask = mean > threshold * level
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


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
        if binarise_given_mask(d, self.mask_key):
            return d
        values = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
        mask = derive_brain_mask(values, self.threshold)
        if not mask.any():
            raise ValueError(f"{_source(d, self.image_key)}: cannot derive a brain mask, the image is empty.")
        out = torch.as_tensor(mask[None].astype(np.float32))
        d[self.mask_key] = _like(image, out)
        return d


BRAIN_EXTRACTIONS = ("threshold", "deepbet")


class ExtractBrainMaskd(MapTransform):
    """Add ``mask_key`` when absent: the brain of a whole-head T1w image (channel ``channel`` of ``image_key``) by
    deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI using Convolutional Neural Networks",
    Comput. Biol. Med. 2024; MIT licence, its wheel ships the weights, CPU works): a bounding-box network at 128³ and a
    segmentation network at 256³ of the box, the probability thresholded at ``threshold``, the largest connected
    component kept and holes filled (deepbet's own post-processing). The image must be in RAS voxel order (the chain
    reorients first). An existing mask (from the datalist) is binarised and kept.

    Raises:
        ImportError: deepbet is not installed (``pip install deepbet``).
        ValueError: the extracted brain is empty (the message names the entry).
    """

    _model = None  # deepbet's two TorchScript networks, loaded once per process

    def __init__(
        self, image_key: str = "image", mask_key: str = "mask", channel: int = 0, threshold: float = 0.5
    ) -> None:
        super().__init__([image_key], allow_missing_keys=False)
        self.image_key, self.mask_key, self.channel, self.threshold = image_key, mask_key, channel, threshold

    @classmethod
    def extractor(cls):
        if cls._model is None:
            try:
                from deepbet.bet import BrainExtraction
            except ImportError as error:
                raise ImportError(
                    "brain_extraction 'deepbet' needs the deepbet package: pip install deepbet (or give a 'mask' in "
                    "the datalist, or brain_extraction 'threshold' for skull-stripped inputs)."
                ) from error
            cls._model = BrainExtraction(no_gpu=not torch.cuda.is_available())
        return cls._model

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        if binarise_given_mask(d, self.mask_key):
            return d
        model = self.extractor()
        t1w = np.asarray(torch.as_tensor(image)[self.channel].detach().cpu(), dtype=np.float32)
        with torch.no_grad():
            probability = model.run_model(t1w.copy())
        mask = model.postprocess(probability > self.threshold, 0)
        if not mask.any():
            raise ValueError(f"{_source(d, self.image_key)}: deepbet found no brain in input channel {self.channel}.")
        d[self.mask_key] = _like(image, torch.as_tensor(mask[None].astype(np.float32)))
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
    brain_extraction: str = "threshold",
    target_key: str = "label",
) -> list:
    """The one preprocessing chain of training, validation, evaluation and inference (MONAI Label included).

    Items ``{"image": [input files], "label": target file (optional), "mask": brain mask file (optional), "id"}``:
    load and check every file (``LoadEntryd``: readable, 3D, finite, one grid; errors name the entry and file),
    reorient to RAS, optionally resample to ``pixdim``, take the datalist's brain mask when the item has one and
    derive it otherwise: ``brain_extraction`` ``"threshold"`` thresholds the inputs (``DeriveBrainMaskd``, for
    skull-stripped inputs), ``"deepbet"`` extracts the brain of a whole-head T1w (``ExtractBrainMaskd``, the
    ``t1w`` input or the first); degrade the
    inputs by ``degrade_factor`` (super-resolution task), normalise every input channel inside the mask
    (``NormalizeIntensityInMaskd``), append the per-voxel ``prior``'s prediction as a channel when one is given
    (``custom_nets.prior``), scale the target from ``target_range`` to [0, 1] and zero it outside the mask. A target
    whose brain values do not fit ``target_range`` (other units) is refused (``CheckTargetRanged``). Errors name the
    datalist's keys: ``input_keys`` and ``target_key``.

    Returns:
        a list of MONAI dictionary transforms (append augmentation for training, or wrap in ``Compose``).
    """
    from monai.transforms import MaskIntensityd, Orientationd, ScaleIntensityRanged, Spacingd

    from custom_nets.prior import AppendPriord

    if brain_extraction not in BRAIN_EXTRACTIONS:
        raise ValueError(f"brain_extraction must be one of {BRAIN_EXTRACTIONS}, got {brain_extraction!r}.")
    keys = ["image", "label", "mask"]
    contrasts = [CONTRASTS.get(str(key).lower(), "other") for key in input_keys]
    lowered = [str(key).lower() for key in input_keys]
    if brain_extraction == "deepbet":
        brain = ExtractBrainMaskd("image", "mask", channel=lowered.index("t1w") if "t1w" in lowered else 0)
    else:
        brain = DeriveBrainMaskd("image", "mask", threshold=mask_threshold)
    transforms = [
        # errors name the datalist's keys (t1w, pet), not the chain's (image, label)
        LoadEntryd(
            keys, channels={"image": len(input_keys)}, file_names={"image": list(input_keys), "label": [target_key]}
        ),
        Orientationd(keys, axcodes="RAS", allow_missing_keys=True),
    ]
    if pixdim is not None:
        transforms.append(
            Spacingd(keys, pixdim=pixdim, mode=["bilinear", "bilinear", "nearest"], allow_missing_keys=True)
        )
    return transforms + [
        brain,
        CheckTargetRanged("label", "mask", target_range),
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


class CheckTargetRanged(MapTransform):
    """Refuse a target in other units than the task's ``target_range`` (``target_min``, ``target_max`` of the task's
    overlay), which training would otherwise fit without a word: FA in percent, MD in mm²/s instead of 10⁻³ mm²/s, PET
    in kBq/mL instead of SUVR. Judged on the brain (``mask_key``): the 99th percentile must lie above
    ``target_min + low_fraction·span`` and below ``target_max + high_fraction·span`` (span = ``target_max −
    target_min``), so values a little outside the range (a hot PET voxel) pass. Items without the key pass unchanged.

    Raises:
        ValueError: naming the file, the percentile found and the range expected.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        target_range: Sequence[float] = (0.0, 3.0),
        low_fraction: float = 0.01,
        high_fraction: float = 1.0,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.mask_key, self.target_range = mask_key, (float(target_range[0]), float(target_range[1]))
        self.low_fraction, self.high_fraction = float(low_fraction), float(high_fraction)

    def __call__(self, data: Mapping) -> dict:
        low, high = self.target_range
        span = high - low
        for key in self.key_iterator(data):
            values = np.asarray(torch.as_tensor(data[key]).detach().cpu(), dtype=np.float64)
            mask = (
                np.asarray(torch.as_tensor(data[self.mask_key]).detach().cpu()) > 0 if self.mask_key in data else None
            )
            brain = values[np.broadcast_to(mask, values.shape)] if mask is not None and mask.any() else values.ravel()
            top = float(np.percentile(brain, 99))
            if not low + self.low_fraction * span < top < high + self.high_fraction * span:
                raise ValueError(
                    f"{_source(data, key)}: the target's 99th percentile in the brain is {top:.4g}, expected within "
                    f"target_min {low:g} to target_max {high:g} (the task's units; other units, e.g. FA in percent or "
                    "MD in mm^2/s, train a wrong model). Convert the target, or set target_min/target_max (in a task "
                    "overlay) to its range."
                )
        return dict(data)
