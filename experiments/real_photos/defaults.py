"""Which defaults suit pixel and patch features on real photographs, as ``compare`` uses them.

    python experiments/real_photos/defaults.py            # writes experiments/real_photos/DEFAULTS.md
    python experiments/real_photos/defaults.py --quick    # seconds: small crops, prints only

Three measurements on scikit-image's sample photos at their stored resolution (no resizing):

1. **Identical pairs and shifts.** For a crop of each photo, the CX loss between the crop and
   copies of the same photo taken 0, 1, 2, 4 and 8 px to the right, for each candidate distance
   (cosine, l1, l2) on single pixels and on 5 x 5 patches. A good default gives loss 0 for the
   identical pair (where the target's features are all distinct) and a loss that strictly
   increases with the shift.
2. **Exact duplicates.** Target features that occur more than once (flat or saturated regions,
   8-bit pixel values) share their CX: for identical sets CX(X, X) <= mean over target features
   of 1 / (size of its group of identical features), with equality when all other features are
   far (relative to eps) from each group. Counted per crop, and checked on a constructed example.
3. **Large photos.** Whole photos compared with their shifted copies after shrinking to a longer
   side of 128 px (``compare --max-side 128``, today's default) or at full resolution with
   ``max_points`` sampled positions: which keeps the order of the shifts, and at what cost.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contextual_loss.features.patches import extract_patches
from contextual_loss.functional import contextual_loss
from contextual_loss.io import resize_max_side
from experiments.real_photos.data import load_photo

__all__ = ["LARGE", "SETTINGS", "SHIFTS", "Cache", "duplicate_cap", "features", "main", "shifted_pair"]

HERE = Path(__file__).resolve().parent
CACHE = HERE / "runs" / "defaults.json"
SHIFTS = (0, 1, 2, 4, 8)
PHOTOS = ("astronaut", "coffee", "chelsea")
#: (features, distance) candidates, band width 0.5 throughout.
SETTINGS = (
    ("patches", "cosine"),
    ("patches", "l1"),
    ("patches", "l2"),
    ("pixels", "cosine"),
    ("pixels", "l1"),
    ("pixels", "l2"),
)


def features(image: Tensor, kind: str) -> Tensor:
    """The feature map compared: the (B, 3, H, W) image itself (``pixels``) or its 5 x 5 patches."""
    return image if kind == "pixels" else extract_patches(image, 5, "reflect")


def shifted_pair(stored: Tensor, top: int, left: int, size: tuple[int, int], shift: int) -> tuple[Tensor, Tensor]:
    """(prediction, target), (1, 3, rows, cols) each: the photo window and the window ``shift`` px to its right."""
    rows, cols = size
    target = stored[None, :, top : top + rows, left : left + cols]
    return stored[None, :, top : top + rows, left + shift : left + shift + cols], target


def duplicate_cap(feature_map: Tensor) -> tuple[int, int, float]:
    """(features, features with an exact duplicate, mean over features of 1 / (size of their group)).

    ``feature_map`` is (1, C, H, W); groups are sets of bitwise-equal feature vectors.
    """
    vectors = feature_map[0].flatten(1).T
    _, inverse, counts = torch.unique(vectors, dim=0, return_inverse=True, return_counts=True)
    size = counts[inverse].double()
    return vectors.shape[0], int((size > 1).sum()), float((1.0 / size).mean())


def _loss(
    pred: Tensor,
    target: Tensor,
    kind: str,
    distance: str,
    max_points: int | None = None,
    target_points: int | None = None,
) -> float:
    """CX loss; ``max_points`` samples positions of both images, ``target_points`` only the target's."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        fx, fy = features(pred, kind), features(target, kind)
        if target_points is not None:  # CX ignores positions: any subset of the target is a (1, C, 1, M) map
            flat = fy.flatten(2)
            index = torch.randperm(flat.shape[-1], generator=gen)[:target_points]
            fy = flat[..., index].unsqueeze(2)
        sampler = gen if max_points else None
        return float(contextual_loss(fx, fy, 0.5, distance, max_points=max_points, generator=sampler))


