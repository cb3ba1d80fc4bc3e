# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""A per-voxel prior for the generator: the cubic polynomial of the normalised input intensities, fitted on the
training items when training starts, given to the network as one more input channel (``per_voxel_prior: true``).

Why: on targets that are mostly a function of the voxel's tissue mix (MD, FA) the cubic polynomial is a strong
baseline that a patch-trained generator reaches only slowly; with the polynomial's prediction as an input the network
starts from it and has to learn only what the polynomial cannot express (context, regional effects). The fitted
coefficients are stored beside the weights (``models/prior_<task>.json``) and inference reads them from there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform

from custom_nets.io import atomic_write_json, read_json

__all__ = [
    "CubicPolynomial",
    "fit_prior",
    "load_prior",
    "load_or_fit_prior",
    "training_data_fingerprint",
    "AppendPriord",
]

PRIOR_FORMAT = "scgan-per-voxel-prior/1"
logger = logging.getLogger(__name__)


class CubicPolynomial:
    """Least-squares polynomial of degree ``degree`` (with cross terms) of the input intensities, fitted on brain
    voxels: ``fit(inputs [(C, N)], targets [volumes], masks [volumes])``, ``predict(inputs (C, N), mask)`` → volume.
    The per-voxel prior and the cubic-polynomial baseline (``custom_nets.evaluation.baselines``)."""

    def __init__(self, degree: int = 3) -> None:
        self.degree = degree

    def _features(self, x: np.ndarray) -> np.ndarray:
        columns = [np.ones(x.shape[1])]
        for order in range(1, self.degree + 1):
            for combination in itertools.combinations_with_replacement(range(x.shape[0]), order):
                columns.append(np.prod(x[list(combination)], axis=0))
        return np.stack(columns, axis=1)

    def fit(self, inputs: list[np.ndarray], targets: list[np.ndarray], masks: list[np.ndarray]) -> "CubicPolynomial":
        x = np.concatenate(inputs, axis=1)
        y = np.concatenate([t[m] for t, m in zip(targets, masks)])
        self.coefficients, *_ = np.linalg.lstsq(self._features(x), y, rcond=None)
        return self

    def predict(self, inputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.zeros(mask.shape)
        out[mask] = self._features(inputs) @ self.coefficients
        return out


def fit_prior(
    items: Sequence[Mapping],
    transforms: Sequence,
    input_keys: Sequence[str],
    normalization: str,
    target_key: str | None = None,
    target_range: Sequence[float] | None = None,
    preprocessing: Mapping[str, object] | None = None,
) -> dict:
    """Fit ``CubicPolynomial`` on training ``items`` (``{"image", "label", "mask"?}``, as the bundle's datasets hold
    them) after ``transforms`` (the bundle's preprocessing without the prior), so the polynomial sees exactly the
    network's normalised inputs; the target is in the preprocessed [0, 1] scale. The result records what it was fitted
    for (``input_keys``, ``normalization``, ``target_key``, ``target_range``, and ``preprocessing``: the other
    settings of ``transforms`` that change what the polynomial sees, e.g. ``{"pixdim": None, "degrade_factor": 1,
    "brain_extraction": "threshold"}``) and on (``training_data_fingerprint``), so that a later run can tell whether it
    still applies.

    Raises:
        ValueError: no items, or an item without a ``label``.
    """
    from monai.transforms import Compose

    if not items:
        raise ValueError("the per-voxel prior needs training items, got none.")
    chain = Compose(list(transforms))
    inputs, targets, masks = [], [], []
    for item in items:
        if "label" not in item:
            raise ValueError(f"the per-voxel prior needs a target ('label') in every training item, got {sorted(item)}")
        data = chain(dict(item))
        mask = np.asarray(torch.as_tensor(data["mask"]).detach().cpu())[0] > 0
        inputs.append(np.asarray(torch.as_tensor(data["image"]).detach().cpu(), dtype=np.float64)[:, mask])
        targets.append(np.asarray(torch.as_tensor(data["label"]).detach().cpu(), dtype=np.float64)[0])
        masks.append(mask)
    model = CubicPolynomial().fit(inputs, targets, masks)
    return {
        "format": PRIOR_FORMAT,
        "kind": "cubic_polynomial",
        "degree": model.degree,
        "coefficients": [float(c) for c in model.coefficients],
        "training_items": len(items),
        **_prior_identity(items, input_keys, normalization, target_key, target_range, preprocessing),
    }


def _prior_identity(
    items: Sequence[Mapping],
    input_keys: Sequence[str],
    normalization: str,
    target_key: str | None,
    target_range: Sequence[float] | None,
    preprocessing: Mapping[str, object] | None = None,
) -> dict:
    """What a prior is fitted for and on: recorded by ``fit_prior``, compared by ``load_or_fit_prior``."""
    return {
        "input_keys": list(input_keys),
        "preprocessing": _as_json(preprocessing or {}),
        "normalization": normalization,
        "target_key": target_key,
        "target_range": None if target_range is None else [float(v) for v in target_range],
        "training_data_fingerprint": training_data_fingerprint(items),
    }


def _as_json(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists), so that recorded and configured values compare."""
    return json.loads(json.dumps(value))


def training_data_fingerprint(items: Sequence[Mapping]) -> str:
    """SHA-256 (16 hex digits) of the training items' files: every path of ``image``, ``label`` and ``mask`` with its
    size and modification time, in a fixed order. Rewriting, replacing or adding a file changes it, reading the data
    does not (so checking it costs no more than listing the files). A file that does not exist counts as absent."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: str(i.get("label", i.get("image")))):
        for key in ("image", "label", "mask"):
            value = item.get(key)
            for name in [value] if isinstance(value, (str, Path)) else list(value or []):
                path = Path(name)
                stat = path.stat() if path.is_file() else None
                size, modified = (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)
                digest.update(f"{key}\0{path.absolute()}\0{size}\0{modified}\n".encode())
    return digest.hexdigest()[:16]


def load_prior(
    path: str | Path,
    input_keys: Sequence[str] | None = None,
    normalization: str | None = None,
    target_key: str | None = None,
    preprocessing: Mapping[str, object] | None = None,
) -> dict:
    """Read a prior written by ``load_or_fit_prior`` and check it was fitted for ``input_keys``, ``normalization``,
    ``target_key`` and each setting of ``preprocessing`` (inference.json gives ``{"pixdim": ...}``: another voxel size
    than training's would feed the network and the prior other inputs than they were fitted on).
    Each is checked when given; a prior that does not record one is not checked for it.

    Raises:
        FileNotFoundError: ``path`` does not exist (train with ``per_voxel_prior: true`` first; it is written beside
            the weights).
        ValueError: the file is not a prior, or was fitted for other inputs, another normalisation, another target or
            other preprocessing (the message names the id and both values).
    """
    path = Path(path)
    hint = "it is written by training with per_voxel_prior true, beside the weights; copy it with the model."
    prior = read_json(path, "per-voxel prior", hint)
    if prior.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{path} is not a per-voxel prior (format {prior.get('format')!r}, expected {PRIOR_FORMAT}).")
    expectations = (
        ("input_keys", list(input_keys) if input_keys else None),
        ("normalization", normalization),
        ("target_key", target_key),
    )
    for key, expected in expectations:
        if expected is not None and prior.get(key) is not None and prior[key] != expected:
            raise ValueError(f"{path}: fitted for {key} {prior[key]!r}, but the config has {expected!r}.")
    recorded = prior.get("preprocessing") or {}
    for key, expected in _as_json(dict(preprocessing or {})).items():
        if key in recorded and recorded[key] != expected:
            raise ValueError(
                f"{path}: the model was trained with {key} {recorded[key]!r}, but the config has {expected!r}; give "
                f"--{key} as in training."
            )
    return prior


def load_or_fit_prior(
    path: str | Path,
    items: Sequence[Mapping],
    transforms: Sequence,
    input_keys: Sequence[str],
    normalization: str,
    target_key: str | None = None,
    target_range: Sequence[float] | None = None,
    preprocessing: Mapping[str, object] | None = None,
) -> dict:
    """The prior at ``path`` when it was fitted for the same inputs, normalisation, target, target range and
    ``preprocessing`` settings (``fit_prior``) on the same training files (a resumed run, or a rerun on unchanged
    data); otherwise ``fit_prior`` on ``items``, written there atomically, with the reason logged: a prior left by
    another dataset, target, task or preprocessing is never reused.

    Raises:
        ValueError: as ``fit_prior``, or the file at ``path`` is not a per-voxel prior.
    """
    path = Path(path)
    if path.is_file():
        prior = load_prior(path)
        expected = _prior_identity(items, input_keys, normalization, target_key, target_range, preprocessing)
        differing = [key for key, value in expected.items() if prior.get(key) != value]
        if not differing:
            return prior
        logger.warning(
            "per-voxel prior %s was fitted for another %s; refitting it on the %d training items.",
            path,
            ", ".join(differing),
            len(items),
        )
    prior = fit_prior(items, transforms, input_keys, normalization, target_key, target_range, preprocessing)
    atomic_write_json(path, prior)
    return prior


class AppendPriord(MapTransform):
    """Append the prior's prediction (the target's [0, 1] scale), clipped to [0, 1], as the last channel of ``keys``
    (after ``NormalizeIntensityInMaskd``); zero outside the mask. ``prior=None`` leaves the data unchanged.

    Shapes: ``image`` ``(C, *spatial)`` → ``(C + 1, *spatial)``; ``mask`` ``(1, *spatial)``.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "image",
        mask_key: str = "mask",
        prior: Mapping | None = None,
    ) -> None:
        super().__init__(keys)
        self.mask_key, self.prior = mask_key, prior
        if prior is not None:

            self.model = CubicPolynomial(int(prior["degree"]))
            self.model.coefficients = np.asarray(prior["coefficients"], dtype=np.float64)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.prior is None:
            return d
        from custom_nets.transforms import _like

        mask = np.asarray(torch.as_tensor(d[self.mask_key]).detach().cpu())[0] > 0
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            values = np.asarray(image.detach().cpu(), dtype=np.float64)
            if values.shape[0] != len(self.prior["input_keys"]):
                raise ValueError(
                    f"the per-voxel prior was fitted on {len(self.prior['input_keys'])} input channels "
                    f"({self.prior['input_keys']}), the image has {values.shape[0]}."
                )
            prediction = np.clip(self.model.predict(values[:, mask], mask), 0.0, 1.0)
            channel = torch.as_tensor(prediction * mask, dtype=image.dtype)[None]
            d[key] = _like(d[key], torch.cat([image.float(), channel.float()]))
        return d
