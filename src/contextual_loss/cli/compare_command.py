"""``contextual-loss compare PRED TARGET``: CX, the CX loss and the CoBi loss between images.

PRED and TARGET are two image files, or two folders whose images are paired by name (``a.png``
with ``a.jpg``). The images may differ in size. Results go to the terminal as a report or a table,
as JSON (``--json``), or to a CSV or JSON file (``--out``).

The report says exactly what was computed: each image's stored size and the size compared (the
images are shrunk only with ``--max-side``), how many positions were compared (at most
``--max-points``, drawn at random; the pixels stay exact), the features, the distance and band
width (and whether they are the features' defaults), the engine, the work in entries and the
time, and how many target features have an exact duplicate, which caps CX below 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contextual_loss import engine as _engine
from contextual_loss._pipeline import evaluate_prepared, prepare
from contextual_loss.cli import COMMANDS
from contextual_loss.cli.options import (
    CommandError,
    FeatureSpec,
    LoadedPair,
    add_feature_options,
    add_loss_options,
    add_output_options,
    add_size_options,
    build_features,
    check_output_file,
    load_pair,
    note,
    resolve_device,
    resolve_loss_defaults,
    warn,
)
from contextual_loss.cli.work import (
    CALIBRATION_COLUMNS,
    ESTIMATE_ABOVE,
    LONG_RUN_SECONDS,
    Evaluation,
    ProgressLine,
    engine_for,
    format_duration,
    measure_rate,
)
from contextual_loss.explain import Duplicates, target_duplicates
from contextual_loss.io import pair_images
from contextual_loss.options import ContextualOptions

__all__ = ["COLUMNS", "compare_images", "register", "run"]

#: The CSV file's columns (sizes as compared, then as stored; CX's cap from exact duplicates).
COLUMNS = (
    "prediction",
    "target",
    "cx",
    "cx_loss",
    "cobi_loss",
    "prediction_size",
    "target_size",
    "prediction_stored_size",
    "target_stored_size",
    "positions",
    "cx_cap",
)

#: The two losses ``compare`` reports, in the order they are evaluated.
LOSSES = ("CX", "CoBi")


def _size_text(size: tuple[int, int] | torch.Size) -> str:
    return "x".join(str(int(v)) for v in size)


@dataclass
class _Run:
    """What one invocation compares with: options, features, device, and the work done so far."""

    args: argparse.Namespace
    spec: FeatureSpec
    device: torch.device
    chosen: list[str]
    rates: dict[tuple[int, str, str, int], float] = field(default_factory=dict)
    announced: bool = False

    def options(self, loss: str) -> ContextualOptions:
        """The library's options of CX or CoBi as the command line's arguments give them."""
        args = self.args
        common = {
            "band_width": args.band_width,
            "loss_type": args.loss_type,
            "max_points": args.max_points or None,
            "sample": args.sample,
        }
        if loss == "CX":
            return ContextualOptions(**common)
        return ContextualOptions(**common, weight_sp=args.weight_sp, form=args.cobi_form)


def _generator(args: argparse.Namespace) -> torch.Generator:
    """A fresh generator seeded with ``--seed``: CX and CoBi compare the same positions."""
    return torch.Generator().manual_seed(args.seed)


def _evaluations(run: _Run, fx: dict[str, Tensor], fy: dict[str, Tensor]) -> list[Evaluation]:
    cap = run.args.max_points or None
    items = []
    for loss in LOSSES:
        for name in run.spec.layer_weights:
            (c, h, w), (h2, w2) = fx[name].shape[1:], fy[name].shape[2:]
            n = h * w if run.args.sample == "target" else min(h * w, cap or h * w)
            m = min(h2 * w2, cap or h2 * w2)
            label = loss if len(run.spec.layer_weights) == 1 else f"{loss} {name}"
            items.append(Evaluation(label, n, m, c, engine_for(run.options(loss), n, m, c, run.device)))
    return items


def _estimate(run: _Run, items: list[Evaluation], pairs: int = 1) -> float | None:
    """Seconds the evaluations will take, from rates measured on this machine; ``None`` for small runs."""
    if sum(item.entries for item in items) * pairs <= ESTIMATE_ABOVE:
        return None
    seconds = 0.0
    for item in items:
        loss = item.label.split()[0]
        key = (item.channels, item.engine, loss, min(item.m, CALIBRATION_COLUMNS))
        if key not in run.rates:
            options = run.options(loss)
            run.rates[key] = measure_rate(options, item.channels, item.engine, run.device, n=item.n, m=item.m)
        seconds += item.entries / run.rates[key]
    return seconds * pairs


def _announce(run: _Run, items: list[Evaluation], seconds: float | None, pairs: int) -> None:
    """Say how long a large run will take (stderr); warn before a very long one with the option that shortens it."""
    if seconds is None or run.announced:
        return
    run.announced = True
    entries = sum(item.entries for item in items) * pairs
    sizes = ", ".join(f"{item.label} {item.n} x {item.m}" for item in items)
    scope = f" for {pairs} pairs (from the first pair's sizes)" if pairs > 1 else ""
    work = f"{entries:.2g} entries ({sizes}): about {format_duration(seconds)}{scope} at the rate measured here"
    if seconds < LONG_RUN_SECONDS:
        note(f"this comparison is {work}")
        return
    warn(f"this comparison is {work}; {_shorter(run, items, seconds)} (Ctrl-C stops)")


def _shorter(run: _Run, items: list[Evaluation], seconds: float) -> str:
    """The --max-points that brings a long run to about a quarter of LONG_RUN_SECONDS, and what it does."""
    target_only = run.args.sample == "target"
    compared = max(item.m for item in items)
    share = LONG_RUN_SECONDS / 4 / seconds  # the work shrinks with max_points (target only) or its square (both)
    points = compared * (share if target_only else math.sqrt(share))
    points = max(2 ** int(math.log2(max(points, 1.0))), 16)
    which = "of the target" if target_only else "per image"
    cost = (points / compared) if target_only else (points / compared) ** 2
    return (
        f"--max-points {points} compares {points} positions {which}, drawn at random with the pixels kept exact, "
        f"in about {format_duration(seconds * min(cost, 1.0))}"
    )


def _evaluate(
    run: _Run, loss: str, x: Tensor, y: Tensor, generator: torch.Generator, progress: _engine.ProgressCallback
) -> tuple[float, Duplicates | None]:
    """One loss on one layer: the per-image loss -log CX, and the target's duplicates (CX only)."""
    options = run.options(loss)
    sets = prepare(x, y, options, generator=generator)
    result = evaluate_prepared(sets, options, progress=progress)
    value = max(-float(result.log_similarity[0]), 0.0)  # -log CX >= 0; rounding of order 1e-16 removed
    duplicates = None if loss != "CX" else target_duplicates(sets.y[0].T.unsqueeze(-1))
    return value, duplicates