class Cache:
    """Measured losses by key, kept in a JSON file so that an interrupted run resumes (``None``: in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.values: dict = json.loads(path.read_text()) if path is not None and path.exists() else {}

    def get(self, key: str, compute) -> dict:
        """The stored value of ``key``, or ``compute()`` stored now."""
        if key not in self.values:
            self.values[key] = compute()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.values, indent=1))
                tmp.replace(self.path)
        return self.values[key]


def _timed_losses(pairs, measure) -> dict:
    start = time.perf_counter()
    losses = [measure(*pair) for pair in pairs]
    return {"losses": losses, "seconds": (time.perf_counter() - start) / len(losses)}


def _increasing(values: Sequence[float]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def _fmt(value: float) -> str:
    return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.1e}"


# ----------------------------------------------------------------------------- measurements


def shift_table(size: int, cache: Cache, photos: Sequence[str] = PHOTOS, settings=SETTINGS) -> str:
    """Measurement 1 (and the caps of measurement 2) on ``size`` x ``size`` crops at stored resolution."""
    rows = []
    for photo in photos:
        stored, _ = load_photo(photo)
        top = (stored.shape[-2] - size) // 2
        left = (stored.shape[-1] - size - max(SHIFTS)) // 2
        pairs = [shifted_pair(stored, top, left, (size, size), s) for s in SHIFTS]
        for kind, distance in settings:
            key = f"shift {photo} {size} {kind} {distance}"
            done = cache.get(key, lambda: _timed_losses(pairs, lambda x, y: _loss(x, y, kind, distance)))  # noqa: B023
            count, duplicated, cap = duplicate_cap(features(pairs[0][1], kind))
            rows.append((photo, kind, distance, done, count, duplicated, cap))
            print(f"{key}: {[round(v, 4) for v in done['losses']]} ({done['seconds']:.1f} s per pair)", flush=True)
    head = (
        "| photo | features | distance | CX(X, X) | cap from duplicates | features with a duplicate | "
        + " | ".join(f"loss {s} px" for s in SHIFTS)
        + " | strictly increasing | seconds per pair |"
    )
    lines = [head, "|" + "---|" * (8 + len(SHIFTS))]
    for photo, kind, distance, done, count, duplicated, cap in rows:
        losses = done["losses"]
        lines.append(
            f"| {photo} | {kind} | {distance} | {math.exp(-losses[0]):.4f} | {cap:.4f} | {duplicated} / {count} | "
            + " | ".join(_fmt(v) for v in losses)
            + f" | {'yes' if _increasing(losses) else '**no**'} | {done['seconds']:.1f} |"
        )
    return "\n".join(lines)


def cap_example() -> tuple[str, float, float]:
    """Measurement 2's formula on a constructed image: a flat block, a two-tone block and noise."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 12, 12, generator=gen)
    image[..., :4, :6] = 0.5  # 24 identical pixels
    image[..., 8:, 8:] = torch.tensor([0.2, 0.9, 0.1]).view(1, 3, 1, 1)  # 16 identical pixels
    image[..., 8:, 10:] = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1)  # 8 of them white
    count, duplicated, cap = duplicate_cap(image)
    rows = []
    for distance in ("l1", "l2", "cosine"):
        cx = float(torch.exp(-contextual_loss(image.double(), image.double(), 0.5, distance)))
        rows.append(f"| {distance} | {cx:.6f} | {cap:.6f} | {abs(cx - cap):.1e} |")
    text = (
        f"A 12 x 12 random image (float64) with a flat block of 24 pixels and two more of 8 each "
        f"({duplicated} of {count} pixels in groups of identical pixels; the other 104 are distinct): the "
        f"cap is (104 + 24 / 24 + 8 / 8 + 8 / 8) / 144 = {107 / 144:.6f}; measured from the groups: {cap:.6f}.\n\n"
        "| distance | CX(X, X) | cap | difference |\n|---|---|---|---|\n" + "\n".join(rows)
    )
    return text, cap, 107 / 144


#: Measurement 3's (features, distance, policy, value): shrink to a longer side of ``value`` px, or
#: sample ``value`` positions of both images, or only of the target.
LARGE = (
    ("patches", "cosine", "max-side", 128),
    ("patches", "l1", "max-side", 128),
    ("patches", "l2", "max-side", 128),
    ("patches", "l1", "max-points", 4096),
    ("patches", "l2", "max-points", 4096),
    ("patches", "l2", "max-points", 16384),
    ("patches", "l2", "target-points", 4096),
)
POLICY_NAMES = {"max-side": "--max-side", "max-points": "max_points", "target-points": "target positions"}


