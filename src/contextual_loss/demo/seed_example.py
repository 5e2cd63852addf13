"""The seed example of the definition: three RGB pixels against three others.

CX of the prediction's pixels ``SEED_X`` against the target's ``SEED_Y`` is 0.9878605414928291 at
band width 0.1 (cosine distance, eps 1e-5, float64), whatever the order of the target's pixels:
CX compares sets (Mechrez et al., ECCV 2018 define CX; the example is the project's own). The demo prints it for
all six orderings.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from contextual_loss.functional import contextual_similarity

__all__ = ["SEED_BAND_WIDTH", "SEED_CX", "SEED_X", "SEED_Y", "seed_images", "seed_permutations"]

#: The prediction's three pixels of the seed example (8-bit RGB).
SEED_X: tuple[tuple[int, int, int], ...] = ((231, 76, 60), (46, 204, 113), (52, 152, 219))
#: The target's three pixels of the seed example (8-bit RGB).
SEED_Y: tuple[tuple[int, int, int], ...] = ((245, 183, 177), (171, 235, 198), (174, 214, 241))
#: CX of the seed example at band width 0.1, eps 1e-5, cosine distance (the definition's value).
SEED_CX = 0.9878605414928291
#: Band width of the seed example.
SEED_BAND_WIDTH = 0.1


def seed_images(
    target_order: tuple[int, ...] = (0, 1, 2), *, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """The seed example as two (1, 3, 1, 3) images, the target's pixels in ``target_order``."""
    if sorted(target_order) != [0, 1, 2]:
        raise ValueError(f"target_order must be a permutation of (0, 1, 2), got {target_order!r}")

    def image(pixels: tuple[tuple[int, int, int], ...]) -> Tensor:
        return (torch.tensor(pixels, dtype=dtype) / 255).T.reshape(1, 3, 1, len(pixels))

    return image(SEED_X), image(tuple(SEED_Y[i] for i in target_order))


def seed_permutations() -> list[tuple[tuple[int, ...], float]]:
    """CX of the seed example for each of the 6 orderings of the target's three pixels.

    CX ignores positions, so every ordering gives the definition's value 0.9878605414928291
    (band width 0.1, float64).
    """
    rows = []
    for order in itertools.permutations(range(3)):
        x, y = seed_images(order)
        rows.append((order, float(contextual_similarity(x, y, band_width=SEED_BAND_WIDTH))))
    return rows
