# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""A per-voxel prior for the generator: the cubic polynomial of the normalised input intensities, fitted on the
training subjects, given to the network as one more input channel (``per_voxel_prior: true``).

Why: on targets that are mostly a function of the voxel's tissue mix (MD, FA) the cubic polynomial is a strong
baseline that a patch-trained generator reaches only slowly; with the polynomial's prediction as an input the network
starts from it and has to learn only what the polynomial cannot express (context, regional effects). The fitted
coefficients are stored beside the weights (``models/prior_<task>.json``) and inference reads them from there.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform

from custom_nets.io import atomic_write_json

__all__ = ["fit_prior", "load_prior", "load_or_fit_prior", "AppendPriord"]

PRIOR_FORMAT = "scgan-per-voxel-prior/1"


def fit_prior(
    datalist: str | Path, input_keys: Sequence[str], target_key: str, normalization: str = "percentile"
) -> dict:
    """Fit ``custom_nets.baselines.CubicPolynomial`` on the datalist's ``training`` subjects (inputs normalised as the
    bundle does) and return it as a JSON-ready dict."""
    from custom_nets.baselines import CubicPolynomial, _subject

    datalist = Path(datalist)
    content = json.loads(datalist.read_text(encoding="utf-8"))
    training = [
        _subject(entry, datalist.parent, list(input_keys), target_key, normalization) for entry in content["training"]
    ]
    model = CubicPolynomial().fit([t[0] for t in training], [t[1] for t in training], [t[2] for t in training])
    return {
        "format": PRIOR_FORMAT,
        "kind": "cubic_polynomial",
        "degree": model.degree,
        "coefficients": [float(c) for c in model.coefficients],
        "input_keys": list(input_keys),
        "target_key": target_key,
        "normalization": normalization,
        "training_subjects": [e.get("subject", e.get("id")) for e in content["training"]],
    }


def load_prior(path: str | Path, input_keys: Sequence[str] | None = None, normalization: str | None = None) -> dict:
    """Read a prior written by ``load_or_fit_prior``.

    Raises:
        FileNotFoundError: ``path`` does not exist (train with ``per_voxel_prior: true`` first; it is written beside
            the weights).
        ValueError: the file is not a prior, or was fitted for other inputs or another normalisation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"per-voxel prior {path} not found: it is written by training with per_voxel_prior true, beside the "
            "weights; copy it with the model."
        )
    prior = json.loads(path.read_text(encoding="utf-8"))
    if prior.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{path} is not a per-voxel prior (format {prior.get('format')!r}, expected {PRIOR_FORMAT}).")
    for key, expected in (("input_keys", list(input_keys) if input_keys else None), ("normalization", normalization)):
        if expected is not None and prior[key] != expected:
            raise ValueError(f"{path}: fitted for {key} {prior[key]!r}, but the config has {expected!r}.")
    return prior


def load_or_fit_prior(
    path: str | Path,
    datalist: str | Path,
    input_keys: Sequence[str],
    target_key: str,
    normalization: str = "percentile",
) -> dict:
    """The prior at ``path`` when it matches the task (a resumed run), else a new fit written there atomically."""
    path = Path(path)
    if path.is_file():
        prior = load_prior(path)
        if (prior["input_keys"], prior["target_key"], prior["normalization"]) == (
            list(input_keys),
            target_key,
            normalization,
        ):
            return prior
    prior = fit_prior(datalist, input_keys, target_key, normalization)
    atomic_write_json(path, prior)
    return prior


class AppendPriord(MapTransform):
    """Append the prior's prediction, scaled from ``target_range`` to [0, 1] and clipped, as the last channel of
    ``keys`` (after ``NormalizeIntensityInMaskd``); zero outside the mask. ``prior=None`` leaves the data unchanged.

    Shapes: ``image`` ``(C, *spatial)`` → ``(C + 1, *spatial)``; ``mask`` ``(1, *spatial)``.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "image",
        mask_key: str = "mask",
        prior: Mapping | None = None,
        target_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__(keys)
        self.mask_key, self.prior, self.target_range = mask_key, prior, tuple(float(v) for v in target_range)
        if prior is not None:
            from custom_nets.baselines import CubicPolynomial

            self.model = CubicPolynomial(int(prior["degree"]))
            self.model.coefficients = np.asarray(prior["coefficients"], dtype=np.float64)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.prior is None:
            return d
        from custom_nets.transforms import _like

        mask = np.asarray(torch.as_tensor(d[self.mask_key]).detach().cpu())[0] > 0
        low, high = self.target_range
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            values = np.asarray(image.detach().cpu(), dtype=np.float64)
            if values.shape[0] != len(self.prior["input_keys"]):
                raise ValueError(
                    f"the per-voxel prior was fitted on {len(self.prior['input_keys'])} input channels "
                    f"({self.prior['input_keys']}), the image has {values.shape[0]}."
                )
            prediction = np.clip((self.model.predict(values[:, mask], mask) - low) / (high - low), 0.0, 1.0)
            channel = torch.as_tensor(prediction * mask, dtype=image.dtype)[None]
            d[key] = _like(d[key], torch.cat([image.float(), channel.float()]))
        return d
