# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Bring one subject's scans, each in its own space, onto the T1w grid: rigid co-registration (ITK, mutual
information), optional N4 bias-field correction and resampling, with a JSON sidecar of what was done
(``custom_nets.datasets.preprocessing``).

    python -m custom_nets.preprocess --subject sub-01 --image t1w=T1w.nii.gz --image flair=FLAIR.nii.gz \\
        --image mask=brainmask.mgz --out prepared/sub-01/anat [--voxel-size 1] [--n4]

Writes ``<subject>_<suffix>.nii.gz`` for every image (``T1w``, ``FLAIR``, ``mask``: BIDS' names) and
``<subject>.json``; with ``--out <dir>/sub-01/anat`` the folder ``<dir>`` is what ``python -m custom_nets.predict
--input <dir>`` reads.
"""

from __future__ import annotations

import argparse
import sys

from custom_nets.config_check import number_at_least
from custom_nets.datasets.preprocessing import preprocess_subject

__all__ = ["main"]


def _parse_image(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--image {text!r}: expected KEY=FILE, e.g. flair=sub-01_FLAIR.nii.gz")
    key, path = text.split("=", 1)
    return key.strip(), path.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--subject", required=True, help="entry id of the outputs, e.g. sub-01 or sub-01_ses-1")
    parser.add_argument("--image", type=_parse_image, action="append", required=True, help="KEY=FILE, repeatable")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--reference", default="t1w", help="the key whose grid every image is brought onto")
    parser.add_argument(
        "--voxel-size",
        type=number_at_least(0, inclusive=False),
        help="isotropic voxel size in mm (default: the reference's grid)",
    )
    parser.add_argument("--n4", action="store_true", help="N4 bias-field correction of the MR contrasts")
    parser.add_argument("--mask-key", action="append", default=None, help="keys that are masks (default: mask)")
    args = parser.parse_args(argv)
    images = dict(args.image)
    if len(images) != len(args.image):
        parser.error("--image: each key may be given once.")
    try:
        written = preprocess_subject(
            images, args.out, args.subject, args.reference, args.voxel_size, args.n4, tuple(args.mask_key or ["mask"])
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
