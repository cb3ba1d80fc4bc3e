# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Prepare released weights for the Model Zoo: export TorchScript next to ``models/model.pt`` (optional) and write
``large_files.yml`` with the download URL and SHA-256 of every weight file, as the zoo's ``download_large_files``
reads it. Weights are never committed (the zoo caps files at 25 MB; ours are ~28 MB); upload them to the URL
given here (for example a GitHub release) before publishing the bundle.

    python -m custom_nets.release --bundle bundle --url-base https://github.com/ORG/REPO/releases/download/v0.1.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from custom_nets.io import atomic_write_text, sha256_of

__all__ = ["write_large_files"]

WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx")


def write_large_files(bundle: str | Path, url_base: str) -> Path:
    """Write ``bundle/large_files.yml`` for every weight file in ``bundle/models``; returns its path."""
    bundle = Path(bundle)
    if not url_base.startswith(("https://", "http://")):
        raise ValueError(f"--url-base must be an http(s) URL, got {url_base!r}.")
    weights = sorted(p for p in (bundle / "models").glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise FileNotFoundError(f"{bundle / 'models'}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to release.")
    entries = [
        {
            "path": f"models/{p.name}",
            "url": f"{url_base.rstrip('/')}/{p.name}",
            "hash_val": sha256_of(p),
            "hash_type": "sha256",
        }
        for p in weights
    ]
    # JSON is valid YAML: no YAML writer needed, and every YAML reader (the zoo's included) parses it
    lines = ["large_files:"] + [f"  - {json.dumps(entry)}" for entry in entries]
    return atomic_write_text(bundle / "large_files.yml", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m custom_nets.release", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="bundle")
    parser.add_argument("--url-base", required=True, help="where the weight files will be downloadable")
    args = parser.parse_args(argv)
    print(f"written: {write_large_files(args.bundle, args.url_base)}")


if __name__ == "__main__":
    main()
