# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""File input and output with the project's guarantees: writes are atomic (a temporary name in the same folder, then
a rename, so no file is ever half-written), and every read of a user's file either returns checked content or raises
one error naming the file and what was expected."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_nifti",
    "atomic_write_bytes",
    "atomic_torch_save",
    "read_checkpoint",
    "remove_stale_temporaries",
    "sha256_of",
    "read_json",
    "load_volume",
    "check_same_grid",
    "AFFINE_TOLERANCE_MM",
]

# largest difference between two affines (mm, or mm per voxel for the linear part) still taken as the same grid
AFFINE_TOLERANCE_MM = 1e-2


# temporaries are named ".<final name>.<writer pid>.<random><suffix>", so a later run can tell stale ones (their
# writer is gone: killed during a save) from those of a writer still running
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}(?P<suffix>\.tmp|\.nii|\.nii\.gz)$")


@contextlib.contextmanager
def _atomic(path: Path, suffix: str = ".tmp") -> Iterator[str]:
    """Yield the name of a new empty file beside ``path``; when the block succeeds it becomes ``path`` in one rename
    (with the permissions a plain ``open`` would give; mkstemp makes 0600), when it fails it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of this project's atomic writes in ``folder`` whose writing process no longer exists
    (left by a run killed during a save); returns them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group("pid"))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, with the permissions a plain ``open`` would give."""
    path = Path(path)
    with _atomic(path) as temporary:
        torch.save(obj, temporary)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (tensors and plain containers only, never pickled code), with errors
    that name the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is truncated, not a PyTorch checkpoint, or holds objects other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        folder = path.parent.glob("*.pt") if path.parent.is_dir() else []
        others = sorted(p.name for p in folder if not p.name.startswith("resume"))  # weights, not training states
        hint = (
            f"; its folder holds {', '.join(others)}: trained with another task overlay or none (train.json alone "
            "writes model.pt, with tasks/<task>.json model_<task>.pt)? Give the same overlay, or --ckpt_name"
            if others
            else " (train first, or give its path)"
        )
        raise FileNotFoundError(f"checkpoint {path} does not exist{hint}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip, unpickling and weights-only errors all mean the same to the user
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {reason}); it is truncated, not a PyTorch "
            "file, or holds more than tensors. Copy or train it again."
        ) from None


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder renamed over it, so that a reader or
    a crash never sees a half-written file. Returns ``path``.

    Raises:
        OSError: the folder does not exist or is not writable (the temporary file is removed).
    """
    path = Path(path)
    with _atomic(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8. Returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """``atomic_write_text`` of ``data`` as JSON indented by 2, with a final newline. Returns ``path``."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Save ``array`` as NIfTI (``.nii`` or ``.nii.gz``) with ``affine`` (sform and qform code 1, scanner/MNI)."""
    path = Path(path)
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    # nibabel picks the compression from the suffix, so the temporary name keeps it.
    with _atomic(path, ".nii.gz" if path.name.endswith(".nii.gz") else ".nii") as temporary:
        nib.save(image, temporary)
    return path


def read_json(path: str | os.PathLike, what: str, hint: str) -> Any:
    """The JSON content of ``path``, a file the user supplies.

    Raises:
        FileNotFoundError: ``path`` is not a file; the message names it as ``what`` and says how to get one
            (``hint``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found: {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path} is not valid JSON ({error}); {hint}") from None


def _reader_for(path: Path):
    """nibabel for NIfTI and FreeSurfer files (ITK cannot read .mgz), MONAI's choice otherwise."""
    from monai.data import NibabelReader

    return NibabelReader() if path.name.lower().endswith((".nii", ".nii.gz", ".mgz", ".mgh")) else None


