# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Datalist → training items, validated at the entry point (the bundle's dataset ``data``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from custom_nets.io import read_json

__all__ = ["load_items", "entry_id", "DATALIST_HINT"]

DATALIST_HINT = "generate one with python -m custom_nets.phantom or python -m custom_nets.datalist."


def entry_id(entry: Mapping, index: int = 0) -> str:
    """The id of a datalist entry, unique within its datalist: ``id`` when given (``custom_nets.datalist`` writes
    ``<subject>`` or ``<subject>_<session>``), else ``subject`` with ``_<session>`` when a ``session`` is given, else
    ``entry-<index>``. Outputs (predictions, metrics rows) are named by it."""
    if entry.get("id") not in (None, ""):
        return str(entry["id"])
    if entry.get("subject") not in (None, ""):
        session = entry.get("session")
        return f"{entry['subject']}_{session}" if session not in (None, "") else str(entry["subject"])
    return f"entry-{index}"


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
    (``entry_id``; ids must be unique).

    Raises a ValueError naming the datalist, split, entry and key when a key is missing, or a FileNotFoundError naming
    the file when a path does not exist. ``mask_key`` is used when present in an entry (the transforms derive a mask
    otherwise); ``base_dir`` defaults to the datalist's folder.
    """
    datalist = Path(datalist)
    content = read_json(datalist, "datalist", DATALIST_HINT)
    if split not in content:
        raise ValueError(f"datalist {datalist} has no '{split}' list (it has: {sorted(content)}).")
    if not content[split]:
        raise ValueError(f"datalist {datalist}: the '{split}' list is empty.")
    base = Path(base_dir) if base_dir is not None else datalist.parent
    if isinstance(input_keys, str):
        input_keys = [input_keys]
    items, seen = [], {}
    for index, entry in enumerate(content[split][:limit]):
        name = entry_id(entry, index)
        if name in seen:
            raise ValueError(
                f"datalist {datalist}, '{split}': entries {seen[name]} and {index} share the id {name!r}; give each "
                "entry a unique 'id' (e.g. <subject>_<session>), since outputs are named by it."
            )
        seen[name] = index
        needed = list(input_keys) + ([target_key] if target_key else [])
        missing = [key for key in needed if key not in entry]
        if missing:
            raise ValueError(
                f"datalist {datalist}, '{split}' entry {name}: missing key(s) {missing}; the entry has "
                f"{sorted(entry)}. Set input_keys / target_key to keys the datalist has."
            )

        def path(key: str) -> str:
            file = Path(entry[key])
            file = file if file.is_absolute() else base / file
            if not file.exists():
                raise FileNotFoundError(
                    f"datalist {datalist}, '{split}' entry {name}, key '{key}': {file} does not exist."
                )
            return str(file)

        item = {"image": [path(k) for k in input_keys], "id": str(name)}
        if target_key:
            item["label"] = path(target_key)
        if mask_key and mask_key in entry:
            item["mask"] = path(mask_key)
        items.append(item)
    return items
