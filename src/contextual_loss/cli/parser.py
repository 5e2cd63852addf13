"""The command line's argument parser, errors and messages; imports neither torch nor torchvision.

``contextual-loss --version`` and ``contextual-loss --help`` run on this module alone, so they
work (in a few MB of memory) even where PyTorch or torchvision cannot be imported.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "CommandError",
    "OneLineParser",
    "check_output_file",
    "check_output_folder",
    "deprecated_flag",
    "note",
    "warn",
]


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    print(f"contextual-loss: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """A one-line note on stderr (what was done and why; never part of the results on stdout)."""
    print(f"contextual-loss: {message}", file=sys.stderr)


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (the current folder at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_output_folder(flag: str, folder: Path) -> None:
    """Check that ``folder`` is, or can be created as, a folder; the error names ``flag``.

    Raises:
        CommandError: ``folder`` is a file, or one of its parents is a file.

    """
    found = _existing_ancestor(folder)
    if found == folder and not folder.is_dir():
        raise CommandError(f"{flag}: {folder} is a file, expected a folder")
    if not found.is_dir():
        raise CommandError(f"{flag}: cannot create the folder {folder}: {found} is a file, not a folder")


def check_output_file(flag: str, file: Path, *, force: bool) -> None:
    """Check that ``file`` can be written: its folder can be created and it is not overwritten by accident.

    Raises:
        CommandError: ``file`` is a folder, its folder cannot be created, or it exists and
            ``force`` is false (the message says to add ``--force``).

    """
    if file.is_dir():
        raise CommandError(f"{flag}: {file} is a folder, expected a file name")
    check_output_folder(flag, file.parent)
    if file.exists() and not force:
        raise CommandError(f"{flag}: {file} already exists; add --force to overwrite it")


def deprecated_flag(old: str, new: str) -> type[argparse.Action]:
    """An argparse action for a renamed flag: it stores into the new flag's destination and warns.

    The warning is a ``DeprecationWarning`` (for programs that run ``main``) and one line on
    stderr (for people: Python hides DeprecationWarnings outside ``__main__``).
    """

    class Deprecated(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: str | Sequence[Any] | None,
            option_string: str | None = None,
        ) -> None:
            message = f"{old} is deprecated and will be removed in the next release; use {new}"
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            warn(message)
            setattr(namespace, self.dest, True if self.nargs == 0 else values)

    return Deprecated
