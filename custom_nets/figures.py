# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Dependency-free figures: a PNG writer (zlib) and three-plane montages of 3D volumes."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from custom_nets.io import atomic_write_bytes

__all__ = ["encode_png", "write_png", "three_plane_tiles", "montage"]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 image."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a (H, W) or (H, W, 3) uint8 image, got {image.dtype} {image.shape}.")
    height, width = image.shape[:2]
    colour_type = 0 if image.ndim == 2 else 2
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray) -> Path:
    return atomic_write_bytes(path, encode_png(image))


def _to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.clip(image, low, high) - low) / max(high - low, 1e-12)
    return (scaled * 255).round().astype(np.uint8)


def three_plane_tiles(volume: np.ndarray, low: float, high: float, centre: Sequence[int] | None = None) -> np.ndarray:
    """Axial, coronal and sagittal slices through ``centre`` of a RAS ``(X, Y, Z)`` volume, side by side, as uint8.

    Slices are rotated so that anterior/superior point up, as radiological viewers show them."""
    centre = [s // 2 for s in volume.shape] if centre is None else centre
    axial = np.rot90(volume[:, :, centre[2]])
    coronal = np.rot90(volume[:, centre[1], :])
    sagittal = np.rot90(volume[centre[0], :, :])
    height = max(t.shape[0] for t in (axial, coronal, sagittal))
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 2))) for t in (axial, coronal, sagittal)]
    return _to_uint8(np.concatenate(padded, axis=1), low, high)


def montage(volumes: Sequence[np.ndarray], ranges: Sequence[tuple[float, float]], centre=None) -> np.ndarray:
    """One row of three planes per volume, each scaled to its ``(low, high)`` display range."""
    rows = [three_plane_tiles(v, lo, hi, centre) for v, (lo, hi) in zip(volumes, ranges)]
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]))) for r in rows], axis=0)
