"""Options shared by the sub-commands, and the features and settings they describe.

Every sub-command describes its features the same way (``--patch-size``, ``--pixels``, or
``--vgg-layers`` with ``--weights`` and ``--vgg-pooling`` for VGG19 features), its loss the same
way (``--band-width``, ``--loss-type``, ``--weight-sp``, ``--cobi-form``), the size of what it
compares the same way (``--max-side``, ``--max-points``, ``--seed``) and its outputs the same way
(``--out``, ``--force``, ``--no-progress``). The defaults of the distance and of CoBi's spatial
weight follow the features, as in the library (:func:`contextual_loss.options.feature_defaults`).
Problems a user can fix (a missing file, a bad option value) raise :class:`CommandError`;
``main`` prints its message on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contextual_loss.cli.parser import CommandError, OneLineParser, check_output_file, deprecated_flag, note, warn
from contextual_loss.features import IdentityFeatures, PatchFeatures, VGG19Features, WeightsNotFoundError
from contextual_loss.features.compose import normalize_layers
from contextual_loss.features.patches import PADDINGS
from contextual_loss.features.vgg import POOLINGS
from contextual_loss.io import load_image, resize_max_side
from contextual_loss.options import (
    COBI_FORMS,
    DEFAULTS,
    LOSS_TYPES,
    PIXEL_FEATURE_DEFAULTS,
    SAMPLES,
    VGG_FEATURE_DEFAULTS,
    WEIGHT_SP_BY_DISTANCE,
    FeatureKind,
    feature_defaults,
)

__all__ = [
    "DEFAULT_MAX_POINTS",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_SAMPLE",
    "CommandError",
    "FeatureSpec",
    "LoadedPair",
    "OneLineParser",
    "add_feature_options",
    "add_loss_options",
    "add_output_options",
    "add_size_options",
    "build_features",
    "check_output_file",
    "load_pair",
    "note",
    "resolve_device",
    "resolve_loss_defaults",
    "warn",
]

#: Default ``--max-side``: 0, images are never resized unless asked. Resizing turns integer shifts
#: into sub-pixel ones and reorders results (docs/cli.md, "Size": measured on real photos).
DEFAULT_MAX_SIDE = 0

#: Default ``--max-points``: at most this many of the target's positions are compared, drawn at
#: random (the pixels stay exact); smaller images are compared in full.
DEFAULT_MAX_POINTS = 4096

#: Default ``--sample``: which images ``--max-points`` samples. ``target``: every position of the
#: prediction is kept, so each sampled target feature still meets its true match and the loss stays
#: graded in the misalignment (a 1 px shift costs little); sampling ``both`` (the same positions of
#: both, as in training) leaves most true matches out and makes any shift look almost unrelated
#: (measured on real photos: docs/cli.md, "Size"). The work is N x max_points per comparison.
DEFAULT_SAMPLE = "target"


def add_feature_options(parser: argparse.ArgumentParser, *, default_patch_size: int = 5) -> None:
    """Add ``--patch-size``, ``--pixels``, ``--padding``, ``--vgg-layers``, ``--weights`` and ``--vgg-pooling``."""
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
        help="compare VGG19 activations of these layers, e.g. relu3_2,relu4_2 or relu3_2:1,relu4_2:0.5 "
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


def add_loss_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--band-width``, ``--loss-type``, ``--weight-sp`` and ``--cobi-form``."""
    pixel, vgg = PIXEL_FEATURE_DEFAULTS, VGG_FEATURE_DEFAULTS
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
        default=None,
        help=f"distance between features (default: {pixel.loss_type} for pixels and patches, "
        f"{vgg.loss_type} for VGG19 features)",
    )
    group.add_argument(
        "--weight-sp",
        type=nonnegative_float,
        default=None,
        metavar="W",
        help="CoBi's spatial weight w_s, read against the feature distance (default: "
        + ", ".join(f"{weight:g} for {distance}" for distance, weight in WEIGHT_SP_BY_DISTANCE.items())
        + ")",
    )
    group.add_argument(
        "--cobi-form",
        choices=COBI_FORMS,
        default=DEFAULTS.form,
        help=f"CoBi as in the paper or the released code's mixture, for reproductions only (default: {DEFAULTS.form})",
    )


def add_size_options(parser: argparse.ArgumentParser, *, sampling: bool = True) -> None:
    """Add ``--max-side``, ``--max-points`` and ``--seed`` (the last two only with ``sampling``) and ``--device``."""
    size = parser.add_argument_group("size and device")
    size.add_argument(
        "--max-side",
        type=nonnegative_int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help="shrink both images so that their longer side is at most PX pixels; 0 (default) keeps the stored "
        "pixels. Resizing turns integer shifts into sub-pixel ones: prefer --max-points",
    )
    if sampling:
        size.add_argument(
            "--max-points",
            type=nonnegative_int,
            default=DEFAULT_MAX_POINTS,
            metavar="N",
            help=f"compare at most N positions of the target (with --sample both: of each image), drawn at "
            f"random; the pixels stay exact. 0 compares every position: the work grows with the square of the "
            f"number of positions (default: {DEFAULT_MAX_POINTS})",
        )
        size.add_argument(
            "--sample",
            choices=SAMPLES,
            default=DEFAULT_SAMPLE,
            help="which images --max-points samples: the target only, keeping every prediction position so that "
            "each target feature meets its true match, or both, at the same positions, as in training "
            f"(default: {DEFAULT_SAMPLE})",
        )
        size.add_argument("--seed", type=int, default=0, help="seed of the position sampling (default: 0)")
    size.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )


