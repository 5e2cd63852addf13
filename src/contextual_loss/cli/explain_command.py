"""``contextual-loss explain PRED TARGET --out FILE.png``: a picture of what the loss matched.

For each target position the figure shows where its best-matching prediction feature lies (a
displacement map coloured by direction, with arrows), the per-target best similarity
max_i CX_ij, and for small images the d~_ij and CX_ij matrices. Needs matplotlib (the ``viz``
extra). The same data comes from :func:`contextual_loss.explain.explain_match`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from contextual_loss.cli.options import (
    CommandError,
    add_feature_options,
    add_loss_options,
    build_features,
    load_pair,
    resolve_device,
)
from contextual_loss.explain import MatchExplanation, explain_match

__all__ = ["register", "run"]

#: Default longest side for ``explain``: the figure shows one arrow per few cells, and the dense
#: match of a 64 x 64 map takes about a second.
EXPLAIN_MAX_SIDE = 64


def _summary(explanation: MatchExplanation, args: argparse.Namespace, layer: str) -> dict[str, object]:
    magnitude = explanation.displacement.norm(dim=-1)
    return {
        "prediction": args.prediction,
        "target": args.target,
        "layer": layer,
        "loss": "CoBi" if args.cobi else "CX",
        "similarity": explanation.cx,
        "loss_value": max(-math.log(explanation.cx), 0.0),
        "one_to_one_fraction": explanation.unique_fraction,
        "median_displacement": float(magnitude.median()),
        "map_size": list(explanation.target_shape),
        "figure": str(args.out),
    }


def run(args: argparse.Namespace) -> int:
    """Compute the matches, draw the figure and print a summary."""
    from contextual_loss.viz import plot_explanation, require_matplotlib, save_figure

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise CommandError(f"--out must end in .png, .pdf, .svg or .jpg, got {out}")
    require_matplotlib()  # fail before the computation when the extra is missing
    device = resolve_device(args.device)
    spec = build_features(args)
    spec.extractor.to(device)
    layer = args.layer or next(iter(spec.layer_weights))
    if layer not in spec.layer_weights:
        raise CommandError(f"--layer {layer!r} is not among the features' layers {list(spec.layer_weights)}")
    x, y = load_pair(args.prediction, args.target, args.max_side, device)
    with torch.inference_mode():
        fx, fy = spec.extractor(x)[layer], spec.extractor(y)[layer]
        try:
            explanation = explain_match(
                fx,
                fy,
                args.band_width,
                args.loss_type,
                weight_sp=args.weight_sp if args.cobi else None,
                form=args.cobi_form,
            )
        except (ValueError, TypeError) as error:
            raise CommandError(f"{args.prediction} vs {args.target}: {error}") from error
    name = "CoBi" if args.cobi else "CX"
    figure = plot_explanation(
        explanation,
        x.cpu(),
        y.cpu(),
        title=f"{name} = {explanation.cx:.4f} on {spec.description}; "
        f"one-to-one matches {100 * explanation.unique_fraction:.0f}%",
    )
    save_figure(figure, out)
    summary = _summary(explanation, args, layer)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{name} = {summary['similarity']:.6f} (loss {summary['loss_value']:.6f}) on {spec.description}")
        print(f"one-to-one matches: {100 * explanation.unique_fraction:.1f}% of {explanation.index.numel()} targets")
        print(f"median displacement to the match: {summary['median_displacement']:.2f} cells")
        print(f"figure written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` sub-command."""
    parser = subparsers.add_parser(
        "explain",
        help="draw what the loss matched between two images",
        description="Draw, for each target position, where its best-matching prediction feature lies, how "
        "similar the match is, and (for tiny images) the relative distance and CX matrices. Needs matplotlib: "
        'pip install "contextual-loss[viz]".',
    )
    parser.add_argument("prediction", metavar="PRED", help="prediction image")
    parser.add_argument("target", metavar="TARGET", help="target image")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure")
    add_feature_options(parser)
    add_loss_options(parser, max_side=EXPLAIN_MAX_SIDE, sampling=False)
    parser.add_argument("--cobi", action="store_true", help="explain CoBi's matches instead of CX's")
    parser.add_argument("--layer", help="which feature layer to explain (default: the first)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
