# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Check a synthetic cohort against literature values and draw a montage.

    python -m custom_nets.datasets.phantom.check DIR [--png FILE] [--subject sub-0000]

For every subject it measures tissue ratios and value ranges inside the regions of its label map and compares them with
the literature ranges below (widened a little for partial volume, noise and bias, which real measurements include as
well); it prints a table and exits with status 1 if any value is out of range. The montage shows three planes of every
modality of one subject.

Sources (collected in the project's data notes): T1w and FLAIR tissue ratios from BrainWeb and the IR spin-echo
signal equation at 3 T; amyloid PET from the Centiloid anchors (Klunk et al. 2015) and the florbetapir conversion;
FA from young-adult tract values (genu 0.68, splenium 0.73, PLIC 0.67) minus ageing; MD from Helenius et al. 2002
(cortex 0.89, deep GM 0.75, WM 0.70 ×10⁻³ mm²/s) and free water at 37 °C (3.0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from custom_nets.datasets.phantom.anatomy import REGION_LABELS
from custom_nets.datasets.phantom.dataset import DATALIST_NAME
from custom_nets.datasets.phantom.subject import MODALITIES, target_suvr
from custom_nets.evaluation.figures import three_plane_figure
from custom_nets.io import load_volume

__all__ = ["check_subject", "check_cohort", "EXPECTED"]

# metric | low | high | what it is (the literature range, widened a little for partial volume, noise and bias)
_EXPECTED_TABLE = """
t1_gm_wm            |  0.55 | 0.85 | T1w cortical GM / WM (pure tissue 0.60–0.75)
t1_csf_wm           |  0.12 | 0.45 | T1w ventricles / WM (pure 0.20–0.36)
flair_gm_wm         |  0.95 | 1.45 | FLAIR cortical GM / WM (1.10–1.35; sulcal CSF lowers it)
flair_csf_wm        |  0.00 | 0.35 | FLAIR ventricles / WM, CSF nulled (0.03–0.20)
flair_wmh_wm        |  1.15 | 2.60 | FLAIR lesions / WM (1.6–2.5; thin lesions mix with WM and ventricles)
pet_reference       |  0.97 | 1.03 | PET SUVR in the cerebellar reference (1 by definition)
pet_composite_error | -0.03 | 0.03 | composite SUVR minus the tracer's Centiloid equation
pet_wm_reference    |  1.10 | 2.00 | PET white matter / cerebellum (nonspecific binding)
fa_wm               |  0.30 | 0.55 | FA, white matter median (deep WM 0.40–0.50, minus ageing)
fa_cc               |  0.45 | 0.80 | FA, corpus callosum mean (0.60–0.80, minus ageing)
fa_cortex           |  0.05 | 0.30 | FA, cortical GM median (0.10–0.20)
md_wm               |  0.60 | 0.95 | MD, white matter median (0.62–0.79 ×1e-3, +0.3–0.5 %/year after 40)
md_cortex           |  0.75 | 1.35 | MD, cortical GM median (0.85–0.90 ×1e-3, ageing, CSF partial volume)
md_ventricles       |  2.40 | 3.40 | MD, ventricles median (free water 2.9–3.2 ×1e-3)
brain_ml            |  1000 | 2600 | brain mask volume in ml (MNI-sized brains are ~20 % larger than native ones)
"""
EXPECTED = {
    name: (float(low), float(high), text)
    for name, low, high, text in (
        [cell.strip() for cell in row.split("|")] for row in _EXPECTED_TABLE.strip().splitlines()
    )
}
DISPLAY_RANGES = {"mask": (0, 1), "pet": (0, 2.5), "fa": (0, 0.8), "md": (0, 3.2), "labels": (0, len(REGION_LABELS))}
UNITS = dict(t1w="a.u.", flair="a.u.", mask="brain", pet="SUVR", fa="FA", md="10⁻³ mm²/s", labels="label")


def _load(path: Path) -> np.ndarray:
    return load_volume(path)[0]


def check_subject(volumes: dict[str, np.ndarray], latents: dict, voxel_ml: float) -> dict[str, float]:
    """The ``EXPECTED`` metrics of one subject from its volumes (``MODALITIES`` keys) and latent variables."""
    labels, mask = volumes["labels"], volumes["mask"] > 0
    if not mask.any():
        raise ValueError(f"{latents.get('subject')}: the brain mask is empty.")

    def region(*names: str) -> np.ndarray:
        return np.isin(labels, [REGION_LABELS[n] for n in names]) & mask

    cortex, wm, ventricles = (
        region("cortex_amyloid_prone", "cortex_other"),
        region("white_matter_other"),
        region("ventricles"),
    )
    wmh, cerebellum, cc = region("wmh"), region("cerebellum"), region("cc_genu", "cc_body", "cc_splenium")
    t1, flair, pet, fa, md = (volumes[k].astype(np.float64) for k in ("t1w", "flair", "pet", "fa", "md"))
    t1_wm, flair_wm = np.median(t1[wm]), np.median(flair[wm])
    composite = pet[region("cortex_amyloid_prone")].mean() / pet[cerebellum].mean()
    metrics = {
        "t1_gm_wm": np.median(t1[cortex]) / t1_wm,
        "t1_csf_wm": np.median(t1[ventricles]) / t1_wm,
        "flair_gm_wm": np.median(flair[cortex]) / flair_wm,
        "flair_csf_wm": np.median(flair[ventricles]) / flair_wm,
        "flair_wmh_wm": np.median(flair[wmh]) / flair_wm if wmh.sum() >= 5 else float("nan"),
        "pet_reference": pet[cerebellum].mean(),
        "pet_composite_error": composite - target_suvr(latents["centiloid"], latents["tracer"]),
        "pet_wm_reference": np.median(pet[wm]) / pet[cerebellum].mean(),
        "fa_wm": np.median(fa[wm]),
        "fa_cc": fa[cc].mean(),
        "fa_cortex": np.median(fa[cortex]),
        "md_wm": np.median(md[wm]),
        "md_cortex": np.median(md[cortex]),
        "md_ventricles": np.median(md[ventricles]),
        "brain_ml": mask.sum() * voxel_ml,
    }
    return {k: float(v) for k, v in metrics.items()}


def _finite_ranges(volumes: dict[str, np.ndarray]) -> list[str]:
    problems = []
    bounds = {"pet": (0, 5), "fa": (0, 1), "md": (0, 4)}
    for key, volume in volumes.items():
        if not np.isfinite(volume).all():
            problems.append(f"{key} has non-finite values")
        if key in bounds and (volume.min() < bounds[key][0] or volume.max() > bounds[key][1]):
            problems.append(f"{key} outside {bounds[key]}: [{volume.min():.3g}, {volume.max():.3g}]")
    return problems


def check_cohort(data_dir: str | Path, png: str | Path | None = None, subject: str | None = None) -> tuple[list, bool]:
    """Check every subject of ``data_dir/datalist.json``; returns (rows, all_ok). Writes the montage if ``png``."""
    data_dir = Path(data_dir)
    datalist_path = data_dir / DATALIST_NAME
    if not datalist_path.is_file():
        raise FileNotFoundError(
            f"{datalist_path} not found: expected a folder written by python -m custom_nets.datasets.phantom."
        )
    datalist = json.loads(datalist_path.read_text(encoding="utf-8"))
    entries = [e for part in ("training", "validation", "test") for e in datalist.get(part, [])]
    rows, all_ok = [], True
    for entry in sorted(entries, key=lambda e: e["subject"]):
        volumes = {m: _load(data_dir / entry[m]) for m in MODALITIES}
        latents = json.loads((data_dir / entry["latents"]).read_text(encoding="utf-8"))
        voxel_ml = abs(float(np.linalg.det(load_volume(data_dir / entry["mask"])[1][:3, :3]))) / 1000
        metrics = check_subject(volumes, latents, voxel_ml)
        failures = [k for k, v in metrics.items() if np.isfinite(v) and not EXPECTED[k][0] <= v <= EXPECTED[k][1]]
        failures += _finite_ranges(volumes)
        all_ok &= not failures
        rows.append({"subject": entry["subject"], "metrics": metrics, "failures": failures})
        if png is not None and (subject is None or subject == entry["subject"]) and not Path(png).exists():
            display = {
                m: DISPLAY_RANGES.get(m, (0, float(np.percentile(volumes[m][volumes["mask"] > 0], 99.5))))
                for m in MODALITIES
            }
            volumes_f32 = {m: volumes[m].astype(np.float32) for m in MODALITIES}
            three_plane_figure(
                png, volumes_f32, display, UNITS, f"{entry['subject']}: synthetic subject, voxel indices"
            )
    return rows, all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m custom_nets.datasets.phantom.check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("data_dir", help="folder written by python -m custom_nets.datasets.phantom")
    parser.add_argument("--png", help="montage file (default DIR/montage_<subject>.png)")
    parser.add_argument("--subject", help="subject of the montage (default: the first)")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    subject = args.subject
    if subject is None:
        datalist = (
            json.loads((data_dir / DATALIST_NAME).read_text(encoding="utf-8"))
            if (data_dir / DATALIST_NAME).is_file()
            else {}
        )
        subject = min(
            (e["subject"] for p in ("training", "validation", "test") for e in datalist.get(p, [])), default=None
        )
    png = Path(args.png) if args.png else data_dir / f"montage_{subject}.png"
    png.unlink(missing_ok=True)
    rows, ok = check_cohort(data_dir, png, subject)

    names = list(EXPECTED)
    print("| metric | expected | " + " | ".join(r["subject"] for r in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for name in names:
        low, high, _ = EXPECTED[name]
        cells = []
        for r in rows:
            value = r["metrics"][name]
            flag = "" if not np.isfinite(value) or low <= value <= high else " **out**"
            cells.append(("—" if not np.isfinite(value) else f"{value:.3g}") + flag)
        print(f"| {name} | {low:g}–{high:g} | " + " | ".join(cells) + " |")
    for r in rows:
        for failure in r["failures"]:
            print(f"FAIL {r['subject']}: {failure}: {EXPECTED[failure][2] if failure in EXPECTED else ''}")
    print(f"montage: {png}")
    print("all values within the literature ranges" if ok else "some values are out of range", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
