"""``contextual-loss download-weights``: fetch torchvision's ImageNet VGG19 weights for offline use.

Run it on a machine with internet. Without ``--out`` the file goes to the torch hub cache, where
``weights="imagenet"`` finds it; with ``--out DIR`` it goes to DIR, to be copied to another
machine's cache or passed as ``weights=PATH``. Neither finding nor downloading the file imports
torchvision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contextual_loss.cli import COMMANDS
from contextual_loss.cli.parser import CommandError, check_output_folder, deprecated_flag
from contextual_loss.features.weights import WeightsNotFoundError, download_vgg19_weights, vgg19_cache_path

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    """Download (or find) the checkpoint and print where it is and how to use it.

    Raises:
        CommandError: ``--out`` is not a folder, or the download failed (exit status 2).

    """
    cached = vgg19_cache_path()
    target_dir = cached.parent if args.out is None else Path(args.out).expanduser()
    check_output_folder("--out", target_dir)
    existed = (target_dir / cached.name).is_file()
    try:
        path = download_vgg19_weights(target_dir, progress=not args.no_progress)
    except (WeightsNotFoundError, OSError) as error:
        raise CommandError(str(error)) from error
    print(f"VGG19 ImageNet weights {'already present' if existed else 'saved'} at {path}")
    if path.resolve() == cached.resolve():
        print('weights="imagenet" (the default) will load them on this machine.')
    else:
        print(f'Use them with weights="{path}", or copy the file to {cached} (the torch hub cache).')
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download-weights`` sub-command."""
    parser = subparsers.add_parser(
        "download-weights",
        help=COMMANDS["download_weights"],
        description=(
            "Download torchvision's ImageNet VGG19 weights (548 MB, SHA-256 checked) into the torch hub cache "
            f"({vgg19_cache_path().parent}; set TORCH_HOME to change it) or into --out DIR. A file already there "
            "is kept."
        ),
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="folder to save the file into")
    parser.add_argument(
        "--dest", dest="out", metavar="DIR", action=deprecated_flag("--dest", "--out"), help="deprecated: use --out DIR"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--quiet",
        dest="no_progress",
        nargs=0,
        action=deprecated_flag("--quiet", "--no-progress"),
        help="deprecated: use --no-progress",
    )
    parser.set_defaults(func=run)
