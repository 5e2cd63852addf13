"""The ``contextual-loss`` command line (also ``python -m contextual_loss``).

Each sub-command ``NAME`` lives in the module ``NAME_command`` of this package (``demo_command``,
``compare_command``, ...: no name shared with the library's modules) and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning an
exit status. Problems the user can fix (missing or unreadable files, bad options, a missing
optional dependency) are reported on one line with exit status 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from contextual_loss.cli.options import CommandError, OneLineParser

__all__ = ["build_parser", "main"]

#: Sub-commands (module ``contextual_loss.cli.<name>_command``), in the order ``--help`` lists them.
COMMANDS = ("demo", "compare", "explain", "download_weights")


def build_parser() -> OneLineParser:
    """The top-level parser with every sub-command registered."""
    from contextual_loss import __version__

    parser = OneLineParser(
        prog="contextual-loss",
        description="Contextual Loss (CX) and Contextual Bilateral loss (CoBi) for images that are not aligned.",
        epilog="Start with `contextual-loss demo`; `contextual-loss COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"contextual_loss.cli.{name}_command").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 usage or input error)."""
    from contextual_loss.io import ImageReadError
    from contextual_loss.viz import MissingExtraError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (CommandError, ImageReadError, MissingExtraError) as error:
        print(f"contextual-loss: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("contextual-loss: interrupted", file=sys.stderr)
        return 130
