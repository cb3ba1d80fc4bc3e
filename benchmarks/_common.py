# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the benchmarks: each case in a fresh child process with its own peak memory, and timing.

Peak memory on CPU is the peak resident set (VmHWM) over the RSS when the case starts measuring. With
``exact_memory`` glibc's mmap threshold is fixed at 1 MiB so that freed tensors leave the RSS at once (its default
threshold grows after each large free, which makes the peak that of the allocator's cache); without it the figure is
an upper bound. On CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "rss_kib",
    "reset_peak",
    "peak_mb_since",
    "run_child",
    "timed",
    "machine",
    "source_revision",
    "provenance",
    "print_table",
    "check_generated_doc",
    "write_generated_doc",
]


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak counters (CPU and CUDA) and return the current RSS in KiB, the baseline of ``peak_mb_since``."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass
    return rss_kib("VmRSS")


def peak_mb_since(base_kib: int, device: str = "cpu") -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return (rss_kib("VmHWM") - base_kib) / 1024


def run_child(
    script: str, case: dict, threads: int, exact_memory: bool = False, extra: list[str] | None = None
) -> dict:
    """Run ``script --case JSON --threads N`` in a fresh interpreter and return the JSON of its last output line.

    ``exact_memory`` fixes glibc's mmap threshold so that the peak RSS is the peak of live tensors; it also makes
    every large allocation a fresh mmap with page faults, which slows CPU steps measurably, so timing benchmarks
    leave it off and report the peak RSS as an upper bound (the allocator's cache included)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if exact_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    command = [sys.executable, script, "--case", json.dumps(case), "--threads", str(threads), *(extra or [])]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed(step: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median seconds of ``step`` over ``repeats`` runs after ``warmup`` runs."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    import torch

    info = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def source_revision(root: str | os.PathLike | None = None) -> str:
    """The commit a generated document comes from, as ``git`` names it.

    Args:
        root: a folder inside the checkout (default: this repository).

    Returns:
        ``"commit <short hash>"``, followed by ``" with uncommitted changes"`` when tracked files differ from it, or
        ``"no git checkout"`` where ``root`` is not in one or ``git`` is missing.
    """
    root = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no git checkout"
    return f"commit {head}" + (" with uncommitted changes" if changed else "")


def provenance(root: str | os.PathLike | None = None) -> str:
    """Where a generated document was measured: its commit, the CPU cores this process may use, the CPU's kind, bf16
    support, the GPU (or none) and torch, e.g. ``"commit 7854dcb; 2 CPU cores (x86_64, AVX512, native bf16), no
    GPU; torch 2.13.0"``. The documents' figures depend on all of them (``bundle/docs/performance.md``)."""
    import torch

    from custom_nets.precision import cpu_has_native_bf16

    info = machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    gpu = f"GPU {info['gpu']}" if "gpu" in info else "no GPU"
    return (
        f"{source_revision(root)}; {cores} CPU cores ({info['cpu']}, {info['cpu_capability']}, {bf16}), {gpu}; "
        f"torch {torch.__version__}"
    )


def print_table(header: list[str], rows: list[list[object]]) -> None:
    """Print a markdown table: one header row, then one row per list of already formatted cells."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def _markers(script: str) -> tuple[str, str]:
    return (
        f"<!-- begin: generated by {script}; the text outside these two markers is kept when it is regenerated -->",
        f"<!-- end: generated by {script} -->",
    )


def _read_document(path: Path) -> str:
    """The document's text with its own line endings (``newline=""``); errors name the file."""
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file: a benchmark's document goes there (give another --docs folder).")
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            return stream.read()
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None


def _generated_span(path: Path, text: str, script: str) -> tuple[int, int] | None:
    """Start and end offsets of ``script``'s section in ``text``; None for an empty file. Raises ``ValueError`` for
    a file that has other text and no (or unbalanced) markers."""
    begin, end = _markers(script)
    first, last = text.find(begin), text.find(end)
    if first >= 0 and last > first and text.count(begin) == 1 and text.count(end) == 1:
        return first, last + len(end)
    if not text.strip():
        return None
    raise ValueError(
        f"{path} has text but not exactly one pair of the lines '{begin}' ... '{end}' around what {script} generates: "
        "regenerating it would lose hand-written text. Put the two lines around the generated part, or give another "
        "--docs folder."
    )


def check_generated_doc(path: str | os.PathLike, script: str) -> Path:
    """Check, before a benchmark runs, that it can write its document ``path`` at the end: the folder exists or is
    created and is writable, ``path`` is a file or absent, and writing keeps the text the benchmark did not generate
    (see ``write_generated_doc``). Returns ``path``.

    Raises:
        ValueError: ``path`` is not a file, not UTF-8, or has text but not exactly one pair of markers.
        OSError: the folder cannot be created or written (a file in its place, no permission).
    """
    import tempfile

    path = Path(path)
    _generated_span(path, _read_document(path), script)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-check-"):
        pass
    return path


def write_generated_doc(
    path: str | os.PathLike, generated: str, script: str, figures: Sequence[str | os.PathLike] = ()
) -> Path:
    """Write ``generated`` (markdown) as ``script``'s section of the document ``path``, atomically.

    The section sits between two HTML comment lines naming ``script`` (invisible when rendered); a document that
    does not exist (or is empty) is created with them, and in one that exists only the text between them is replaced,
    so sections written by hand before or after it (``bundle/docs/tuning.md``'s) survive a rerun. The document keeps
    its line endings (CRLF stays CRLF). If the document cannot be written (its markers were edited away during the
    run, the folder went read-only), the section is saved to a temporary file that the error names, so an hour of
    measurement is not lost.

    ``figures`` (rendered by the run into its output folder) are copied into ``<folder of path>/figures/`` first, so
    that a run stopped or failed part-way leaves the document and its figures as they were, not a mix of two runs.

    Raises:
        ValueError: ``path`` is not a file, or has text but not exactly one pair of markers (both checked first by
            ``check_generated_doc``).
        OSError: ``path`` cannot be written.
    """
    import tempfile

    from custom_nets.io import atomic_write_bytes, atomic_write_text

    path = Path(path)
    begin, end = _markers(script)
    section = f"{begin}\n{generated.rstrip()}\n{end}"
    try:
        text = _read_document(path)
        if "\r\n" in text:
            section = section.replace("\r\n", "\n").replace("\n", "\r\n")
        span = _generated_span(path, text, script)
        for figure in map(Path, figures):
            atomic_write_bytes(path.parent / "figures" / figure.name, figure.read_bytes())
        content = section + "\n" if span is None else text[: span[0]] + section + text[span[1] :]
        return atomic_write_text(path, content)
    except (OSError, ValueError) as error:
        handle, saved = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=".generated.md")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(section + "\n")
        raise type(error)(f"{error} The generated section is saved in {saved}.") from error