def add_output_options(
    parser: argparse.ArgumentParser, *, metavar: str, help: str, required: bool = False, old: str | None = None
) -> argparse._ArgumentGroup:
    """Add ``--out`` (described by ``help``), ``--force`` and ``--no-progress``; ``old``: a deprecated ``--out``."""
    group = parser.add_argument_group("output")
    group.add_argument("--out", metavar=metavar, required=required, help=help)
    if old is not None:
        action = deprecated_flag(old, "--out")
        group.add_argument(old, dest="out", metavar=metavar, action=action, help=f"deprecated: use --out {metavar}")
    group.add_argument("--force", action="store_true", help="overwrite output files that already exist")
    group.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return group


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


@dataclass(frozen=True)
class FeatureSpec:
    """A feature extractor, the weights of its maps and a one-line description.

    Attributes:
        extractor: maps an image to a dict of named feature maps (in eval mode).
        layer_weights: name -> weight of each compared map.
        description: one line for the report.
        layers: the loss modules' ``layers=`` argument that goes with ``features=extractor``:
            ``None`` (every map the extractor returns, weight 1) or ``layer_weights``.
        kind: ``"pixels"`` for pixels and patches, ``"deep"`` for VGG19 features: chooses the
            default distance and spatial weight.

    """

    extractor: nn.Module
    layer_weights: dict[str, float]
    description: str
    layers: dict[str, float] | None = None
    kind: FeatureKind = "pixels"


def _parse_layers(text: str) -> dict[str, float]:
    layers: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        try:
            layers[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise CommandError(f"--vgg-layers: expected NAME or NAME:WEIGHT, got {item!r}") from None
    if not layers:
        raise CommandError(f"--vgg-layers: expected layer names such as relu3_2,relu4_2, got {text!r}")
    return layers


def build_features(args: argparse.Namespace) -> FeatureSpec:
    """The feature extractor the options describe, in eval mode.

    Raises:
        CommandError: bad feature options, an unknown VGG19 layer, unreadable or missing weights,
            or a torchvision that cannot be imported.

    """
    if args.vgg_layers is None and (args.weights is not None or args.vgg_pooling != "max"):
        raise CommandError("--weights and --vgg-pooling only apply to VGG19 features; add --vgg-layers relu3_2,relu4_2")
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
    except (ValueError, TypeError, OSError, ImportError) as error:  # unknown layer, unreadable weights, torchvision
        raise CommandError(f"VGG19 features: {error}") from error
    names = ", ".join(f"{name} x{weight:g}" for name, weight in layers.items())
    source = {None: "random weights", "imagenet": "ImageNet weights"}.get(weights, f"weights {weights}")
    return FeatureSpec(extractor.eval(), layers, f"VGG19 {names} ({source})", layers=layers, kind="deep")


def resolve_loss_defaults(args: argparse.Namespace, spec: FeatureSpec) -> list[str]:
    """Set ``--loss-type`` and ``--weight-sp`` left out (``None``) to the features' defaults.

    Returns:
        The names of the options chosen this way (``"loss_type"``, ``"weight_sp"``), for the report.

    """
    chosen = []
    if args.loss_type is None:
        args.loss_type = feature_defaults(spec.kind).loss_type
        chosen.append("loss_type")
    if args.weight_sp is None:
        args.weight_sp = feature_defaults(spec.kind, args.loss_type).weight_sp
        chosen.append("weight_sp")
    return chosen


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


@dataclass(frozen=True)
class LoadedPair:
    """Two images as compared, and their stored sizes.

    Attributes:
        prediction: (1, 3, H, W) in [0, 1], on the device, after any resizing.
        target: (1, 3, H', W').
        stored: ((H, W), (H', W')) as stored in the files.

    """

    prediction: torch.Tensor
    target: torch.Tensor
    stored: tuple[tuple[int, int], tuple[int, int]]

    @property
    def resized(self) -> bool:
        """Whether either image was shrunk (``--max-side``)."""
        return self.stored != (_size(self.prediction), _size(self.target))


def _size(image: torch.Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])


def load_pair(
    prediction: str | os.PathLike, target: str | os.PathLike, max_side: int, device: torch.device
) -> LoadedPair:
    """Both images as (1, 3, H, W) tensors on ``device``, shrunk to ``max_side`` (0: stored size)."""
    images = load_image(prediction), load_image(target)
    stored = (_size(images[0]), _size(images[1]))
    if max_side:
        images = (resize_max_side(images[0], max_side), resize_max_side(images[1], max_side))
    return LoadedPair(images[0].to(device), images[1].to(device), stored)
