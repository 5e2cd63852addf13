"""``contextual-loss demo``: the seed example of the definition and a misalignment comparison."""

from __future__ import annotations

import argparse
import itertools

import torch

from contextual_loss.functional import contextual_loss, contextual_similarity

__all__ = ["register", "run", "seed_example"]

#: The three-pixel example of the definition (DEFINITION.md), CX = 0.9878605414928291 at h = 0.1.
SEED_X = ((231, 76, 60), (46, 204, 113), (52, 152, 219))
SEED_Y = ((245, 183, 177), (171, 235, 198), (174, 214, 241))
SEED_CX = 0.9878605414928291


def _pixels_to_image(pixels: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """Three RGB pixels -> a (1, 3, 1, 3) float64 image in [0, 1]."""
    return (torch.tensor(pixels, dtype=torch.float64) / 255).T.reshape(1, 3, 1, len(pixels))


def seed_example() -> list[tuple[tuple[int, int, int], float]]:
    """CX of the seed example for each of the 6 orderings of the target's pixels."""
    x = _pixels_to_image(SEED_X)
    rows = []
    for order in itertools.permutations(range(3)):
        y = _pixels_to_image(tuple(SEED_Y[i] for i in order))
        rows.append((order, float(contextual_similarity(x, y, band_width=0.1))))
    return rows


def _shifted_texture(shift: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size + 16, size + 16, generator=gen)
    base = torch.nn.functional.avg_pool2d(base, 3, stride=1, padding=1)
    return base[..., 8 : 8 + size, 8 : 8 + size], base[..., 8 + shift : 8 + shift + size, 8 : 8 + size]


def run(args: argparse.Namespace) -> int:
    """Print the seed example and L1 vs CX for shifted copies of a texture."""
    print("Seed example (DEFINITION.md): CX for the 6 orderings of the target pixels, h = 0.1")
    for order, value in seed_example():
        print(f"  order {order}: CX = {value:.16f}  (expected {SEED_CX:.16f})")
    print("\nShifted copies of a random texture (5x5 patch features, cosine, h = 0.5):")
    print(f"  {'shift (px)':>10} {'L1':>8} {'CX loss':>8}")
    gen = torch.Generator().manual_seed(1)
    unrelated = torch.rand(1, 3, 48, 48, generator=gen)
    for shift in (0, 1, 2, 4, 8):
        x, y = _shifted_texture(shift)
        px = torch.nn.functional.unfold(x, 5, padding=2).view(1, 75, 48, 48)
        py = torch.nn.functional.unfold(y, 5, padding=2).view(1, 75, 48, 48)
        print(f"  {shift:>10} {float((x - y).abs().mean()):8.4f} {float(contextual_loss(px, py)):8.4f}")
    pu = torch.nn.functional.unfold(unrelated, 5, padding=2).view(1, 75, 48, 48)
    x, _ = _shifted_texture(0)
    px = torch.nn.functional.unfold(x, 5, padding=2).view(1, 75, 48, 48)
    print(f"  {'unrelated':>10} {float((x - unrelated).abs().mean()):8.4f} {float(contextual_loss(px, pu)):8.4f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser("demo", help="run the built-in demonstration (no downloads)")
    parser.set_defaults(func=run)
