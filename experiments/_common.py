"""Shared plumbing of the experiment scripts: arguments, the RESULTS.md sections, figures, verdicts.

Every script is run as ``python experiments/<name>.py [--quick] [--out DIR]``. A full run writes
its section of ``experiments/RESULTS.md`` and its figures under ``experiments/figures/``; a quick
run (for tests and a first look) writes to ``outputs/experiments-quick/`` unless ``--out`` says
otherwise, so it never overwrites the committed results. Each script replaces only the text
between its own markers in RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
QUICK_OUT = HERE.parent / "outputs" / "experiments-quick"
#: Sections of RESULTS.md in the order they appear.
ORDER = ("properties", "misalignment", "kl_divergence", "unique_matching")
HEADER = (
    "# Experiments: results\n\n"
    "Written by the scripts in this folder (`python experiments/<name>.py`); do not edit by hand. "
    "Each script rewrites only its own section. Figures are in [figures/](figures/).\n"
)


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--quick`` (small settings, seconds) and ``--out DIR`` (RESULTS.md and figures/ go there)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small settings for tests and a first look")
    parser.add_argument("--out", type=Path, help="folder for RESULTS.md and figures/ (default: experiments/)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else HERE
    return args


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def update_results(out: Path, name: str, body: str) -> Path:
    """Replace section ``name`` of ``out/RESULTS.md`` with ``body``, creating the file or section."""
    if name not in ORDER:
        raise ValueError(f"name must be one of {ORDER}, got {name!r}")
    path = out / "RESULTS.md"
    out.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    sections = {}
    for other in ORDER:
        begin, end = _markers(other)
        match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
        if match:
            sections[other] = match.group(1)
    sections[name] = body.rstrip("\n") + "\n"
    preamble = text.split("<!-- BEGIN ", 1)[0].rstrip("\n") + "\n"
    parts = [preamble]
    for other in ORDER:
        if other in sections:
            begin, end = _markers(other)
            parts.append(f"\n{begin}\n{sections[other]}{end}\n")
    path.write_text("".join(parts))
    return path


def save(figure: Any, out: Path, name: str) -> Path:
    """Save a matplotlib figure as a small PNG under ``out/figures/``."""
    from contextual_loss.viz import save_figure

    return save_figure(figure, out / "figures" / f"{name}.png", dpi=90)


def run_note(args: argparse.Namespace, seconds: float) -> str:
    """One line on how the section was produced."""
    mode = "quick settings" if args.quick else "full settings"
    return (
        f"_{mode}; {seconds:.0f} s on {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}_"
    )


def verdict(passed: bool, criterion: str) -> str:
    """Print and return the pass line every script ends with."""
    line = f"{'PASS' if passed else 'FAIL'}: {criterion}"
    print(line)
    return line


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class Timer:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
