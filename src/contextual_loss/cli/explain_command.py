"""``contextual-loss explain PRED TARGET --out FILE.png``: a picture of what the loss matched.

For each target position the figure shows where its best-matching prediction feature lies (a
displacement map coloured by direction, with arrows), the per-target best similarity
max_i CX_ij, and for small images the d~_ij and CX_ij matrices. Needs matplotlib (the ``viz``
extra). The same data comes from :func:`contextual_loss.explain.explain_match`.

``explain`` compares exactly what ``compare`` compares with the same options (sizes, sampled
positions, features, distance, band width): its CX is ``compare``'s CX of that layer (its CoBi
with ``--cobi``). With sampled positions (``--max-points``) only the sampled target positions
are drawn.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from contextual_loss.cli import COMMANDS
from contextual_loss.cli.options import (
    CommandError,
    FeatureSpec,
    add_feature_options,
    add_loss_options,
    add_output_options,
    add_size_options,
    build_features,
    check_output_file,
    load_pair,
    resolve_device,
    resolve_loss_defaults,
)
from contextual_loss.cli.work import ProgressLine
from contextual_loss.engine import reporting
from contextual_loss.explain import MatchExplanation, explain_match
from contextual_loss.sampling import sample_positions

__all__ = ["register", "run"]

#: Figure formats ``--out`` may end in.
FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _summary(explanation: MatchExplanation, args: argparse.Namespace, layer: str, sizes: dict) -> dict[str, Any]:
    magnitude = explanation.displacement.norm(dim=-1)
    duplicates = explanation.duplicates
    return {
        "prediction": args.prediction,
        "target": args.target,
        "layer": layer,
        "loss": "CoBi" if args.cobi else "CX",
        "similarity": explanation.cx,
        "loss_value": max(-math.log(explanation.cx), 0.0),
        "one_to_one_fraction": explanation.unique_fraction,
        "median_displacement": float(magnitude[~magnitude.isnan()].median()),
        "map_size": list(explanation.target_shape),
        "positions": explanation.compared,
        **sizes,
        "settings": {
            "band_width": args.band_width,
            "loss_type": args.loss_type,
            "weight_sp": args.weight_sp if args.cobi else None,
            "cobi_form": args.cobi_form,
            "max_side": args.max_side,
            "max_points": args.max_points,
            "sample": args.sample,
            "seed": args.seed,
        },
        "duplicates": None
        if duplicates is None
        else {"features": duplicates.features, "duplicated": duplicates.duplicated, "cx_cap": duplicates.cap},
        "figure": str(args.out),
    }


def _generator(args: argparse.Namespace, spec: FeatureSpec, layer: str, fx: dict, fy: dict) -> torch.Generator:
    """``--seed``'s generator, advanced past the draws of the layers before ``layer`` (as ``compare`` draws)."""
    generator = torch.Generator().manual_seed(args.seed)
    for name in spec.layer_weights:
        if name == layer:
            break
        (h, w), (h2, w2) = fx[name].shape[-2:], fy[name].shape[-2:]
        shared = (h, w) == (h2, w2)
        sample_positions(
            h * w, h2 * w2, args.max_points or None, shared=shared, generator=generator, sample=args.sample
        )
    return generator


def _explain(args: argparse.Namespace, spec: FeatureSpec, layer: str, x: torch.Tensor, y: torch.Tensor):
    with torch.inference_mode():
        fx, fy = spec.extractor(x), spec.extractor(y)
        progress = ProgressLine(1.0, enabled=not args.no_progress and _stderr_is_terminal())
        try:
            with progress.evaluation("explain", 1.0) as callback, reporting(callback):
                return explain_match(
                    fx[layer],
                    fy[layer],
                    args.band_width,
                    args.loss_type,
                    weight_sp=args.weight_sp if args.cobi else None,
                    form=args.cobi_form,
                    max_points=args.max_points or None,
                    sample=args.sample,
                    generator=_generator(args, spec, layer, fx, fy),
                )
        except (ValueError, TypeError) as error:
            raise CommandError(f"{args.prediction} vs {args.target}: {error}") from error
        finally:
            progress.close()


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _size_text(size: Any) -> str:
    return "x".join(str(int(v)) for v in size)


