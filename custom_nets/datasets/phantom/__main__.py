"""python -m custom_nets.datasets.phantom --out DIR --subjects N --seed S [--resolution 2]"""

from __future__ import annotations

import argparse

from custom_nets.datasets.phantom.dataset import generate_dataset
from custom_nets.datasets.phantom.subject import TRACERS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m custom_nets.datasets.phantom",
        description="Write synthetic multimodal brain subjects (NIfTI), their latent variables and a datalist.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--subjects", type=int, default=12, help="number of subjects (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--resolution", type=int, default=2, choices=(1, 2), help="voxel size in mm (default 2)")
    parser.add_argument("--tracer", default="florbetapir", choices=sorted(TRACERS), help="amyloid tracer")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="subject fractions of the training, validation and test lists (default 0.8 0.1 0.1)",
    )
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error(f"--subjects must be at least 1, got {args.subjects}")
    try:
        path = generate_dataset(
            args.out, args.subjects, args.seed, args.resolution, args.tracer, not args.quiet, tuple(args.split)
        )
    except ValueError as error:
        parser.error(str(error))
    print(path)


if __name__ == "__main__":
    main()
