"""Experiment 4: one-to-one matching, CX vs CoBi (Zhang et al., CVPR 2019).

Zhang et al. motivate CoBi by counting how many features CX matches one-to-one: 43.7 % with CX,
93.9 % with CoBi. Here: a periodic pattern (a random 8 x 8 colour tile repeated) with sensor-like
noise (std 0.02, independent in prediction and target), the prediction shifted by 0, 1 and 2 px;
5 x 5 RGB patch features, cosine distance, band width 0.5. For each target feature we take its
match argmax_i CX_ij and report the fraction of targets whose match is matched by no other target
(one-to-one), and the fraction matched to their true source (the same content at the known
shift). Compared: CX, CoBi in the paper's form with w_s in {0.1, 0.5}, and the released code's form
(w = 0.1). Expectation from the issue: CX near 0.55, CoBi above 0.85.

    python experiments/unique_matching.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import _common
import torch

from contextual_loss import maths
from contextual_loss.demo.images import periodic_pattern, texture
from contextual_loss.demo.statistics import distinct_match_fraction, unique_match_fraction
from contextual_loss.features import extract_patches
from contextual_loss.functional import contextual_match

PERIOD, NOISE, PATCH, BAND_WIDTH = 8, 0.02, 5, 0.5
SHIFTS = (0, 1, 2)
METHODS: dict[str, dict] = {
    "CX": {},
    "CoBi paper w_s=0.1": {"weight_sp": 0.1},
    "CoBi paper w_s=0.5": {"weight_sp": 0.5},
    "CoBi released w=0.1": {"weight_sp": 0.1, "form": "released"},
}
COBI_LIMIT = 0.85


def _pair(size: int, shift: int, noise: float, periodic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target): the prediction shows the content ``shift`` px further right."""
    gen = torch.Generator().manual_seed(100 + shift)
    if periodic:
        target = periodic_pattern(size, size, period=PERIOD, seed=0)
        prediction = periodic_pattern(size, size, period=PERIOD, seed=0, offset=shift)
    else:
        canvas = texture(size, size + shift, seed=0)
        target, prediction = canvas[..., :size], canvas[..., shift : shift + size]
    prediction = prediction + noise * torch.randn(prediction.shape, generator=gen)
    target = target + noise * torch.randn(target.shape, generator=gen)
    return prediction, target


