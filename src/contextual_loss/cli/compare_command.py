"""``contextual-loss compare PRED TARGET``: CX, the CX loss and the CoBi loss between images.

PRED and TARGET are two image files, or two folders whose images are paired by name (``a.png``
with ``a.jpg``). The images may differ in size. Results go to the terminal as a table, as JSON
(``--json``), or to a CSV or JSON file (``--output``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from contextual_loss.cli.options import (
    CommandError,
    FeatureSpec,
    add_feature_options,
    add_loss_options,
    build_features,
    load_pair,
    resolve_device,
    warn,
)
from contextual_loss.io import pair_images
from contextual_loss.modules import ContextualBilateralLoss, ContextualLoss

__all__ = ["compare_images", "register", "run"]

COLUMNS = ("prediction", "target", "cx", "cx_loss", "cobi_loss", "prediction_size", "target_size")


def _generator(args: argparse.Namespace) -> torch.Generator | None:
    """A fresh generator seeded with ``--seed`` when positions are sampled: CX and CoBi draw the same ones."""
    return None if args.max_points is None else torch.Generator().manual_seed(args.seed)


def _loss_modules(spec: FeatureSpec, args: argparse.Namespace) -> tuple[ContextualLoss, ContextualBilateralLoss]:
    """The library's CX and CoBi losses on the chosen features, per image (``reduction="none"``)."""
    common: dict[str, Any] = {
        "band_width": args.band_width,
        "loss_type": args.loss_type,
        "features": spec.extractor,
        "layers": spec.layers,
        "reduction": "none",
        "max_points": args.max_points,
    }
    return ContextualLoss(**common), ContextualBilateralLoss(args.weight_sp, form=args.cobi_form, **common)


def compare_images(
    prediction: torch.Tensor, target: torch.Tensor, spec: FeatureSpec, args: argparse.Namespace
) -> dict[str, Any]:
    """CX, CX loss and CoBi loss of one image pair, summed over the feature layers with their weights.

    For one layer ``cx`` is CX itself; for several it is exp(-cx_loss / total weight), the weighted
    geometric mean of the layers' CX, and ``layers`` holds each layer's values.
    """
    cx_module, cobi_module = _loss_modules(spec, args)
    with torch.inference_mode():
        cx_layers = cx_module.layer_losses(prediction, target, generator=_generator(args))
        cobi_layers = cobi_module.layer_losses(prediction, target, generator=_generator(args))
        cx_loss = float(cx_module.combine_layers(cx_layers)[0])
        cobi_loss = float(cobi_module.combine_layers(cobi_layers)[0])
    total_weight = sum(spec.layer_weights.values())
    result: dict[str, Any] = {
        "cx": math.exp(-cx_loss / total_weight) if total_weight > 0 else float("nan"),
        "cx_loss": cx_loss,
        "cobi_loss": cobi_loss,
        "prediction_size": "x".join(map(str, prediction.shape[-2:])),
        "target_size": "x".join(map(str, target.shape[-2:])),
    }
    if len(spec.layer_weights) > 1:
        result["layers"] = {
            name: {"cx": math.exp(-float(loss[0])), "cx_loss": float(loss[0]), "cobi_loss": float(cobi_layers[name][0])}
            for name, loss in cx_layers.items()
        }
    return result


def _settings(args: argparse.Namespace, spec: FeatureSpec, device: torch.device) -> dict[str, Any]:
    return {
        "features": spec.description,
        "layer_weights": spec.layer_weights,
        "band_width": args.band_width,
        "loss_type": args.loss_type,
        "weight_sp": args.weight_sp,
        "cobi_form": args.cobi_form,
        "max_side": args.max_side,
        "max_points": args.max_points,
        "device": str(device),
    }


def _compare_pair(pred: Path, target: Path, spec: FeatureSpec, args: argparse.Namespace, device: torch.device) -> dict:
    x, y = load_pair(pred, target, args.max_side, device)
    try:
        values = compare_images(x, y, spec, args)
    except (ValueError, TypeError) as error:  # e.g. a patch larger than a tiny image
        raise CommandError(f"{pred} vs {target}: {error}") from error
    return {"prediction": str(pred), "target": str(target), **values}


