"""``contextual-loss download-weights``: fetch torchvision's ImageNet VGG19 weights for offline use.

Run it on a machine with internet. Without ``--dest`` the file goes to the torch hub cache, where
``weights="imagenet"`` finds it; with ``--dest DIR`` it goes to DIR, to be copied to another
machine's cache or passed as ``weights=PATH``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contextual_loss.features.weights import WeightsNotFoundError, download_vgg19_weights, vgg19_cache_path

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    """Download (or find) the checkpoint and print where it is and how to use it."""
    cached = vgg19_cache_path()
    target_dir = cached.parent if args.dest is None else args.dest
    existed = (target_dir / cached.name).is_file()
    try:
        path = download_vgg19_weights(target_dir, progress=not args.quiet)
    except WeightsNotFoundError as error:
        print(f"contextual-loss download-weights: {error}", file=sys.stderr)
        return 1
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
        help="download the ImageNet VGG19 weights into the torch hub cache (needs internet)",
        description=(
            "Download torchvision's ImageNet VGG19 weights (548 MB, SHA-256 checked) into the torch hub cache "
            f"({vgg19_cache_path().parent}; set TORCH_HOME to change it) or into --dest DIR."
        ),
    )
    parser.add_argument("--dest", type=_folder, default=None, metavar="DIR", help="folder to save the file into")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _folder(value: str) -> Path:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"--dest must be a folder, got the file {value!r}")
    return path