def _correct_fraction(index: torch.Tensor, size: int, shift: int) -> float:
    """Fraction of targets (with a true source inside the prediction) matched to that source."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    source_cols = cols - shift  # target column c shows the prediction's column c - shift
    valid = source_cols >= 0
    truth = rows * size + source_cols
    return float((index.view(size, size) == truth)[valid].double().mean())


def features(image: torch.Tensor) -> torch.Tensor:
    """Whole 5 x 5 patches only (no padding), so border patches are not altered copies."""
    return extract_patches(image, PATCH, padding="none")


def measure(size: int, shift: int, noise: float, kwargs: dict, periodic: bool = True) -> dict[str, float]:
    prediction, target = _pair(size, shift, noise, periodic)
    match = contextual_match(features(prediction), features(target), BAND_WIDTH, **kwargs)
    side = size - PATCH + 1
    unique = unique_match_fraction(match.prediction_index)[0]
    strip = torch.arange(side).expand(side, side) < shift  # targets whose true source left the image
    flags = _unique_flags(match.prediction_index[0]).view(side, side)
    return {
        "unique": float(unique),
        "distinct": float(distinct_match_fraction(match.prediction_index)[0]),
        "correct": _correct_fraction(match.prediction_index[0], side, shift),
        "shared_outside_strip": float((~flags & ~strip).double().mean()),
    }


def _unique_flags(index: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(index, minlength=int(index.max()) + 1)
    return counts[index] == 1


def copy_distance_gap(size: int, shift: int, noise: float) -> tuple[float, float]:
    """Median and 90th percentile of |d(target, true source) - d(target, next copy)|, cosine distance.

    The spatial term of CoBi must beat this noise-induced gap to pick the true source.
    """
    prediction, target = _pair(size, shift, noise)
    fx = features(prediction).flatten(2).transpose(1, 2)
    fy = features(target).flatten(2).transpose(1, 2)
    x, y = maths.prepare_features(fx, fy, "cosine")
    side = size - PATCH + 1
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    keep = (cols - shift >= 0) & (cols - shift + PERIOD < side)  # both sources inside the map
    j = (rows * side + cols)[keep]
    true_src = (rows * side + cols - shift)[keep]
    gap = (x[0, true_src] * y[0, j]).sum(-1) - (x[0, true_src + PERIOD] * y[0, j]).sum(-1)
    return float(gap.abs().median()), float(gap.abs().quantile(0.9))


def _figure(results: dict[str, dict[int, dict]], size: int) -> object:
    from contextual_loss.explain import explain_match
    from contextual_loss.viz import displacement_to_rgb, require_matplotlib

    figure = require_matplotlib()(figsize=(10.5, 3.4), layout="constrained")
    grid = figure.add_gridspec(1, 4, width_ratios=[2.2, 1, 1, 1])
    bars = figure.add_subplot(grid[0, 0])
    width = 0.8 / len(SHIFTS)
    names = list(results)
    for k, shift in enumerate(SHIFTS):
        values = [results[name][shift]["unique"] for name in names]
        bars.bar([n + (k - 1) * width for n in range(len(names))], values, width, label=f"shift {shift} px")
    bars.axhline(COBI_LIMIT, color="gray", ls=":")
    bars.axhline(math.exp(-1), color="tab:red", ls=":", lw=1)
    bars.text(len(names) - 0.5, math.exp(-1) + 0.02, "1/e", color="tab:red", fontsize=8, ha="right")
    bars.set_xticks(range(len(names)))
    bars.set_xticklabels([n.replace(" w", "\nw") for n in names], fontsize=8)
    bars.set_ylabel("one-to-one fraction of targets")
    bars.set_ylim(0, 1.05)
    bars.legend(fontsize=7, loc="upper left")
    bars.set_title(f"periodic pattern (period {PERIOD} px), noise {NOISE}", fontsize=10)
    prediction, target = _pair(size, 2, NOISE)
    fx, fy = features(prediction), features(target)
    for k, (name, kwargs) in enumerate(list(METHODS.items())[:3]):
        ax = figure.add_subplot(grid[0, k + 1])
        explanation = explain_match(fx, fy, BAND_WIDTH, matrices=False, **kwargs)
        ax.imshow(displacement_to_rgb(explanation.displacement, max_magnitude=PERIOD), interpolation="nearest")
        ax.set_title(f"{name}, shift 2 px\nmatch displacement", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse_args(__doc__.splitlines()[0], argv)
    timer = _common.Timer()
    size = 48 if args.quick else 64
    results = {name: {s: measure(size, s, NOISE, kw) for s in SHIFTS} for name, kw in METHODS.items()}
    header = ["features matched by", *(f"shift {s} px: one-to-one / correct" for s in SHIFTS)]
    rows = [
        [name, *(f"{100 * r[s]['unique']:.1f}% / {100 * r[s]['correct']:.1f}%" for s in SHIFTS)]
        for name, r in results.items()
    ]
    # Targets in the s columns that entered at the border have no source of their own: their match
    # (a copy one period away) is also another target's match, so at most 1 - 2 s / W are one-to-one.
    side = size - PATCH + 1  # the feature map: whole patches only
    rows.append(["best possible (border strip)", *(f"{100 * (1 - 2 * s / side):.1f}% / 100%" for s in SHIFTS)])
    table = _common.markdown_table(header, rows)
    print(table)
    copies = round((side / PERIOD) ** 2)  # copies of each patch in the map, on average
    random_unique = (1 - 1 / copies) ** (copies - 1)
    random_distinct = 1 - (1 - 1 / copies) ** copies
    cx = [results["CX"][s]["unique"] for s in SHIFTS]
    cx_distinct = [results["CX"][s]["distinct"] for s in SHIFTS]
    cobi = {name: [r[s]["unique"] for s in SHIFTS] for name, r in results.items() if name != "CX"}
    cobi_ok = all(v > COBI_LIMIT for values in cobi.values() for v in values)
    order_ok = max(cx) < min(v for values in cobi.values() for v in values)
    gaps = {noise: copy_distance_gap(size, 2, noise) for noise in (NOISE, 0.05)}
    at_ceiling = all(
        abs(results[name][s]["unique"] - (1 - 2 * s / side)) <= 0.005
        for name in METHODS
        if name.startswith("CoBi paper")
        for s in SHIFTS
    )
    extra = {}
    if not args.quick:
        extra["periodic, no noise (exact repeats), shift 1 px"] = {
            name: measure(size, 1, 0.0, kw)["unique"] for name, kw in METHODS.items()
        }
        extra["texture (not periodic), noise 0.02, shift 1 px"] = {
            name: measure(size, 1, NOISE, kw, periodic=False)["unique"] for name, kw in METHODS.items()
        }
        for noise in (0.01, 0.05):
            extra[f"periodic, noise {noise}, shift 2 px"] = {
                name: measure(size, 2, noise, kw)["unique"] for name, kw in METHODS.items()
            }
    figure = _common.save(_figure(results, size), args.out, "unique_matching")
    body = [
        "## 4. One-to-one matching, CX vs CoBi (Zhang et al., CVPR 2019)",
        "",
        f"A {size}x{size} periodic pattern (random {PERIOD}x{PERIOD} tile), Gaussian noise std {NOISE} added "
        f"independently to prediction and target, prediction shifted by {', '.join(map(str, SHIFTS))} px; "
        f"{PATCH}x{PATCH} RGB patches, cosine, band width {BAND_WIDTH}. One-to-one: the target's match "
        "argmax_i CX_ij is the match of no other target. Correct: the match is the true source.",
        "",
        table,
        "",
        f"**Headline:** one-to-one matches: CX {100 * min(cx):.1f}-{100 * max(cx):.1f}%, CoBi "
        + ", ".join(f"{name.removeprefix('CoBi ')} {100 * min(v):.1f}-{100 * max(v):.1f}%" for name, v in cobi.items())
        + f" (Zhang et al.: CX 43.7%, CoBi 93.9%; issue's expectation: CX near 55%, CoBi > {100 * COBI_LIMIT:.0f}%).",
        "",
        f"Why CX lands at {100 * min(cx):.1f}-{100 * max(cx):.1f}% and not 55%: each patch of the pattern has "
        f"about K = {copies} copies in the {side}x{side} feature map (one per period), equally good up to "
        "the noise, so the noise decides which copy a target picks, as if at random. For K targets choosing "
        "among K copies at random the "
        f"expected one-to-one fraction is (1 - 1/K)^(K-1) = {100 * random_unique:.1f}% (1/e for large K), and the "
        f"fraction of copies used at all is 1 - (1 - 1/K)^K = {100 * random_distinct:.1f}% (measured for CX: "
        f"{100 * min(cx_distinct):.1f}-{100 * max(cx_distinct):.1f}%). A value near 55% needs fewer repeats "
        "(K = 2 gives 50%) or counting used copies instead of targets. CoBi's spatial term breaks the tie in "
        "favour of the nearest copy, which is the true source while the shift is below half the period. The "
        "released form's high one-to-one fraction is not a sign of correct matches: it rewards the co-located "
        "feature, so at a shift it matches the wrong (unshifted) position, as its 'correct' column shows. "
        "The last row is the ceiling at a shift of s px: the s columns that entered at the border have no "
        "source of their own, so their matches duplicate another target's. CoBi (paper form, noise "
        f"{NOISE}) is within 0.5 points of that ceiling at every shift: {'yes' if at_ceiling else 'no'}. "
        "Whether w_s = 0.1 suffices depends on the feature distances it competes with. Here the copies differ "
        "only by noise: the gap between a target's cosine distances to its true source and to the next copy "
        "(median / 90th percentile) is "
        + "; ".join(f"{m:.4f} / {q:.4f} at noise {n}" for n, (m, q) in gaps.items())
        + f". At a 2 px shift the true source is closer than the next copy by {PERIOD - 4} cells, worth "
        f"w_s x {PERIOD - 4} / {side} = {0.1 * (PERIOD - 4) / side:.4f} for w_s = 0.1 and "
        f"{0.5 * (PERIOD - 4) / side:.4f} for w_s = 0.5. With more noise the gap approaches the smaller "
        "margin, and CoBi with w_s = 0.1 loses one-to-one matches (noise controls below); w_s must be read "
        "against the spread of the feature distances.",
    ]
    if extra:
        body += [
            "",
            "Controls (one-to-one fraction):",
            "",
            _common.markdown_table(
                ["pattern", *METHODS], [[label, *(f"{100 * v:.1f}%" for v in r.values())] for label, r in extra.items()]
            ),
            "",
            "Without noise the copies are exact ties and argmax takes the first index, so CX sends every copy of a "
            "patch to one source and almost nothing is one-to-one. On a texture without repeats every patch has "
            "a single best match and CX is nearly one-to-one already.",
        ]
    body += [
        "",
        f"![unique matching](figures/{figure.name})",
        "",
        "Right panels: where each target's match lies at a 2 px shift, coloured by direction as in "
        "`contextual-loss explain` (cyan: 2 px to the left, the true source; red: 6 px to the right, the next "
        "copy). CX picks copies all over the image; CoBi picks the true source except in the border strip.",
        "",
        _common.run_note(args, timer()),
        "",
    ]
    passed = cobi_ok and order_ok
    body.append(
        _common.verdict(
            passed,
            f"CoBi one-to-one > {COBI_LIMIT} for every form and shift (min {min(min(v) for v in cobi.values()):.3f}) "
            f"and CX below CoBi (CX max {max(cx):.3f}); CX is {min(cx):.3f}-{max(cx):.3f}, not the expected ~0.55 "
            f"(random choice among {copies} copies predicts {random_unique:.2f})",
        )
    )
    _common.update_results(args.out, "unique_matching", "\n".join(body))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
