# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""The datalist, in one place: its schema (MONAI's decathlon format), entry ids, file resolution, the subject-level
split, and the bundle's training items, validated at the entry point."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from custom_nets.io import read_json

__all__ = [
    "DATALIST_HINT",
    "read_datalist",
    "entry_id",
    "split_entries",
    "resolve",
    "split_subjects",
    "check_held_out",
    "load_items",
]
logger = logging.getLogger(__name__)

DATALIST_HINT = "generate one with python -m custom_nets.datasets.phantom or python -m custom_nets.datasets.folders."


def read_datalist(datalist: str | Path) -> dict:
    """The datalist's content, MONAI's decathlon format: ``{"training": [entry, ...], "validation": [...],
    "test": [...]}``, each entry a dict of keys to file paths (relative to the datalist's folder, or absolute) plus
    optional ``id``, ``subject`` and ``session``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not JSON, or not a JSON object; the message names the file.
    """
    datalist = Path(datalist)
    content = read_json(datalist, "datalist", DATALIST_HINT)
    if not isinstance(content, dict):
        raise ValueError(f"datalist {datalist}: expected a JSON object of lists, got {type(content).__name__}.")
    return content


def names_a_file(name: str) -> bool:
    """Whether an entry id can name an output file (``<id>_<target>.nii.gz``) inside the output folder: not empty,
    not ``.`` or ``..``, no path separator (``/``, ``\\``) or NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0"))


def entry_id(entry: Mapping, index: int = 0) -> str:
    """The id of a datalist entry, unique within its datalist: ``id`` when given (``custom_nets.datasets.folders``
    writes ``<subject>`` or ``<subject>_<session>``), else ``subject`` with ``_<session>`` when a ``session`` is given,
    else ``entry-<index>``. Outputs (predictions, metrics rows) are named by it."""
    if entry.get("id") not in (None, ""):
        return str(entry["id"])
    if entry.get("subject") not in (None, ""):
        session = entry.get("session")
        return f"{entry['subject']}_{session}" if session not in (None, "") else str(entry["subject"])
    return f"entry-{index}"


def split_entries(datalist: str | Path, split: str, content: dict | None = None) -> dict[str, dict]:
    """``{entry id: entry}`` of one split, in datalist order (``content``: the already read datalist).

    Raises:
        ValueError: the split is missing or empty, an id cannot name a file (it holds a '/') or two entries share an
            id; the message names the datalist.
    """
    content = read_datalist(datalist) if content is None else content
    if split not in content:
        raise ValueError(f"datalist {datalist} has no '{split}' list (it has: {sorted(content)}).")
    if not content[split]:
        raise ValueError(f"datalist {datalist}: the '{split}' list is empty.")
    if not isinstance(content[split], list) or not all(isinstance(e, dict) for e in content[split]):
        raise ValueError(f"datalist {datalist}, '{split}': expected a list of JSON objects (keys to files).")
    entries: dict[str, dict] = {}
    first_index: dict[str, int] = {}
    for index, entry in enumerate(content[split]):
        name = entry_id(entry, index)
        if not names_a_file(name):
            raise ValueError(
                f"datalist {datalist}, '{split}' entry {index}: id {name!r} cannot name a file (outputs are named "
                "<id>_<target>.nii.gz in one folder); give an id without '/' or '\\', e.g. sub-01_ses-1."
            )
        if name in entries:
            raise ValueError(
                f"datalist {datalist}, '{split}': entries {first_index[name]} and {index} share the id {name!r}; give "
                "each entry a unique 'id' (e.g. <subject>_<session>), since outputs are named by it."
            )
        entries[name], first_index[name] = entry, index
    return entries


def resolve(datalist: str | Path, entry: Mapping, key: str, name: str = "", base_dir: str | Path | None = None) -> Path:
    """The file of ``entry[key]``: absolute as written, or relative to ``base_dir`` (default: the datalist's folder).

    Raises:
        ValueError: the entry has no ``key`` (the message lists the keys it has).
        FileNotFoundError: the file does not exist; the message names the datalist, entry ``name``, key and file.
    """
    where = f"datalist {datalist}, entry {name or entry_id(entry)}"
    if key not in entry:
        raise ValueError(f"{where}: missing key '{key}'; the entry has {sorted(entry)}.")
    file = Path(entry[key])
    file = file if file.is_absolute() else Path(base_dir if base_dir is not None else Path(datalist).parent) / file
    if not file.exists():
        raise FileNotFoundError(f"{where}, key '{key}': {file} does not exist.")
    return file


def split_subjects(subjects: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """Subject-level training/validation/test split by a seeded permutation; validation and test get at least one
    subject each when there are three or more subjects and their fraction is not 0.

    Raises:
        ValueError: ``fractions`` are not three non-negative numbers summing to 1.
    """
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}.")
    unique = sorted(set(subjects))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n = len(order)
    n_val, n_test = int(round(fractions[1] * n)), int(round(fractions[2] * n))
    if n >= 3:
        n_val = max(n_val, int(fractions[1] > 0))
        n_test = max(n_test, int(fractions[2] > 0))
    n_train = n - n_val - n_test
    return {
        "training": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


ENTRY_LABELS = ("id", "subject", "session")  # the keys of an entry that name it rather than hold a file


def _entry_files(
    datalist: str | Path, entry: Mapping, base_dir: str | Path | None, keys: Sequence[str] | None
) -> set[str]:
    folder = Path(base_dir if base_dir is not None else Path(datalist).parent)
    return {
        str((Path(v) if Path(v).is_absolute() else folder / v).resolve())
        for k, v in entry.items()
        if (k in keys if keys is not None else k not in ENTRY_LABELS) and isinstance(v, str) and v
    }


def check_held_out(
    datalist: str | Path,
    content: dict | None = None,
    base_dir: str | Path | None = None,
    keys: Sequence[str] | None = None,
) -> None:
    """Refuse a datalist whose ``test`` split shares an entry with ``training`` (the same id, or a same file of
    ``keys``: the inputs and the target; default every file, so give them where one brain mask serves all), since
    its test scores would measure memorisation; log a warning for a ``validation`` entry shared with ``training`` (model
    selection then favours overfitting, but a single-volume case may have nothing else) and for a subject whose
    sessions are split between ``training`` and ``test`` (the held-out scans are not of unseen subjects).

    Raises:
        ValueError: naming the datalist, the entries and the shared id or file.
    """
    content = read_datalist(datalist) if content is None else content
    training = content.get("training") or []
    if not isinstance(training, list):
        return  # split_entries reports the malformed list

    def described(split: str) -> list[tuple[str, Mapping, set[str]]]:
        entries = content.get(split) or []
        if not isinstance(entries, list):
            return []
        return [
            (entry_id(e, i), e, _entry_files(datalist, e, base_dir, keys))
            for i, e in enumerate(entries)
            if isinstance(e, dict)
        ]

    trained = described("training")
    named = ("id", "subject")  # ids made up from the position (entry-<index>) name no scan
    trained_ids = {name for name, entry, _ in trained if any(entry.get(k) not in (None, "") for k in named)}
    trained_files = {file: name for name, _, files in trained for file in files}
    trained_subjects = {str(e["subject"]) for _, e, _ in trained if e.get("subject") not in (None, "")}
    for split in ("test", "validation"):
        for name, entry, files in described(split):
            shared = sorted(files & set(trained_files))
            same_id = name in trained_ids and any(entry.get(k) not in (None, "") for k in named)
            if same_id or shared:
                if same_id:
                    what = f"the id {name!r}"
                else:
                    what = f"the file {shared[0]} (training entry {trained_files[shared[0]]!r})"
                message = f"datalist {datalist}: '{split}' entry {name!r} shares {what} with 'training'"
                if split == "test":
                    raise ValueError(message + "; test entries must be held out. Remove it from one of the two lists.")
                logger.warning("%s: validation scores will favour overfitting.", message)
            elif split == "test" and str(entry.get("subject", "")) in trained_subjects - {""}:
                logger.warning(
                    "datalist %s: test entry %r is a session of subject %r, whose other sessions are in 'training'.",
                    datalist,
                    name,
                    entry["subject"],
                )


def load_items(
    datalist: str | Path,
    split: str,
    input_keys: Sequence[str],
    target_key: str | None = None,
    mask_key: str | None = "mask",
    base_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Items ``{"image": [input files], "label": target file, "mask": mask file, "id": entry id}`` of one split
    (the bundle's dataset ``data``; ``split_entries``, ``resolve``).

    Raises a ValueError naming the datalist, split, entry and key when a key is missing, or a FileNotFoundError naming
    the file when a path does not exist, and for ``training`` refuses a test entry that is also a training entry
    (``check_held_out``). ``mask_key`` is used when present in an entry (the transforms derive a mask
    otherwise); ``base_dir`` defaults to the datalist's folder.
    """
    if isinstance(input_keys, str):
        input_keys = [input_keys]
    entries = split_entries(datalist, split)
    if split == "training":
        check_held_out(datalist, base_dir=base_dir, keys=list(input_keys) + ([target_key] if target_key else []))
    items = []
    for name, entry in list(entries.items())[:limit]:
        needed = list(input_keys) + ([target_key] if target_key else [])
        missing = [key for key in needed if key not in entry]
        if missing:
            raise ValueError(
                f"datalist {datalist}, '{split}' entry {name}: missing key(s) {missing}; the entry has "
                f"{sorted(entry)}. Set input_keys / target_key to keys the datalist has."
            )
        item = {
            "image": [str(resolve(datalist, entry, k, f"{name} ('{split}')", base_dir)) for k in input_keys],
            "id": name,
        }
        if target_key:
            item["label"] = str(resolve(datalist, entry, target_key, f"{name} ('{split}')", base_dir))
        if mask_key and mask_key in entry:
            item["mask"] = str(resolve(datalist, entry, mask_key, f"{name} ('{split}')", base_dir))
        items.append(item)
    return items