def load_volume(
    path: str | os.PathLike,
    what: str = "",
    channel_first: bool = False,
    volumes_as_channels: bool = False,
    axcodes: str | None = None,
) -> Any:
    """Read one image file through MONAI's ``LoadImage`` and check it is one finite 3D volume.

    Trailing axes of length 1 (a volume stored as (x, y, z, 1)) are dropped.

    Args:
        path: NIfTI (``.nii``, ``.nii.gz``), FreeSurfer (``.mgz``, ``.mgh``) or any format ITK reads.
        what: where the file comes from (e.g. ``"entry sub-01, key 't1w'"``), put at the start of every error.
        channel_first: return a ``MetaTensor`` of shape ``(C, x, y, z)`` with MONAI's metadata (for the bundle's
            transforms) instead of ``(numpy array (x, y, z) float64, 4×4 affine)``.
        volumes_as_channels: with ``channel_first``, accept a 4D file (x, y, z, C), e.g. T1w and FLAIR stacked in one
            file, as C channels.
        axcodes: reorient to these axis codes (e.g. ``"RAS"``, MONAI's ``Orientation``) so that two files of one grid
            stored in different voxel orders compare equal.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read (truncated, not an image), is not 3D (a 2D slice, or a 4D file with
            several volumes), or holds NaN or infinite values; the message names the file.
    """
    from monai.transforms import LoadImage

    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if not path.exists():
        raise FileNotFoundError(f"{label} does not exist.")
    try:
        image = LoadImage(reader=_reader_for(path), image_only=True)(str(path))
    except Exception as error:  # every reader failure (truncated gzip, wrong format) is reported with its file
        reason = str(error).strip().splitlines()[-1][:300] if str(error).strip() else ""
        raise ValueError(f"{label} cannot be read as an image ({type(error).__name__}: {reason}).") from None
    shape = tuple(image.shape)
    while image.ndim > 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 4 and channel_first and volumes_as_channels:
        pass
    elif image.ndim != 3:
        several = image.ndim == 4
        raise ValueError(
            f"{label} has shape {shape} ({image.ndim}D{f' with {shape[-1]} volumes' if several else ''}); expected one "
            "3D volume (x, y, z)."
            + (
                " Split it into one file per volume (e.g. with nibabel or fslsplit), one input key each."
                if several
                else ""
            )
        )
    finite = torch.isfinite(torch.as_tensor(image))
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{label} holds {bad} non-finite values (NaN or inf) of {finite.numel()}; replace them (e.g. "
            "numpy.nan_to_num) before using the file."
        )
    from monai.transforms import EnsureChannelFirst, Orientation

    image = EnsureChannelFirst(channel_dim=-1 if image.ndim == 4 else "no_channel")(image)
    if axcodes is not None:
        image = Orientation(axcodes=axcodes)(image)
    if channel_first:
        return image
    return np.asarray(image[0], dtype=np.float64), np.asarray(image.affine, dtype=np.float64)


def check_same_grid(
    label: str,
    shape: tuple,
    affine: np.ndarray,
    reference_label: str,
    reference_shape: tuple,
    reference_affine: np.ndarray,
    tolerance: float = AFFINE_TOLERANCE_MM,
) -> None:
    """Raise a ValueError naming both files when ``label``'s voxel grid (shape and affine) is not the reference's.

    Args:
        shape, reference_shape: spatial shapes.
        affine, reference_affine: 4×4 voxel-to-world matrices (mm).
        tolerance: largest accepted absolute difference of any affine entry (mm).
    """
    if tuple(shape) != tuple(reference_shape):
        raise ValueError(
            f"{label} has shape {tuple(shape)}, but {reference_label} has {tuple(reference_shape)}; every image of "
            "an entry must be on one voxel grid (register and resample it to the T1w, e.g. with MONAI's "
            "ResampleToMatch)."
        )
    difference = float(np.abs(np.asarray(affine, dtype=np.float64) - np.asarray(reference_affine)).max())
    if difference > tolerance:
        raise ValueError(
            f"{label}: its affine differs from {reference_label}'s by up to {difference:.3g} mm (tolerance "
            f"{tolerance} mm); the images are not on one voxel grid (register and resample them to the T1w)."
        )