def compare_images(
    prediction: Tensor,
    target: Tensor,
    spec: FeatureSpec,
    args: argparse.Namespace,
    *,
    progress: ProgressLine | None = None,
    run: _Run | None = None,
    pairs: int = 1,
) -> dict[str, Any]:
    """CX, CX loss and CoBi loss of one image pair, summed over the feature layers with their weights.

    For one layer ``cx`` is CX itself; for several it is exp(-cx_loss / total weight), the weighted
    geometric mean of the layers' CX, and ``layers`` holds each layer's values. ``args`` holds the
    command line's options with ``loss_type`` and ``weight_sp`` resolved. The pair counts as one
    unit of ``progress``; ``pairs`` (the pairs of the run) scales the time estimate.
    """
    run = run or _Run(args, spec, prediction.device, [])
    progress = progress or ProgressLine(1.0, enabled=False)
    with torch.inference_mode():
        fx, fy = spec.extractor(prediction), spec.extractor(target)
        items = _evaluations(run, fx, fy)
        expected = _estimate(run, items, pairs)
        _announce(run, items, expected, pairs)
        if progress.expected is None:
            progress.expected = expected
        total = sum(item.entries for item in items)
        losses: dict[str, dict[str, float]] = {loss: {} for loss in LOSSES}
        duplicates: dict[str, Duplicates] = {}
        start, queue = time.perf_counter(), iter(items)
        for loss in LOSSES:
            generator = _generator(args)  # one draw per layer in turn, as ContextualLoss.layer_losses does
            for name in spec.layer_weights:
                item = next(queue)
                with progress.evaluation(item.label, item.entries / total) as callback:
                    losses[loss][name], found = _evaluate(run, loss, fx[name], fy[name], generator, callback)
                if found is not None:
                    duplicates[name] = found
    return _result(spec, items, losses, duplicates, time.perf_counter() - start)


