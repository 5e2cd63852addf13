"""Options and error handling shared by the sub-commands.

Every sub-command describes its features the same way (``--patch-size``, ``--pixels``, or
``--vgg-layers`` with ``--weights`` and ``--vgg-pooling`` for VGG19 features) and its loss
the same way (``--band-width``, ``--loss-type``, ``--weight-sp``, ``--cobi-form``). Problems a user
can fix (a missing file, a bad option value) raise :class:`CommandError`; ``main`` prints its
message on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from contextual_loss.features import IdentityFeatures, PatchFeatures, VGG19Features, WeightsNotFoundError
from contextual_loss.features.compose import normalize_layers
from contextual_loss.features.patches import PADDINGS
from contextual_loss.features.vgg import POOLINGS
from contextual_loss.io import load_image
from contextual_loss.options import COBI_FORMS, DEFAULT_WEIGHT_SP, DEFAULTS, LOSS_TYPES

__all__ = [
    "CommandError",
    "FeatureSpec",
    "OneLineParser",
    "add_feature_options",
    "add_loss_options",
    "build_features",
    "load_pair",
    "resolve_device",
]

#: Default longest image side for ``compare`` (images are shrunk to it; 0 keeps the full size).
#: The work grows with (H W)^2 and the memory, on the streaming engine, with H W; docs/cli.md
#: gives the time and memory measured at 64 x 64 and 128 x 128.
DEFAULT_MAX_SIDE = 128


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, *, minimum: float, strict: bool) -> Any:
    """An argparse ``type`` that parses ``kind`` and checks the lower bound."""
    relation = ">" if strict else ">="

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected a value {relation} {minimum:g}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_float = _number(float, minimum=0.0, strict=True)
nonnegative_float = _number(float, minimum=0.0, strict=False)
positive_int = _number(int, minimum=1, strict=False)
nonnegative_int = _number(int, minimum=0, strict=False)


def add_feature_options(parser: argparse.ArgumentParser, *, default_patch_size: int = 5) -> None:
    """Add ``--patch-size``, ``--pixels``, ``--padding``, ``--vgg-layers`` and ``--weights``."""
    group = parser.add_argument_group("features (what is compared; default: 5 x 5 RGB patches)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--patch-size",
        type=positive_int,
        default=default_patch_size,
        metavar="N",
        help=f"compare the n x n patches around every pixel (default: {default_patch_size})",
    )
    choice.add_argument("--pixels", action="store_true", help="compare single pixels (their RGB values)")
    choice.add_argument(
        "--vgg-layers",
        metavar="LAYERS",
        help="compare VGG19 activations of these layers, e.g. conv3_2,conv4_2 or conv3_2:1,conv4_2:0.5 "
        "(weighted sum of the layers' losses)",
    )
    group.add_argument(
        "--padding",
        choices=PADDINGS,
        default="reflect",
        help="how patches at the border are completed (default: reflect)",
    )
    group.add_argument(
        "--weights",
        metavar="PATH",
        help="VGG19 weights with --vgg-layers: 'imagenet' (default; the torch hub cache, downloaded when "
        "missing and online, see `contextual-loss download-weights`), a torchvision state dict file, or 'random'",
    )
    group.add_argument(
        "--vgg-pooling",
        choices=POOLINGS,
        default="max",
        help="VGG19 pooling: max (torchvision) or avg (the authors' network) (default: max)",
    )


def add_loss_options(
    parser: argparse.ArgumentParser, *, max_side: int = DEFAULT_MAX_SIDE, sampling: bool = True
) -> None:
    """Add the loss, size and device options (``--max-points`` and ``--seed`` only with ``sampling``)."""
    group = parser.add_argument_group("loss")
    group.add_argument(
        "--band-width",
        type=positive_float,
        default=DEFAULTS.band_width,
        metavar="H",
        help=f"band width h > 0 (default: {DEFAULTS.band_width})",
    )
    group.add_argument(
        "--loss-type",
        choices=LOSS_TYPES,
        default=DEFAULTS.loss_type,
        help=f"distance between features (default: {DEFAULTS.loss_type})",
    )
    group.add_argument(
        "--weight-sp",
        type=nonnegative_float,
        default=DEFAULT_WEIGHT_SP,
        metavar="W",
        help=f"CoBi's spatial weight w_s (default: {DEFAULT_WEIGHT_SP})",
    )
    group.add_argument(
        "--cobi-form",
        choices=COBI_FORMS,
        default=DEFAULTS.form,
        help=f"CoBi as in the paper or the released code's mixture, for reproductions only (default: {DEFAULTS.form})",
    )
    size = parser.add_argument_group("size and device")
    size.add_argument(
        "--max-side",
        type=nonnegative_int,
        default=max_side,
        metavar="PX",
        help=f"shrink images so that their longer side is at most PX pixels; 0 keeps the full size "
        f"(cost grows with the 4th power of the side; default: {max_side})",
    )
    if sampling:
        _add_sampling(size)
    size.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )


def _add_sampling(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--max-points",
        type=positive_int,
        metavar="N",
        help="compare at most N randomly drawn positions per image (the authors used 4225 = 65 x 65)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the position sampling (default: 0)")


@dataclass(frozen=True)
class FeatureSpec:
    """A feature extractor, the weights of its maps and a one-line description.

    Attributes:
        extractor: maps an image to a dict of named feature maps (in eval mode).
        layer_weights: name -> weight of each compared map.
        description: one line for the report.
        layers: the loss modules' ``layers=`` argument that goes with ``features=extractor``:
            ``None`` (every map the extractor returns, weight 1) or ``layer_weights``.

    """

    extractor: nn.Module
    layer_weights: dict[str, float]
    description: str
    layers: dict[str, float] | None = None


def _parse_layers(text: str) -> dict[str, float]:
    layers: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        try:
            layers[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise CommandError(f"--vgg-layers: expected NAME or NAME:WEIGHT, got {item!r}") from None
    if not layers:
        raise CommandError(f"--vgg-layers: expected layer names such as conv3_2,conv4_2, got {text!r}")
    return layers


def build_features(args: argparse.Namespace) -> FeatureSpec:
    """The feature extractor the options describe, in eval mode.

    Raises:
        CommandError: bad feature options, an unknown VGG19 layer, unreadable or missing weights.

    """
    if args.vgg_layers is None and (args.weights is not None or args.vgg_pooling != "max"):
        raise CommandError("--weights and --vgg-pooling only apply to VGG19 features; add --vgg-layers conv3_2,conv4_2")
    if args.vgg_layers is not None:
        return _vgg_features(args)
    if args.pixels:
        return FeatureSpec(IdentityFeatures().eval(), {"input": 1.0}, "pixels (RGB values)")
    size = args.patch_size
    return FeatureSpec(
        PatchFeatures(size, args.padding).eval(),
        {"patches": 1.0},
        f"{size}x{size} RGB patches ({args.padding} padding)",
    )


def _vgg_features(args: argparse.Namespace) -> FeatureSpec:
    """VGG19 features of the named layers; weights from the hub cache, a file, or random."""
    given: str = args.weights or "imagenet"
    if given not in ("imagenet", "random") and not Path(given).is_file():
        raise CommandError(f"--weights: no such file: {given} (give a state dict file, 'imagenet' or 'random')")
    weights = None if given == "random" else given
    try:
        layers = normalize_layers(_parse_layers(args.vgg_layers)) or {}  # never empty: _parse_layers checks
        extractor = VGG19Features(list(layers), weights=weights, pooling=args.vgg_pooling)
    except WeightsNotFoundError as error:  # the ImageNet weights are not cached and cannot be downloaded
        raise CommandError(
            f"VGG19 features: {error}. On the command line: run `contextual-loss download-weights` on a machine "
            "with internet (see its --help), or pass --weights PATH or --weights random"
        ) from error
    except (ValueError, TypeError, OSError) as error:  # unknown layer, negative weight, unreadable weights
        raise CommandError(f"VGG19 features: {error}") from error
    names = ", ".join(f"{name} x{weight:g}" for name, weight in layers.items())
    source = {None: "random weights", "imagenet": "ImageNet weights"}.get(weights, f"weights {weights}")
    return FeatureSpec(extractor.eval(), layers, f"VGG19 {names} ({source})", layers=layers)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CommandError(f"--device: unknown device {name!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def load_pair(
    prediction: str | os.PathLike, target: str | os.PathLike, max_side: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as (1, 3, H, W) tensors on ``device``, shrunk to ``max_side`` (0: full size)."""
    side = max_side or None
    return (
        load_image(prediction, max_side=side).to(device),
        load_image(target, max_side=side).to(device),
    )


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    print(f"contextual-loss: warning: {message}", file=sys.stderr)
