# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""What the documents tell a user to run exists as written: every command's options, the bundle ids of every
``monai.bundle`` command, the Python version, the load-safety claim and the layout's list of benchmarks."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from custom_nets.config_check import unknown_cli_ids

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "bundle" / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"^(\.\.\.|<.*>|[A-Z][A-Z_]*)$")  # FILE, DIR, <task>, ... stand for a user's value


def _commands(text: str) -> list[str]:
    """``python …``/``torchrun …`` commands: lines of fenced blocks (comments removed) and inline code spans."""
    found = []
    for index, part in enumerate(re.split(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", text, flags=re.S | re.M)):
        if index % 2:
            joined = re.sub(r"\\\n\s*", " ", part)  # continued lines
            lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
        else:
            lines = re.findall(r"`([^`]+)`", part.replace("\n", " "))
        found += [line for line in lines if line.startswith(("python ", "torchrun "))]
    return found


def _documented(kind: str) -> list[tuple[str, list[str]]]:
    """(document name, argv) of every documented command of ``kind``: 'script' (benchmarks/*.py, python -m
    custom_nets…) or 'bundle' (python -m monai.bundle / torchrun … -m monai.bundle)."""
    cases = []
    for document in DOCUMENTS:
        for command in _commands(document.read_text(encoding="utf-8")):
            try:
                argv = shlex.split(command)
            except ValueError:  # a command cut inside a quoted Python snippet
                continue
            if "monai.bundle" in argv:
                if kind == "bundle" and argv[argv.index("monai.bundle") + 1] == "run":
                    cases.append((str(document.relative_to(ROOT)), argv[argv.index("monai.bundle") :]))
            elif kind == "script" and argv[0] == "python" and len(argv) > 1:
                if argv[1].startswith("benchmarks/") or (argv[1] == "-m" and argv[2].startswith("custom_nets")):
                    cases.append((str(document.relative_to(ROOT)), argv[1:]))
    return cases


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _parser_of(target: list[str], monkeypatch) -> argparse.ArgumentParser:
    """The argparse parser a script or module builds, captured at its ``parse_args`` (nothing else runs)."""
    if target[0] == "-m":
        name = target[1]
        spec = importlib.util.find_spec(name)
        module = importlib.import_module(f"{name}.__main__" if spec.submodule_search_locations else name)
    else:
        path = ROOT / target[0]
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(f"documented_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [target[0]])
    with pytest.raises(_Captured) as captured:
        module.main()
    return captured.value.parser


SCRIPTS, BUNDLE_COMMANDS = _documented("script"), _documented("bundle")


def _ids(cases: list[tuple[str, list[str]]]) -> list[str]:
    return [f"{document}: {' '.join(argv)[:70]}" for document, argv in cases]


@pytest.mark.parametrize("document, argv", SCRIPTS, ids=_ids(SCRIPTS))
def test_documented_commands_use_existing_options(document, argv, monkeypatch):
    target = argv[:2] if argv[0] == "-m" else argv[:1]
    if target[0] != "-m":
        assert (ROOT / target[0]).is_file(), f"{document}: {target[0]} does not exist"
    parser = _parser_of(target, monkeypatch)
    options = {option: action for action in parser._actions for option in action.option_strings}
    given = [token.split("=", 1)[0] for token in argv[len(target) :] if token.startswith("--")]
    unknown = [flag for flag in given if flag not in options]
    assert not unknown, f"{document}: `{' '.join(argv)}`: {unknown} are not options of {target[-1]}"
    required = [a.option_strings for a in parser._actions if a.required and a.option_strings]
    missing = [options[0] for options in required if not set(options) & set(given)]
    assert not missing, f"{document}: `{' '.join(argv)}` lacks the required {missing}"
    for flag in given:
        choices = options[flag].choices
        values = argv[argv.index(flag) + 1 :] if flag in argv else []
        for value in values[: 1 if options[flag].nargs is None else len(values)]:
            if value.startswith("--"):
                break
            assert choices is None or value in choices or PLACEHOLDER.match(value), (document, flag, value)


@pytest.mark.parametrize("document, argv", BUNDLE_COMMANDS, ids=_ids(BUNDLE_COMMANDS))
def test_documented_bundle_commands_name_existing_files_and_ids(document, argv):
    """``monai.bundle run`` commands of the docs (run from ``bundle/``): their config files exist and every ``--id``
    is an id of those configs or of ``monai.bundle.run`` (what ``check_settings`` enforces when they run)."""
    assert "--config_file" in argv, f"{document}: `{' '.join(argv)}` names no config file"
    at = argv.index("--config_file") + 1
    files = [name.strip(" '\"") for name in argv[at].strip("[]").split(",")]
    # run from the bundle folder (its README) or from the repository's root with --bundle_root bundle
    paths = [ROOT / name if (ROOT / name).is_file() else ROOT / "bundle" / name for name in files]
    missing = [name for name, path in zip(files, paths) if not path.is_file()]
    assert not missing, f"{document}: {missing} exist neither in the repository's root nor in bundle/"
    absolute = "[" + ",".join(f"'{path}'" for path in paths) + "]"
    checked = ["/site-packages/monai/bundle/__main__.py", *argv[2:at], absolute, *argv[at + 1 :]]
    assert unknown_cli_ids(checked) == [], f"{document}: `{' '.join(argv)}`"


def _minimum(specifier: str) -> Version:
    bounds = [Version(s.version) for s in SpecifierSet(specifier) if s.operator in (">=", "==", "~=")]
    return max(bounds, default=Version("0"))


def test_stated_python_version_holds_for_every_requirement():
    """README's 'Python ≥ X' is setup.cfg's python_requires, and no installed requirement needs a newer one."""
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    required = re.search(r"^python_requires\s*=\s*(.+)$", setup, re.M).group(1).strip()
    stated = re.search(r"Python ≥ ([0-9.]+)", (ROOT / "README.md").read_text(encoding="utf-8")).group(1)
    assert _minimum(required) == Version(stated)
    block = re.search(r"^install_requires\s*=\n((?:[ \t]+.*\n)+)", setup, re.M).group(1)
    names = [Requirement(line.strip()).name for line in block.splitlines() if line.strip() and "#" not in line[:6]]
    needs = {name: importlib.metadata.metadata(name).get("Requires-Python") or "" for name in names}
    newer = {name: need for name, need in needs.items() if _minimum(need) > _minimum(required)}
    assert not newer, f"python_requires {required} but these requirements need more: {newer}"


def test_every_checkpoint_load_is_weights_only():
    """bundle/docs/reliability.md: every torch.load reads tensors and plain containers only."""
    offenders = []
    for folder in ("custom_nets", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "torch.load(" in line and "weights_only=True" not in line and "``" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders


def test_readme_layout_lists_every_benchmark():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("benchmarks/             ") :].split("\n\n")[0]
    scripts = [p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")]
    assert [name for name in scripts if not re.search(rf"\b{name}\b", layout)] == []