def _result(
    spec: FeatureSpec,
    items: list[Evaluation],
    losses: dict[str, dict[str, float]],
    duplicates: dict[str, Duplicates],
    seconds: float,
) -> dict[str, Any]:
    weights = spec.layer_weights
    cx_loss = sum(weights[name] * value for name, value in losses["CX"].items())
    total_weight = sum(weights.values())
    result: dict[str, Any] = {
        "cx": math.exp(-cx_loss / total_weight) if total_weight > 0 else float("nan"),
        "cx_loss": cx_loss,
        "cobi_loss": sum(weights[name] * value for name, value in losses["CoBi"].items()),
        "positions": {"prediction": items[0].n, "target": items[0].m},
        "engine": sorted({item.engine for item in items}),
        "entries": sum(item.entries for item in items),
        "seconds": round(seconds, 3),
    }
    if len(weights) == 1:
        result["duplicates"] = _duplicates_json(next(iter(duplicates.values())))
    else:
        result["layers"] = {
            name: {
                "cx": math.exp(-losses["CX"][name]),
                "cx_loss": losses["CX"][name],
                "cobi_loss": losses["CoBi"][name],
                "positions": {"prediction": item.n, "target": item.m},
                "duplicates": _duplicates_json(duplicates[name]),
            }
            for name, item in zip(weights, items, strict=False)
        }
    return result


def _duplicates_json(found: Duplicates) -> dict[str, Any]:
    return {"features": found.features, "duplicated": found.duplicated, "groups": found.groups, "cx_cap": found.cap}


def _settings(args: argparse.Namespace, spec: FeatureSpec, device: torch.device, chosen: list[str]) -> dict[str, Any]:
    return {
        "features": spec.description,
        "layer_weights": spec.layer_weights,
        "band_width": args.band_width,
        "loss_type": args.loss_type,
        "weight_sp": args.weight_sp,
        "cobi_form": args.cobi_form,
        "defaults_from_features": chosen,
        "max_side": args.max_side,
        "max_points": args.max_points,
        "sample": args.sample,
        "seed": args.seed,
        "device": str(device),
    }


def _compare_pair(run: _Run, pred: Path, target: Path, progress: ProgressLine, pairs: int) -> dict[str, Any]:
    pair = load_pair(pred, target, run.args.max_side, run.device)
    try:
        values = compare_images(
            pair.prediction, pair.target, run.spec, run.args, progress=progress, run=run, pairs=pairs
        )
    except (ValueError, TypeError) as error:  # e.g. a patch larger than a tiny image
        raise CommandError(f"{pred} vs {target}: {error}") from error
    return {"prediction": str(pred), "target": str(target), **values, **_sizes(pair)}


def _sizes(pair: LoadedPair) -> dict[str, str]:
    return {
        "prediction_size": _size_text(pair.prediction.shape[-2:]),
        "target_size": _size_text(pair.target.shape[-2:]),
        "prediction_stored_size": _size_text(pair.stored[0]),
        "target_stored_size": _size_text(pair.stored[1]),
    }


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


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    flat = {**row, "positions": f"{row['positions']['prediction']}/{row['positions']['target']}"}
    flat["cx_cap"] = row["duplicates"]["cx_cap"] if "duplicates" in row else ""
    return {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in flat.items()}