def run(args: argparse.Namespace) -> int:
    """Compute the matches, draw the figure and print a summary."""
    from contextual_loss.viz import plot_explanation, require_matplotlib, save_figure

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise CommandError(f"--out must end in {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, got {out}")
    check_output_file("--out", out, force=args.force)
    require_matplotlib()  # fail before the computation when the extra is missing
    device = resolve_device(args.device)
    spec = build_features(args)
    spec.extractor.to(device)
    resolve_loss_defaults(args, spec)
    layer = args.layer or next(iter(spec.layer_weights))
    if layer not in spec.layer_weights:
        raise CommandError(f"--layer {layer!r} is not among the features' layers {list(spec.layer_weights)}")
    pair = load_pair(args.prediction, args.target, args.max_side, device)
    explanation = _explain(args, spec, layer, pair.prediction, pair.target)
    name = "CoBi" if args.cobi else "CX"
    figure = plot_explanation(
        explanation,
        pair.prediction.cpu(),
        pair.target.cpu(),
        title=f"{name} = {explanation.cx:.4f} on {spec.description}, {args.loss_type} distance; "
        f"one-to-one matches {100 * explanation.unique_fraction:.0f}%",
    )
    save_figure(figure, out)
    sizes = {
        "prediction_size": _size_text(pair.prediction.shape[-2:]),
        "target_size": _size_text(pair.target.shape[-2:]),
        "prediction_stored_size": _size_text(pair.stored[0]),
        "target_stored_size": _size_text(pair.stored[1]),
    }
    summary = _summary(explanation, args, layer, sizes)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, explanation, spec, args)
    return 0


def _print(summary: dict[str, Any], explanation: MatchExplanation, spec: FeatureSpec, args: argparse.Namespace) -> None:
    sizes = f"prediction {summary['prediction_stored_size']}, target {summary['target_stored_size']}"
    compared = summary["prediction_size"], summary["target_size"]
    if compared != (summary["prediction_stored_size"], summary["target_stored_size"]):
        sizes += f"; shrunk to {compared[0]} and {compared[1]} (--max-side {args.max_side})"
    else:
        sizes += ", compared at their stored size"
    total = explanation.target_shape[0] * explanation.target_shape[1]
    sampled = ""
    if explanation.sampled is not None:
        sampled = f", drawn at random (--max-points {args.max_points}, --sample {args.sample})"
    lines = [
        f"{summary['loss']} = {summary['similarity']:.6f} (loss {summary['loss_value']:.6f}) on {spec.description}, "
        f"{args.loss_type} distance, band width {args.band_width:g}",
        f"images: {sizes}",
        f"target positions compared: {explanation.compared} of {total}{sampled}",
        f"one-to-one matches: {100 * explanation.unique_fraction:.1f}% of them",
        f"median displacement to the match: {summary['median_displacement']:.2f} cells",
    ]
    duplicates = explanation.duplicates
    if duplicates is not None and duplicates.duplicated:
        lines.append(
            f"duplicates: {duplicates.duplicated} of {duplicates.features} target features have an exact duplicate: "
            f"CX <= {duplicates.cap:.6f} for any prediction"
        )
    lines.append(f"figure written to {args.out}")
    print(*lines, sep="\n")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` sub-command."""
    parser = subparsers.add_parser(
        "explain",
        help=COMMANDS["explain"],
        description="Draw, for each target position, where its best-matching prediction feature lies, how "
        "similar the match is, and (for tiny images) the relative distance and CX matrices. It compares what "
        "`contextual-loss compare` compares with the same options. Needs matplotlib: "
        'pip install "contextual-loss[viz]".',
    )
    parser.add_argument("prediction", metavar="PRED", help="prediction image")
    parser.add_argument("target", metavar="TARGET", help="target image")
    add_feature_options(parser)
    add_loss_options(parser)
    add_size_options(parser)
    parser.add_argument("--cobi", action="store_true", help="explain CoBi's matches instead of CX's")
    parser.add_argument("--layer", help="which feature layer to explain (default: the first)")
    out = add_output_options(parser, metavar="FILE.png", help="where to write the figure", required=True)
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