def _progress(items: Sequence[Any], enabled: bool) -> Iterable[Any]:
    """A tqdm progress bar on stderr when tqdm is installed and stderr is a terminal."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # an optional extra without stubs
    except ImportError:
        return items
    return tqdm(items, desc="comparing", unit="pair", file=sys.stderr, disable=None)


def _pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    pred, target = Path(args.prediction), Path(args.target)
    for label, path in (("PRED", pred), ("TARGET", target)):
        if not path.exists():
            raise CommandError(f"{label}: no such file or folder: {path}")
    if pred.is_dir() != target.is_dir():
        raise CommandError(f"PRED and TARGET must be two image files or two folders, got {pred} and {target}")
    if not pred.is_dir():
        return [(pred, target)]
    found = pair_images(pred, target)
    for label, files in (("prediction", found.unpaired_predictions), ("target", found.unpaired_targets)):
        if files:
            names = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
            warn(f"{len(files)} {label} image(s) without a partner of the same name, skipped: {names}")
    if not found.pairs:
        raise CommandError(f"no images with the same name in {pred} and {target}")
    return found.pairs


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {key: sum(row[key] for row in rows) / len(rows) for key in ("cx", "cx_loss", "cobi_loss")}


def _write(path: Path, rows: list[dict[str, Any]], settings: dict[str, Any], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        document = {"settings": settings, "results": rows, "mean": _mean(rows)}
        path.write_text(json.dumps(document, indent=2) + "\n")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


def _output_format(args: argparse.Namespace) -> str | None:
    if args.output is None:
        return None
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise CommandError(f"--output must end in .csv or .json, got {args.output}")
    return suffix[1:]


def _print_single(row: dict[str, Any], settings: dict[str, Any]) -> None:
    print(f"prediction  {row['prediction']} ({row['prediction_size']})")
    print(f"target      {row['target']} ({row['target_size']})")
    print(f"features    {settings['features']}, {settings['loss_type']} distance, band width {settings['band_width']}")
    print(f"CX          {row['cx']:.6f}   (1 = every target feature has its own exact match)")
    print(f"CX loss     {row['cx_loss']:.6f}   (-log CX)")
    print(f"CoBi loss   {row['cobi_loss']:.6f}   ({settings['cobi_form']} form, weight_sp {settings['weight_sp']})")
    for name, values in row.get("layers", {}).items():
        print(f"  {name}: CX {values['cx']:.6f}, CX loss {values['cx_loss']:.6f}, CoBi loss {values['cobi_loss']:.6f}")


def _print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len("prediction"), *(len(Path(row["prediction"]).name) for row in rows))
    print(f"{'prediction':<{width}}  {'CX':>9}  {'CX loss':>9}  {'CoBi loss':>9}")
    for row in rows:
        print(
            f"{Path(row['prediction']).name:<{width}}  {row['cx']:9.6f}  {row['cx_loss']:9.6f}  {row['cobi_loss']:9.6f}"
        )
    mean = _mean(rows)
    print(f"{'mean':<{width}}  {mean['cx']:9.6f}  {mean['cx_loss']:9.6f}  {mean['cobi_loss']:9.6f}")


def run(args: argparse.Namespace) -> int:
    """Compare the images and report; returns the exit status."""
    fmt = _output_format(args)
    pairs = _pairs(args)
    device = resolve_device(args.device)
    spec = build_features(args)
    spec.extractor.to(device)
    settings = _settings(args, spec, device)
    folders = Path(args.prediction).is_dir()
    iterator: Iterator[tuple[Path, Path]] = iter(_progress(pairs, folders and not args.no_progress))
    rows = [_compare_pair(pred, target, spec, args, device) for pred, target in iterator]
    if fmt is not None:
        _write(Path(args.output), rows, settings, fmt)
    if args.json:
        document: dict[str, Any] = {"settings": settings}
        document.update({"results": rows, "mean": _mean(rows)} if folders else rows[0])
        print(json.dumps(document, indent=2))
    elif folders:
        _print_table(rows)
    else:
        _print_single(rows[0], settings)
    if fmt is not None and not args.json:
        print(f"wrote {len(rows)} result(s) to {args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        "compare",
        help="CX, CX loss and CoBi loss between two images or two folders of images",
        description="Print the contextual similarity CX, the contextual loss -log CX and the contextual "
        "bilateral loss (CoBi) between a prediction and a target image. With two folders, images are "
        "paired by name (a.png with a.jpg) and the results can be written to a CSV or JSON file.",
    )
    parser.add_argument("prediction", metavar="PRED", help="prediction image, or a folder of images")
    parser.add_argument("target", metavar="TARGET", help="target image, or a folder of images")
    add_feature_options(parser)
    add_loss_options(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--output", metavar="FILE", help="also write the results to FILE (.csv or .json)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    parser.set_defaults(func=run)