def _write(path: Path, rows: list[dict[str, Any]], settings: dict[str, Any], fmt: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            document = {"settings": settings, "results": rows, "mean": _mean(rows)}
            path.write_text(json.dumps(document, indent=2) + "\n")
            return
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(_csv_row(row) for row in rows)
    except OSError as error:
        raise CommandError(f"--out: cannot write {path} ({error.strerror or error})") from error


def _output_format(args: argparse.Namespace) -> str | None:
    if args.out is None:
        return None
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise CommandError(f"--out must end in .csv or .json, got {args.out}")
    check_output_file("--out", out, force=args.force)
    return suffix[1:]


def _describe_size(label: str, path: str, compared: str, stored: str, max_side: int) -> str:
    if compared == stored:
        return f"{label:<11} {path}: {stored}, compared at its stored size"
    return f"{label:<11} {path}: {stored}, shrunk to {compared} (--max-side {max_side})"


def _describe_positions(row: dict[str, Any], settings: dict[str, Any]) -> str:
    sizes = [int(a) * int(b) for a, b in (row[f"{k}_size"].split("x") for k in ("prediction", "target"))]
    kept = row["positions"]["prediction"], row["positions"]["target"]
    if kept[0] == sizes[0] and kept[1] == sizes[1]:
        each = f"{sizes[0]} per image" if sizes[0] == sizes[1] else f"{sizes[0]} and {sizes[1]}"
        return f"{'positions':<11} all, {each}"
    options = f"--max-points {settings['max_points']}, --sample {settings['sample']}, --seed {settings['seed']}"
    if settings["sample"] == "target":
        each = f"all {sizes[0]} of the prediction; {kept[1]} of {sizes[1]} of the target, drawn at random"
    elif sizes[0] == sizes[1]:
        each = f"{kept[0]} of {sizes[0]} per image, drawn at random, the same in both images"
    else:
        each = f"{kept[0]} of {sizes[0]} and {kept[1]} of {sizes[1]}, drawn at random"
    return f"{'positions':<11} {each} ({options}; --max-points 0 compares all)"


def _describe_loss(settings: dict[str, Any]) -> list[str]:
    chosen = settings["defaults_from_features"]
    kind = "VGG19 features" if settings["features"].startswith("VGG19") else "pixels and patches"
    distance = settings["loss_type"] + (f" (the default for {kind})" if "loss_type" in chosen else "")
    weight = f"{settings['weight_sp']:g}"
    if "weight_sp" in chosen:
        weight += f" (the default for {settings['loss_type']})"
    return [
        f"{'features':<11} {settings['features']}",
        f"{'distance':<11} {distance}, band width {settings['band_width']:g}",
        f"{'CoBi':<11} {settings['cobi_form']} form, weight_sp {weight}",
    ]


def _describe_work(row: dict[str, Any]) -> str:
    engines = " and ".join(row["engine"])
    return f"{'work':<11} {row['entries']:.3g} entries on the {engines} engine, {format_duration(row['seconds'])}"


def _describe_duplicates(found: dict[str, Any], indent: str = "") -> str:
    if not found["duplicated"]:
        return f"{indent}{'duplicates':<11} none among the {found['features']} target features"
    floor = -math.log(found["cx_cap"])
    return (
        f"{indent}{'duplicates':<11} {found['duplicated']} of {found['features']} target features have an exact "
        f"duplicate: CX <= {found['cx_cap']:.6f} (CX loss >= {floor:.6f}) for any prediction"
    )


def _print_single(row: dict[str, Any], settings: dict[str, Any]) -> None:
    for label, key in (("prediction", "prediction"), ("target", "target")):
        print(_describe_size(label, row[key], row[f"{key}_size"], row[f"{key}_stored_size"], settings["max_side"]))
    print(_describe_positions(row, settings))
    print(*_describe_loss(settings), _describe_work(row), sep="\n")
    print(f"{'CX':<11} {row['cx']:.6f}   (1 = every target feature has its own exact match)")
    print(f"{'CX loss':<11} {row['cx_loss']:.6f}   (-log CX)")
    print(f"{'CoBi loss':<11} {row['cobi_loss']:.6f}")
    if "duplicates" in row:
        print(_describe_duplicates(row["duplicates"]))
    for name, values in row.get("layers", {}).items():
        print(f"  {name}: CX {values['cx']:.6f}, CX loss {values['cx_loss']:.6f}, CoBi loss {values['cobi_loss']:.6f}")
        print(_describe_duplicates(values["duplicates"], indent="    "))


def _print_table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    print(*_describe_loss(settings), sep="\n")
    if not settings["max_points"]:
        sampled = "all"
    elif settings["sample"] == "target":
        sampled = f"all of the prediction, at most {settings['max_points']} of the target, drawn at random"
    else:
        sampled = f"at most {settings['max_points']} per image, drawn at random"
    print(f"{'positions':<11} {sampled}; images {_resizing(settings)}")
    width = max(len("prediction"), *(len(Path(row["prediction"]).name) for row in rows))
    print(f"{'prediction':<{width}}  {'CX':>9}  {'CX loss':>9}  {'CoBi loss':>9}  {'CX cap':>8}")
    for row in rows:
        cap = row["duplicates"]["cx_cap"] if "duplicates" in row else float("nan")
        name = Path(row["prediction"]).name
        print(f"{name:<{width}}  {row['cx']:9.6f}  {row['cx_loss']:9.6f}  {row['cobi_loss']:9.6f}  {cap:8.6f}")
    mean = _mean(rows)
    print(f"{'mean':<{width}}  {mean['cx']:9.6f}  {mean['cx_loss']:9.6f}  {mean['cobi_loss']:9.6f}")


def _resizing(settings: dict[str, Any]) -> str:
    if settings["max_side"]:
        return f"shrunk to a longer side of at most {settings['max_side']} px (--max-side)"
    return "at their stored size"


def _progress_line(args: argparse.Namespace, total: float) -> ProgressLine:
    return ProgressLine(total, enabled=not args.no_progress and sys.stderr.isatty())


def run(args: argparse.Namespace) -> int:
    """Compare the images and report; returns the exit status."""
    fmt = _output_format(args)
    pairs = _pairs(args)
    device = resolve_device(args.device)
    spec = build_features(args)
    spec.extractor.to(device)
    chosen = resolve_loss_defaults(args, spec)
    settings = _settings(args, spec, device, chosen)
    folders = Path(args.prediction).is_dir()
    state = _Run(args, spec, device, chosen)
    progress = _progress_line(args, len(pairs))
    try:
        rows = [_compare_pair(state, pred, target, progress, len(pairs)) for pred, target in pairs]
    finally:
        progress.close()
    if fmt is not None:
        _write(Path(args.out), rows, settings, fmt)
    if args.json:
        document: dict[str, Any] = {"settings": settings}
        document.update({"results": rows, "mean": _mean(rows)} if folders else rows[0])
        print(json.dumps(document, indent=2))
    elif folders:
        _print_table(rows, settings)
    else:
        _print_single(rows[0], settings)
    if fmt is not None:
        note(f"wrote {len(rows)} result(s) to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        "compare",
        help=COMMANDS["compare"],
        description="Print the contextual similarity CX, the contextual loss -log CX and the contextual "
        "bilateral loss (CoBi) between a prediction and a target image, and exactly what was compared. With "
        "two folders, images are paired by name (a.png with a.jpg) and the results can be written to a CSV or "
        "JSON file.",
    )
    parser.add_argument("prediction", metavar="PRED", help="prediction image, or a folder of images")
    parser.add_argument("target", metavar="TARGET", help="target image, or a folder of images")
    add_feature_options(parser)
    add_loss_options(parser)
    add_size_options(parser)
    out = add_output_options(
        parser, metavar="FILE", help="also write the results to FILE (.csv or .json)", old="--output"
    )
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=run)
