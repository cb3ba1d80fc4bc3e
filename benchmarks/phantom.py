"""Generation speed of the synthetic subjects on one core (synthesis alone, and with writing the NIfTI files).

    python benchmarks/phantom.py                      # 8 subjects at 2 mm, one thread
    python benchmarks/phantom.py --subjects 4 --resolution 1

Target: at least one subject per second at 2 mm on one core. Prints a table and one JSON line.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: set before numpy/torch start their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from custom_nets.datasets.phantom.anatomy import load_template  # noqa: E402
from custom_nets.datasets.phantom.subject import sample_latents, synthesise_subject  # noqa: E402
from custom_nets.io import atomic_save_nifti  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=2, choices=(1, 2))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    template = load_template(args.resolution)
    template_s = time.perf_counter() - start
    synth, write = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.subjects):
            rng = np.random.default_rng([args.seed, index])
            start = time.perf_counter()
            volumes = synthesise_subject(template, sample_latents(f"sub-{index:04d}", [args.seed, index], rng), rng)
            synth.append(time.perf_counter() - start)
            start = time.perf_counter()
            for name, volume in volumes.items():
                atomic_save_nifti(os.path.join(folder, f"{index}_{name}.nii.gz"), volume, template.affine)
            write.append(time.perf_counter() - start)
    synth_s, write_s = float(np.median(synth)), float(np.median(write))
    files = len(volumes)
    print(f"| resolution | grid | template (once) | synthesis / subject | + writing {files} NIfTI.gz | subjects / s |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.resolution} mm | {'×'.join(map(str, template.shape))} | {template_s:.1f} s | {synth_s:.2f} s "
        f"| {synth_s + write_s:.2f} s | {1 / synth_s:.2f} (synthesis), {1 / (synth_s + write_s):.2f} (with writing) |"
    )
    print(
        json.dumps(
            {
                "benchmark": "phantom",
                "resolution_mm": args.resolution,
                "threads": 1,
                "subjects": args.subjects,
                "template_s": template_s,
                "synthesis_s_median": synth_s,
                "write_s_median": write_s,
                "files_per_subject": files,
                "subjects_per_s_synthesis": 1 / synth_s,
                "subjects_per_s_with_writing": 1 / (synth_s + write_s),
                "target_met": 1 / synth_s >= 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
