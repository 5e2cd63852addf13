"""The ``contextual-loss`` command line (also ``python -m contextual_loss``).

Each sub-command ``NAME`` lives in the module ``NAME_command`` of this package (``demo_command``,
``compare_command``, ...: no name shared with the library's modules) and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning an
exit status. Only the command being run is imported: ``--version`` and ``--help`` import neither
PyTorch nor torchvision, and no command but those using VGG19 imports torchvision.

Conventions shared by every command:

- Problems the user can fix (missing or unreadable files, bad options, a missing optional
  dependency, a failed download) are reported on one line with exit status 2, without a traceback.
- Results go to stdout; notes, warnings and progress go to stderr.
- Output files and folders are given with ``--out``; an existing file is never overwritten unless
  ``--force`` is given. ``--no-progress`` turns progress bars off.
- A closed pipe (``contextual-loss compare ... | head -1``) ends the command quietly (status 141,
  as for a process killed by SIGPIPE).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from contextual_loss.cli.parser import CommandError, OneLineParser

__all__ = ["COMMANDS", "build_parser", "main"]

#: Sub-command (module ``contextual_loss.cli.<name>_command``) -> its one-line help, in ``--help`` order.
COMMANDS = {
    "demo": "run the built-in demonstration (no downloads, a few seconds)",
    "compare": "CX, CX loss and CoBi loss between two images or two folders of images",
    "explain": "draw what the loss matched between two images",
    "download_weights": "download the ImageNet VGG19 weights into the torch hub cache (needs internet)",
}

#: Exit status after a closed pipe: 128 + SIGPIPE, what a shell reports for a process killed by it.
BROKEN_PIPE_STATUS = 141


def _command_name(name: str) -> str:
    return name.replace("_", "-")


def build_parser(command: str | None = None) -> OneLineParser:
    """The top-level parser.

    Args:
        command: register only this sub-command in full (the others are listed by name and help
            line, without importing their modules); ``None`` registers every sub-command.

    """
    from contextual_loss import __version__  # the package imports nothing heavy at first

    parser = OneLineParser(
        prog="contextual-loss",
        description="Contextual Loss (CX) and Contextual Bilateral loss (CoBi) for images that are not aligned.",
        epilog="Start with `contextual-loss demo`; `contextual-loss COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if command is None or _command_name(name) == command:
            importlib.import_module(f"contextual_loss.cli.{name}_command").register(subparsers)
        else:
            subparsers.add_parser(_command_name(name), help=summary, add_help=False)
    return parser


def _requested_command(argv: Sequence[str]) -> str:
    """The sub-command named in ``argv`` ("" if none): the top-level options take no values."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 usage or input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    except KeyboardInterrupt:
        print("contextual-loss: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"contextual-loss: error: {error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a user fixes: :class:`CommandError`, an unreadable image, a missing optional extra.

    The last two are looked up only in modules already imported (an error of a class can only
    come from its module), so that this module imports nothing heavy.
    """
    classes: list[type[Exception]] = [CommandError]
    for module, name in (("contextual_loss.io", "ImageReadError"), ("contextual_loss.viz", "MissingExtraError")):
        if module in sys.modules:
            classes.append(getattr(sys.modules[module], name))
    return tuple(classes)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
