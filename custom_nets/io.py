# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Atomic file writing: write to a temporary name in the same folder, then rename, so no file is ever half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_nifti",
    "atomic_write_bytes",
    "sha256_of",
    "read_json",
]


def _publish(temporary: str, path: Path) -> None:
    """Give the temporary file the permissions a plain ``open`` would (mkstemp makes it 0600), then rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        _publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Save ``array`` as NIfTI (``.nii`` or ``.nii.gz``) with ``affine`` (sform and qform code 1, scanner/MNI)."""
    path = Path(path)
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    # nibabel picks the compression from the suffix, so the temporary name keeps it.
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        nib.save(image, temporary)
        _publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
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
    return json.loads(path.read_text(encoding="utf-8"))
