"""The seed example: its images and its value for every ordering of the target."""

from __future__ import annotations

import pytest
import torch

from contextual_loss.demo.seed_example import SEED_CX, SEED_X, seed_images, seed_permutations


def test_seed_images() -> None:
    x, y = seed_images((2, 0, 1))
    assert x.shape == y.shape == (1, 3, 1, 3) and x.dtype == torch.float64
    assert x[0, :, 0, 0].tolist() == [v / 255 for v in SEED_X[0]]
    assert torch.equal(y, seed_images()[1][..., [2, 0, 1]])
    with pytest.raises(ValueError, match="permutation"):
        seed_images((0, 0, 1))


def test_seed_permutations_reproduce_the_definition() -> None:
    rows = seed_permutations()
    assert sorted(order for order, _ in rows) == sorted(
        [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    )
    for _, value in rows:
        assert value == pytest.approx(SEED_CX, abs=1e-12)  # the definition's value
