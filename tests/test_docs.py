# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""What the documents tell a user to run exists as written: every command parses with its program's own argparse
parser, every ``monai.bundle`` command names existing configs, ids and workflow, the Python version holds, every
checkpoint load is weights-only and the layout lists the benchmarks that exist."""

from __future__ import annotations

import argparse
import ast
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
PLACEHOLDER = re.compile(r"^(\.\.\.|<[^>]*>|[A-Z][A-Z_]*)$")  # FILE, DIR, <task>, ... stand for a user's value
FENCE = re.compile(r"^[ \t]*(```+|~~~+)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
PYTHON = re.compile(r"^(\S*/)?python3?$")
STARTS_A_COMMAND = re.compile(r"^\s*(\$ )?(\w+=\S+ )*(cd|torchrun|(\S*/)?python3?)(\s|$)")


def _commands(text: str) -> list[list[str]]:
    """Shell commands (as argv lists) of a markdown text that run Python: the lines of fenced blocks (continuations
    joined, comments removed, ``cd`` kept so paths resolve) and inline code spans, split at ``&&``, ``;`` and ``|``
    outside quotes, a ``$`` prompt and ``VAR=value`` prefixes removed. ``["cd", ":block"]`` starts each block and
    ``["cd"]`` each span (blocks run from the document's folder, spans from the repository's root). A quote error
    raises ``ValueError``: the command is broken.
    """
    found, rest = [], FENCE.sub("\n", text)
    for block in FENCE.finditer(text):
        joined = re.sub(r"\\\n\s*", " ", block.group(2))
        found += ["cd :block", *joined.splitlines()]
    for span in re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`", rest):
        found += ["cd", " ".join(span.split())]
    commands: list[list[str]] = []
    for line in found:
        if not STARTS_A_COMMAND.match(line):  # prose, a layout tree, a formula
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens, command = list(lexer), []
        for token in [*tokens, ";"]:
            if token not in (";", "&&", "||", "|", "&"):
                command.append(token)
                continue
            while command and (command[0] == "$" or re.match(r"^\w+=", command[0])):
                command = command[1:]
            if command and (command[0] in ("cd", "torchrun") or PYTHON.match(command[0])):
                commands.append(command)
            command = []
    starts = (["cd"], ["cd", ":block"])
    return [
        c
        for i, c in enumerate(commands)
        if c not in starts or (i + 1 < len(commands) and commands[i + 1] not in starts)
    ]


def _documented() -> tuple[list, list]:
    """(document, folder it runs in, argv) of every documented ``python``/``torchrun`` command: the program's own
    (benchmarks/*.py, ``-m custom_nets…``) and ``monai.bundle``'s. Commands run from the repository's root, the
    blocks of the bundle's README from the bundle folder (as it says), or from where a ``cd`` in their block went."""
    scripts, bundle, snippets = [], [], []
    for document in DOCUMENTS:
        name = str(document.relative_to(ROOT))
        blocks = ROOT / "bundle" if document == ROOT / "bundle" / "docs" / "README.md" else ROOT
        folder = ROOT
        for argv in _commands(document.read_text(encoding="utf-8")):
            command = " ".join(argv)
            if argv[0] == "cd":
                folder = ROOT if len(argv) == 1 else blocks if argv[1] == ":block" else (folder / argv[1]).resolve()
                continue
            if argv[0] == "torchrun":
                argv = argv[next((i for i, a in enumerate(argv[1:], 1) if not a.startswith("--")), len(argv)) :]
            elif PYTHON.match(argv[0]):
                argv = argv[1:]
            if argv[:1] == ["-c"]:
                snippets.append((name, folder, argv))
            elif argv[:2] == ["-m", "monai.bundle"]:
                assert len(argv) > 2, f"{name}: `{command}` has no monai.bundle subcommand"
                bundle.append((name, folder, argv[2:]))
            elif argv and (argv[0].endswith(".py") or (argv[0] == "-m" and argv[1].startswith("custom_nets"))):
                scripts.append((name, folder, argv))
    return scripts, bundle, snippets


SCRIPTS, BUNDLE_COMMANDS, SNIPPETS = _documented()


def _ids(cases: list) -> list[str]:
    return [f"{document}: {' '.join(argv)[:70]}" for document, _, argv in cases]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _parser_of(target: list[str], folder: Path, monkeypatch) -> argparse.ArgumentParser:
    """The argparse parser a script or module builds, captured at its ``parse_args`` (nothing else runs)."""
    if target[0] == "-m":
        spec = importlib.util.find_spec(target[1])
        module = importlib.import_module(f"{target[1]}.__main__" if spec.submodule_search_locations else target[1])
    else:
        path = folder / target[0]
        assert path.is_file(), f"{target[0]} does not exist in {folder}"
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(f"documented_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [target[-1]])
    with pytest.raises(_Captured) as captured:
        module.main()
    monkeypatch.undo()  # argparse again, for the real parse
    return captured.value.parser


def _example(action: argparse.Action | None) -> str:
    """A value the option accepts, standing in for a documented placeholder."""
    if action is not None and action.choices:
        return str(next(iter(action.choices)))
    if action is not None and action.type in (int, float):
        return "1"
    return "placeholder"


def _is_placeholder(value: str, action: argparse.Action | None) -> bool:
    """``value`` stands for a user's value: ``...``, ``<x>`` or capitals, unless the option accepts it as written."""
    accepted = action is not None and action.choices is not None and value in map(str, action.choices)
    return bool(PLACEHOLDER.match(value)) and not accepted


def _concrete(parser: argparse.ArgumentParser, arguments: list[str]) -> list[str]:
    """``arguments`` with optional parts (``[--n4]``) kept and placeholders replaced by values their option takes."""
    options = {option: action for action in parser._actions for option in action.option_strings}
    positionals = iter(action for action in parser._actions if not action.option_strings)
    concrete, current = [], None
    for token in (t.strip("[]") for t in arguments if t != "..."):
        if token.startswith("-"):
            flag, _, value = token.partition("=")
            current = options.get(flag)
            concrete.append(f"{flag}={_example(current)}" if value and _is_placeholder(value, current) else token)
            if current is not None and current.nargs == 0:
                current = None
            continue
        owner = current if current is not None else next(positionals, None)
        concrete.append(_example(owner) if _is_placeholder(token, owner) else token)
        if current is not None and current.nargs in (None, 1):
            current = None
    return concrete


@pytest.mark.parametrize("document, folder, argv", SCRIPTS, ids=_ids(SCRIPTS))
def test_documented_commands_parse(document, folder, argv, monkeypatch, capsys):
    """Each command parses with its program's own parser: options, values, choices, types, required arguments."""
    target = argv[:2] if argv[0] == "-m" else argv[:1]
    parser = _parser_of(target, folder, monkeypatch)
    arguments = _concrete(parser, argv[len(target) :])
    try:
        parser.parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{document}: `{' '.join(argv)}`: {capsys.readouterr().err.strip().splitlines()[-1]}")


@pytest.mark.parametrize("document, folder, argv", SNIPPETS, ids=_ids(SNIPPETS))
def test_documented_python_snippets_are_python_and_import_what_exists(document, folder, argv):
    tree = ast.parse(argv[1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("custom_nets"):
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert not missing, f"{document}: `python -c`: {node.module} has no {missing}"


def _config_paths(document: str, folder: Path, argv: list[str]) -> list[Path]:
    assert "--config_file" in argv, f"{document}: `{' '.join(argv)}` names no config file"
    value = argv[argv.index("--config_file") + 1]
    names = [name.strip(" '\"") for name in value.strip("[]").split(",")]
    paths = [folder / name for name in names]
    missing = [name for name, path in zip(names, paths) if not path.is_file()]
    assert not missing, f"{document}: `{' '.join(argv)}`: {missing} do not exist in {folder}"
    return paths


@pytest.mark.parametrize("document, folder, argv", BUNDLE_COMMANDS, ids=_ids(BUNDLE_COMMANDS))
def test_documented_bundle_commands_name_existing_configs_ids_and_workflow(document, folder, argv):
    """``monai.bundle`` commands (run from their block's folder: ``bundle/`` where a ``cd bundle`` says so): the
    config files exist, the workflow (``run training``) or network (``ckpt_export network_def``) is defined in them,
    and every ``--id`` is an id of those configs, of ``monai.bundle.run`` or of ``--tracking``."""
    from monai.bundle import ConfigParser

    assert argv[0] in ("run", "ckpt_export"), f"{document}: `{' '.join(argv)}`: unchecked subcommand"
    paths = _config_paths(document, folder, argv)
    parser = ConfigParser()
    parser.read_config([str(path) for path in paths])
    assert argv[1] in parser, f"{document}: `{' '.join(argv)}`: no '{argv[1]}' in {[p.name for p in paths]}"
    if argv[0] == "run":
        at = argv.index("--config_file") + 1
        absolute = "[" + ",".join(f"'{path}'" for path in paths) + "]"
        checked = ["/site-packages/monai/bundle/__main__.py", *argv[:at], absolute, *argv[at + 1 :]]
        assert unknown_cli_ids(checked) == [], f"{document}: `{' '.join(argv)}`"
    elif "--meta_file" in argv:  # --ckpt_file is what training writes
        assert (folder / argv[argv.index("--meta_file") + 1]).is_file(), f"{document}: `{' '.join(argv)}`"


def _minimum(specifier: str) -> Version:
    bounds = [Version(s.version) for s in SpecifierSet(specifier) if s.operator in (">=", "==", "~=", ">")]
    return max(bounds, default=Version("0"))


def test_stated_python_version_holds_for_every_requirement():
    """README's 'Python ≥ X' is setup.cfg's python_requires, and no installed requirement (extras included) needs a
    newer Python."""
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    required = re.search(r"^python_requires\s*=\s*(.+)$", setup, re.M).group(1).strip()
    stated = re.search(r"Python ≥ ([0-9.]+)", (ROOT / "README.md").read_text(encoding="utf-8")).group(1)
    assert _minimum(required) == Version(stated)
    names = set()
    sections = setup[setup.index("install_requires") : setup.index("[", setup.index("[options.extras_require]") + 1)]
    for block in re.findall(r"^\w+\s*=\n((?:[ \t]+.*\n)+)", sections, re.M):
        for line in block.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                names.add(Requirement(line.strip()).name)
    installed = {}
    for name in names:
        try:
            installed[name] = importlib.metadata.metadata(name).get("Requires-Python") or ""
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra not installed here
    assert len(installed) > 5
    newer = {name: need for name, need in installed.items() if _minimum(need) > _minimum(required)}
    assert not newer, f"python_requires {required} but these requirements need more: {newer}"


def _loads_without_weights_only(path: Path) -> list[int]:
    """Lines of ``torch.load(...)`` calls (or a bare ``load`` imported from torch) without ``weights_only=True``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    from_torch = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "torch"
        for alias in node.names
        if alias.name == "load"
    }
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        is_load = (isinstance(function, ast.Attribute) and function.attr == "load" and ast.unparse(function.value)
                   == "torch") or (isinstance(function, ast.Name) and function.id in from_torch)  # fmt: skip
        safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
        if is_load and not safe:
            lines.append(node.lineno)
    return lines


def test_every_checkpoint_load_is_weights_only():
    """bundle/docs/reliability.md: every torch.load reads tensors and plain containers only."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in ("custom_nets", "benchmarks", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in _loads_without_weights_only(path)
    ]
    assert not offenders


def test_the_load_check_sees_unsafe_loads(tmp_path):
    source = tmp_path / "unsafe.py"
    source.write_text(
        "import torch\nfrom torch import load as read\n"
        "a = torch.load('p', weights_only=True); b = torch.load('q')  # ``x``\nc = read('r')\n"
        "d = torch.load('s', weights_only=False)\n"
    )
    assert _loads_without_weights_only(source) == [3, 4, 5]


def test_readme_layout_lists_the_benchmarks_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("benchmarks/             ") :].split("\n\n")[0].split("\n")
    layout = " ".join(line for line in layout if line.startswith(" ") or line.startswith("benchmarks/"))
    listed = set(re.findall(r"(?<![.\w])([a-z][a-z_]+)(?=[,;]| \(|\.sh|$)", layout.split(":", 1)[1]))
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    shell = {p.stem for p in (ROOT / "benchmarks").glob("*.sh")}
    assert scripts - listed == set()
    assert listed - scripts - shell == set()


@pytest.mark.parametrize(
    "markdown, expected",
    [
        (
            "~~~shell-session\n$ OMP_NUM_THREADS=1 python benchmarks/seams.py --run DIR\n~~~\n",
            [["cd", ":block"], ["python"]],
        ),
        (
            "```bash title='x'\ncd bundle && python -m monai.bundle run a\n```\n",
            [["cd", ":block"], ["cd", "bundle"], ["python"]],
        ),
        ("run `.venv/bin/python -m custom_nets.predict --task pet`.", [["cd"], [".venv/bin/python"]]),
        (
            "  ```Bash\n  python3 benchmarks/tuning.py \\\n     --task md  # MD\n  ```\n",
            [["cd", ":block"], ["python3"]],
        ),
        ('`python -c "import a; print(1)" | head`', [["cd"], ["python", "-c", "import a; print(1)"]]),
    ],
)
def test_commands_are_found_in_every_markdown_form(markdown, expected):
    found = _commands(markdown)
    assert len(found) == len(expected) and all(command[: len(e)] == e for command, e in zip(found, expected))
    assert found[-1][-1] not in ("MD", "#")


def test_a_broken_quote_is_an_error():
    with pytest.raises(ValueError):
        _commands("`python benchmarks/tuning.py --task 'pet`")


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmarks/paper_table.py", "--mode=bogus"],
        ["benchmarks/paper_table.py", "--mode", "standard", "--mode", "bogus"],
        ["benchmarks/tuning.py", "--iterations", "many"],
        ["benchmarks/tuning.py", "extra"],
        ["-m", "custom_nets.datasets.phantom.check"],  # its folder is a required positional
        ["-m", "custom_nets.evaluation.baselines", "--datalist", "FILE"],
    ],
)
def test_the_parse_check_rejects_broken_commands(argv, monkeypatch, capsys):
    with pytest.raises(pytest.fail.Exception):
        test_documented_commands_parse("probe", ROOT, argv, monkeypatch, capsys)


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("datalist")
    parser.add_argument("--mode", choices=["STANDARD", "quick"])
    parser.add_argument("--task", choices=["pet", "fa"])
    parser.add_argument("--minutes", type=float)
    return parser


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["FILE", "--mode", "STANDARD"], ["placeholder", "--mode", "STANDARD"]),  # a choice written in capitals
        (["FILE", "--mode=STANDARD"], ["placeholder", "--mode=STANDARD"]),
        (["<datalist>", "--task", "TASK"], ["placeholder", "--task", "pet"]),
        (["data.json", "--minutes", "N", "[--task", "fa]"], ["data.json", "--minutes", "1", "--task", "fa"]),
    ],
)
def test_placeholders_are_replaced_and_capitalised_choices_kept(arguments, expected):
    assert _concrete(_toy_parser(), arguments) == expected
