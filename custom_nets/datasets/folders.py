# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Build and validate a datalist from a user's folder.

    python -m custom_nets.datasets.folders --root DIR --out DIR/datalist.json                       # BIDS-like layout
    python -m custom_nets.datasets.folders --root DIR --layout flat \\
        --key t1w='{subject}_T1w.nii.gz' --key flair='{subject}_FLAIR.nii.gz' --key pet='{subject}_pet.nii.gz'

Layouts:
    bids  ``DIR/sub-<id>/[ses-<s>/]<datatype>/sub-<id>[_ses-<s>]_..._<suffix>.<ext>``; each key is a glob relative to
          the subject folder (defaults below). Sessions become separate entries ``sub-<id>_ses-<s>`` of one subject.
    flat  one folder of files; each key is a pattern with a ``{subject}`` placeholder, except that a mask may be one
          file for every subject (a template brain mask of data in standard space, e.g. MNI152).

Files may be NIfTI, NRRD, MHA or a DICOM series folder (read through MONAI's ITK reader). Before anything is written,
every file is loaded and checked: it exists and is readable, a subject's modalities share the spatial shape and
affine (within ``--affine-tol`` mm), values are finite, masks are not empty, and no subject or file appears twice.
All problems are reported together, one line each naming the subject, key and file; then nothing is written. The
split is by subject (all sessions of a subject stay in one list), seeded, and the datalist is written atomically with
paths relative to its own folder, in MONAI's decathlon format.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from custom_nets.config_check import number_at_least
from custom_nets.data import split_subjects
from custom_nets.io import AFFINE_TOLERANCE_MM, atomic_write_json, check_same_grid, load_volume

__all__ = [
    "DatalistError",
    "find_subjects",
    "validate_subjects",
    "build_datalist",
    "folder_items",
    "BIDS_KEYS",
    "BIDS_QUERIES",
]

BIDS_KEYS = {
    "t1w": "anat/*_T1w.*",
    "flair": "anat/*_FLAIR.*",
    "mask": "anat/*_mask.*",
    "pet": "pet/*_pet.*",
    "fa": "dwi/*FA*.*",
    "md": "dwi/*MD*.*",
}
# --layout pybids: the BIDS entities of each key, queried with pybids over the raw dataset and its derivatives/
BIDS_QUERIES = {
    "t1w": {"suffix": "T1w", "datatype": "anat"},
    "flair": {"suffix": "FLAIR", "datatype": "anat"},
    "t2w": {"suffix": "T2w", "datatype": "anat"},
    "pd": {"suffix": "PDw", "datatype": "anat"},
    "mask": {"suffix": "mask", "desc": "brain"},
    "pet": {"suffix": "pet", "datatype": "pet"},
}
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd")


class DatalistError(ValueError):
    """Every problem found in a user's folder, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s), nothing was written:\n" + "\n".join(self.problems))


def _is_image(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(IMAGE_SUFFIXES)


def _pybids_subjects(root: Path, keys: Mapping[str, object]) -> tuple[dict, list[str]]:
    """``find_subjects`` for a BIDS dataset read by pybids (``dataset_description.json`` at its root; derivatives
    included, e.g. ``derivatives/<pipeline>/sub-XX/anat/sub-XX_desc-brain_mask.nii.gz``)."""
    try:
        from bids import BIDSLayout
        from bids.layout import Query
    except ImportError as error:
        raise DatalistError(["--layout pybids needs pybids: pip install pybids (or use --layout bids)."]) from error
    if not (root / "dataset_description.json").is_file():
        raise DatalistError([f"--root {root}: no dataset_description.json (not a BIDS dataset; use --layout bids)."])
    unnamed = [key for key in keys if key not in BIDS_QUERIES]
    if unnamed:
        raise DatalistError([f"--layout pybids: no BIDS query for key(s) {unnamed}; known: {sorted(BIDS_QUERIES)}."])
    bids = BIDSLayout(str(root), validate=False, derivatives=True)
    extensions = list(IMAGE_SUFFIXES)
    entries, problems = {}, []
    for subject in bids.get_subjects():
        for session in bids.get_sessions(subject=subject) or [None]:
            entry_id = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            entry = {"subject": f"sub-{subject}"}
            for key in keys:
                query = {**BIDS_QUERIES[key], "session": session or Query.NONE}
                matches = bids.get(subject=subject, extension=extensions, return_type="filename", **query)
                if not matches and session:  # e.g. one brain mask for all sessions, without a session entity
                    query["session"] = Query.NONE
                    matches = bids.get(subject=subject, extension=extensions, return_type="filename", **query)
                if len(matches) == 1:
                    entry[key] = Path(matches[0])
                elif not matches:
                    problems.append(f"{entry_id}: key '{key}': no file with BIDS entities {BIDS_QUERIES[key]}")
                else:
                    problems.append(f"{entry_id}: key '{key}': {len(matches)} files match: {', '.join(matches)}")
            entries[entry_id] = entry
    if not entries:
        raise DatalistError([f"--root {root}: pybids found no subjects."])
    return entries, problems


def find_subjects(
    root: str | Path, keys: Mapping[str, str], layout: str = "bids", shared_keys: Sequence[str] = ()
) -> tuple[dict, list[str]]:
    """Map ``{entry_id: {"subject": id, key: path, ...}}`` from ``root``; returns (entries, problems). Layouts:
    ``"bids"`` (BIDS-like, glob patterns by key), ``"flat"`` (patterns with ``{subject}``), ``"pybids"`` (a BIDS
    dataset read with pybids, ``BIDS_QUERIES`` by key, derivatives included).

    In the flat layout a key of ``shared_keys`` (the masks) may name one file without ``{subject}``: a template brain
    mask shared by every subject of data in standard space (e.g. MNI152).

    Raises:
        DatalistError: ``root`` is not a folder, no subject is found, a flat pattern lacks ``{subject}`` (and is not a
            shared key naming an existing file) or the layout is unknown.
    """
    root = Path(root)
    problems: list[str] = []
    entries: dict[str, dict] = {}
    if not root.is_dir():
        raise DatalistError([f"--root {root}: not a folder."])
    if layout == "pybids":
        return _pybids_subjects(root, keys)
    if layout == "bids":
        subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
        if not subject_dirs:
            raise DatalistError([f"--root {root}: no sub-* folders (expected a BIDS-like layout)."])
        for subject_dir in subject_dirs:
            sessions = sorted(p for p in subject_dir.glob("ses-*") if p.is_dir()) or [subject_dir]
            for session_dir in sessions:
                entry_id = subject_dir.name if session_dir == subject_dir else f"{subject_dir.name}_{session_dir.name}"
                entry = {"subject": subject_dir.name}
                for key, pattern in keys.items():
                    matches = sorted(
                        p for p in session_dir.glob(pattern) if _is_image(p) and not p.name.endswith(".json")
                    )
                    if len(matches) == 1:
                        entry[key] = matches[0]
                    elif not matches:
                        problems.append(f"{entry_id}: key '{key}': no file matches '{session_dir / pattern}'")
                    else:
                        names = ", ".join(str(m) for m in matches)
                        problems.append(f"{entry_id}: key '{key}': {len(matches)} files match '{pattern}': {names}")
                entries[entry_id] = entry
    elif layout == "flat":
        shared = {key: pattern for key, pattern in keys.items() if "{subject}" not in pattern}
        for key, pattern in shared.items():
            if key not in shared_keys:
                allowed = (
                    f" (only a mask, {', '.join(shared_keys)}, may be one file for every subject)"
                    if shared_keys
                    else ""
                )
                raise DatalistError(
                    [f"--key {key}={pattern}: a flat-layout pattern needs a {{subject}} placeholder{allowed}."]
                )
            if not (root / pattern).is_file():
                raise DatalistError(
                    [f"--key {key}={pattern}: {root / pattern} does not exist (one file for every subject)."]
                )
        if len(shared) == len(keys):
            raise DatalistError(
                ["flat layout: no --key pattern has a {subject} placeholder, so no subject can be found."]
            )
        # subjects found through any per-subject key, so that a subject missing one file is reported, not dropped
        subjects_of = {}
        for key, pattern in keys.items():
            if key in shared:
                continue
            # a pattern may reach into sub-folders ({subject}/mri/T1.mgz: FreeSurfer's SUBJECTS_DIR); {subject} is one
            # path component
            regex = re.compile(re.escape(pattern).replace(re.escape("{subject}"), "(?P<subject>[^/]+?)") + "$")
            candidates = root.glob(pattern.replace("{subject}", "*"))
            subjects_of[key] = {
                m.group("subject") for p in candidates if (m := regex.match(p.relative_to(root).as_posix()))
            }
        subjects = sorted(set().union(*subjects_of.values()))
        if not subjects:
            patterns = ", ".join(f"{key}={pattern}" for key, pattern in keys.items())
            raise DatalistError(
                [
                    f"--key {patterns}: no file under {root} matches (patterns are relative to --root, e.g. "
                    "{subject}_T1w.nii.gz, or {subject}/mri/T1.mgz for a FreeSurfer SUBJECTS_DIR)."
                ]
            )
        for subject in subjects:
            entry = {"subject": subject}
            for key, pattern in keys.items():
                path = root / pattern.format(subject=subject)
                if path.exists():
                    entry[key] = path
                else:
                    problems.append(f"{subject}: key '{key}': {path} does not exist")
            entries[subject] = entry
    else:
        raise DatalistError([f"--layout {layout!r}: expected 'bids', 'flat' or 'pybids'."])
    return entries, problems


def _digest(path: Path) -> str:
    digest = hashlib.sha1()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def validate_subjects(
    entries: Mapping[str, Mapping], mask_keys: Sequence[str] = ("mask",), affine_tol: float = AFFINE_TOLERANCE_MM
) -> list[str]:
    """All problems of the found files: unreadable, non-finite, empty masks, shape/affine mismatches, duplicates.

    One mask file may serve every session of its subject (e.g. a derivative brain mask without a session entity), and
    one mask may serve every entry (a template brain mask of data in standard space, e.g. MNI152); a mask shared by
    some subjects but not all, or any other file found twice, is reported as a duplicated subject or file. Entries that
    lack a key (reported by ``find_subjects``) are validated too, so that every problem is listed at once.
    """
    problems = []
    seen: dict[str, tuple[str, str | None, str]] = {}  # digest -> (label, subject, key) of its first use
    shared_masks: dict[str, list[str]] = {}  # digest -> labels of the other subjects' uses of one mask file
    mask_users: dict[str, set[str]] = {}  # digest -> entries whose mask it is
    with_mask = {name for name, entry in entries.items() if any(key in entry for key in mask_keys)}
    for entry_id, entry in entries.items():
        reference = None
        for key, path in entry.items():
            if key == "subject":
                continue
            path = Path(path)
            label = f"{entry_id}: key '{key}': {path}"
            digest = _digest(path)
            if key in mask_keys:
                mask_users.setdefault(digest, set()).add(entry_id)
            if digest in seen:
                first_label, first_subject, first_key = seen[digest]
                is_mask = key in mask_keys and key == first_key
                if is_mask and first_subject != entry.get("subject"):
                    shared_masks.setdefault(digest, []).append(f"{label}: same content as {first_label}")
                elif not is_mask:
                    problems.append(f"{label}: same content as {first_label} (duplicated subject or file)")
                    continue
            else:
                seen[digest] = (label, entry.get("subject"), key)
            try:  # the bundle's own checks (readable, one 3D volume, finite), so what passes here loads there
                array, affine = load_volume(path, f"{entry_id}: key '{key}'")
            except (OSError, ValueError) as error:
                problems.append(str(error))
                continue
            if key in mask_keys and not (array > 0).any():
                problems.append(f"{label}: the mask is empty")
            if reference is None:
                reference = (f"'{key}' {path}", array.shape, affine)
                continue
            try:
                check_same_grid(label, array.shape, affine, *reference, tolerance=affine_tol)
            except ValueError as error:
                problems.append(str(error))
    for digest, labels in shared_masks.items():
        if mask_users[digest] != with_mask:  # one template mask for every entry is fine; for some, a mix-up
            problems += [f"{label} (duplicated subject or file)" for label in labels]
    return problems


def build_datalist(
    root: str | Path,
    out: str | Path,
    keys: Mapping[str, str] | None = None,
    layout: str = "bids",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    mask_keys: Sequence[str] = ("mask",),
    affine_tol: float = AFFINE_TOLERANCE_MM,
) -> Path:
    """Find, validate, split and write; raises ``DatalistError`` listing every problem (and writes nothing)."""
    defaults = {"bids": BIDS_KEYS, "pybids": {k: k for k in BIDS_QUERIES}}.get(layout, {})
    keys = dict(defaults if keys is None else keys)
    if not keys:
        raise DatalistError(["no --key given: name at least one modality, e.g. --key t1w='{subject}_T1w.nii.gz'."])
    entries, problems = find_subjects(root, keys, layout, shared_keys=mask_keys)
    problems += validate_subjects(entries, mask_keys, affine_tol)
    if problems:
        raise DatalistError(problems)
    out = Path(out).absolute()
    split = split_subjects([e["subject"] for e in entries.values()], seed, fractions)
    part_of = {subject: part for part, subjects in split.items() for subject in subjects}

    def relative(entry: Mapping) -> dict:
        return {k: v if k == "subject" else os.path.relpath(Path(v).absolute(), out.parent) for k, v in entry.items()}

    datalist = {
        "name": Path(root).absolute().name,
        "root": str(Path(root).absolute()),
        "layout": layout,
        "seed": seed,
        "keys": keys,
        **{
            part: [relative(e) | {"id": i} for i, e in sorted(entries.items()) if part_of[e["subject"]] == part]
            for part in split
        },
    }
    return atomic_write_json(out, datalist)


def folder_items(
    root: str | Path,
    input_keys: Sequence[str],
    layout: str = "bids",
    keys: Mapping[str, str] | None = None,
    mask_key: str = "mask",
) -> list[dict]:
    """The bundle's inference items for every subject (and session) of a folder, without a datalist: ``{"image":
    [input files], "mask": brain mask file when the folder has one, "id": sub-XX[_ses-YY]}`` (as
    ``custom_nets.data.load_items`` gives them; ``inference.json`` uses it when ``input_dir`` is set).

    Args:
        root: the folder, BIDS-like (``sub-*/[ses-*/]anat/...``) or flat.
        input_keys: the task's inputs (e.g. ``["t1w", "flair"]``); each needs a pattern.
        layout: ``"bids"`` (patterns default to ``BIDS_KEYS``) or ``"flat"`` (patterns with ``{subject}``).
        keys: patterns by key; ``mask_key``'s pattern is optional per subject (the bundle extracts a brain otherwise)
            and, in the flat layout, may name one template mask for every subject.

    Raises:
        DatalistError: every problem found (a modality missing, a file unreadable, not 3D or not finite, grids that
            differ, an empty mask), one line each naming the subject, key and file.
    """
    defaults = {"bids": BIDS_KEYS, "pybids": BIDS_QUERIES}.get(layout, {})
    patterns = dict(defaults if keys is None else keys)
    unnamed = [key for key in input_keys if key not in patterns]
    if unnamed:
        raise DatalistError([f"no file pattern for input key(s) {unnamed}: give --key NAME=PATTERN for each."])
    mask_pattern = patterns.get(mask_key)
    shared_mask = layout == "flat" and mask_pattern is not None and "{subject}" not in mask_pattern
    needed = {key: patterns[key] for key in input_keys} | ({mask_key: mask_pattern} if shared_mask else {})
    entries, problems = find_subjects(root, needed, layout, shared_keys=[mask_key])
    if mask_pattern is not None and not shared_mask:
        masks, mask_problems = find_subjects(root, {mask_key: patterns[mask_key]}, layout)
        problems += [p for p in mask_problems if "files match" in p]  # a missing mask is allowed, an ambiguous one not
        for name, entry in entries.items():
            if mask_key in masks.get(name, {}):
                entry[mask_key] = masks[name][mask_key]
    problems += validate_subjects(entries, [mask_key])
    if problems:
        raise DatalistError(problems)
    return [
        {"image": [str(entry[key]) for key in input_keys], "id": name}
        | ({"mask": str(entry[mask_key])} if mask_key in entry else {})
        for name, entry in sorted(entries.items())
    ]


def parse_key(text: str) -> tuple[str, str]:
    """``--key NAME=PATTERN`` of the folder CLIs (the datalist builder and ``custom_nets.predict``) as a pair."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--key {text!r}: expected NAME=PATTERN, e.g. t1w='{{subject}}_T1w.nii.gz'")
    name, pattern = text.split("=", 1)
    return name.strip(), pattern.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m custom_nets.datasets.folders",
        description="Build a validated MONAI datalist (training/validation/test by subject) from a folder.",
    )
    parser.add_argument("--root", required=True, help="the data folder")
    parser.add_argument("--out", help="datalist file (default ROOT/datalist.json)")
    parser.add_argument("--layout", choices=("bids", "flat", "pybids"), default="bids")
    parser.add_argument("--key", type=parse_key, action="append", default=[], help="NAME=PATTERN, repeatable")
    parser.add_argument("--mask-key", action="append", default=None, help="keys that are masks (default: mask)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--affine-tol", type=number_at_least(0), default=1e-2, help="largest affine difference in mm")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.root) / "datalist.json"
    try:
        path = build_datalist(
            args.root,
            out,
            dict(args.key) or None,
            args.layout,
            args.seed,
            tuple(args.split),
            args.mask_key or ["mask"],
            args.affine_tol,
        )
    except (DatalistError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