def large_photo_table(cache: Cache, photos: Sequence[str] = PHOTOS, plan=LARGE, trim: int = 0) -> str:
    """Measurement 3: whole photos (less ``max(SHIFTS)`` columns) against shifted copies, per size policy."""
    lines = [
        "| photo (stored size) | features, distance | policy | compared size | "
        + " | ".join(f"loss {s} px" for s in SHIFTS)
        + " | strictly increasing | seconds per pair |",
        "|" + "---|" * (6 + len(SHIFTS)),
    ]
    for photo in photos:
        stored, _ = load_photo(photo)
        if trim:
            stored = stored[:, :trim, : trim + max(SHIFTS)]
        rows, cols = stored.shape[-2], stored.shape[-1] - max(SHIFTS)
        pairs = [shifted_pair(stored, 0, 0, (rows, cols), s) for s in SHIFTS]
        for kind, distance, policy, value in plan:
            if policy == "max-side":
                pairs_used = [(resize_max_side(x, value), resize_max_side(y, value)) for x, y in pairs]
                options = {}
            else:
                pairs_used = pairs
                options = {"max_points" if policy == "max-points" else "target_points": value}
            key = f"large {photo} {rows}x{cols} {kind} {distance} {policy} {value}"
            done = cache.get(
                key,
                lambda: _timed_losses(pairs_used, lambda x, y: _loss(x, y, kind, distance, **options)),  # noqa: B023
            )
            size = "x".join(map(str, pairs_used[0][0].shape[-2:]))
            lines.append(
                f"| {photo} ({stored.shape[-1]} x {stored.shape[-2]}) | {kind}, {distance} | "
                f"{POLICY_NAMES[policy]} {value} | {size} | "
                + " | ".join(_fmt(v) for v in done["losses"])
                + f" | {'yes' if _increasing(done['losses']) else '**no**'} | {done['seconds']:.1f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three measurements; write DEFAULTS.md (full run) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 px crops and small photos: seconds")
    parser.add_argument("--size", type=int, default=128, help="crop side of measurement 1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=HERE / "DEFAULTS.md")
    parser.add_argument("--fresh", action="store_true", help="forget the measurements cached in runs/defaults.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    size = 32 if args.quick else args.size
    if args.fresh and CACHE.exists():
        CACHE.unlink()
    cache = Cache(None if args.quick else CACHE)
    shifts = shift_table(size, cache)
    example, cap, expected = cap_example()
    if args.quick:
        plan = (("patches", "l1", "max-side", 32), ("patches", "l1", "max-points", 256))
        large = large_photo_table(cache, ("chelsea",), (*plan, ("patches", "l1", "target-points", 256)), trim=64)
    else:
        large = large_photo_table(cache)
    seconds = time.perf_counter() - start
    measured = sum(v["seconds"] * len(v["losses"]) for v in cache.values.values()) / 60
    note = (
        f"_{measured:.1f} min of measurements ({seconds / 60:.1f} min in this invocation) on "
        f"{torch.get_num_threads()} CPU thread(s) of a 2-core machine shared with other jobs (times are as "
        f"measured there); torch {torch.__version__}, Python {platform.python_version()}_"
    )
    text = f"""# Defaults for pixel and patch features on real photographs: measurements

Generated by `python experiments/real_photos/defaults.py` (this file is overwritten on each run).
Photos: scikit-image's sample photos at their stored resolution; band width 0.5 throughout;
CX loss = -log CX from `contextual_loss.functional.contextual_loss`.

## 1. Identical pairs and shifts ({size} x {size} crops)

Each crop is compared with the window of the same photo 0, 1, 2, 4 and 8 px to its right. "Cap
from duplicates" is mean over the target's features of 1 / (size of its group of bitwise-equal
features): no distance can give CX(X, X) above it.

{shifts}

## 2. The cap from exact duplicates

{example}

## 3. Large photos: shrinking (`--max-side`) against sampling positions (`max_points`)

The whole photo (less 8 columns) against the same photo 0-8 px to the right. `--max-side 128`
shrinks both images as `compare` does today (antialiased bilinear), so integer shifts become
fractional ones; `max_points` keeps the stored pixels and compares that many positions drawn
at random (the same positions in both images, seed 0); "target positions" keeps every position
of the prediction and samples only the target's (CX ignores positions, so a subset of the
target's features is a valid target set; not available to CoBi).

{large}

{note}
"""
    print(text)
    if not args.quick:
        args.output.write_text(text)
    return 0 if abs(cap - expected) < 1e-12 else 1


if __name__ == "__main__":
    raise SystemExit(main())
