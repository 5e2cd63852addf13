"""Position sampling (max_points): shared indices, reproducibility with a generator, independent draws."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import rand64

from contextual_loss.functional import contextual_bilateral_loss, contextual_loss
from contextual_loss.sampling import sample_indices, sample_positions, sample_sets


def _indexed_set(count: int, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (2, count, 3) set whose vectors encode their index, and (count, 2) positions that do too."""
    index = torch.arange(count, dtype=torch.float64)
    vectors = torch.stack([index + offset, index * 2, -index], dim=-1).expand(2, count, 3)
    positions = torch.stack([index, index + 0.5], dim=-1)
    return vectors, positions


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_no_cap_means_no_sampling() -> None:
    assert sample_indices(100, None) is None
    assert sample_indices(100, 100) is None
    assert sample_indices(100, 500) is None


def test_indices_are_distinct_and_in_range() -> None:
    idx = sample_indices(1000, 50, generator=_gen(0))
    assert idx.shape == (50,) and idx.dtype == torch.int64
    assert len(set(idx.tolist())) == 50 and int(idx.min()) >= 0 and int(idx.max()) < 1000


def test_same_seed_same_indices_other_seed_other_indices() -> None:
    first = sample_indices(1000, 20, generator=_gen(3))
    assert torch.equal(first, sample_indices(1000, 20, generator=_gen(3)))
    assert not torch.equal(first, sample_indices(1000, 20, generator=_gen(4)))


def test_shared_sampling_keeps_pairs_and_positions_together() -> None:
    x, pos_x = _indexed_set(64)
    y, pos_y = _indexed_set(64, offset=0.25)
    sx, sy, spx, spy = sample_sets(x, y, pos_x, pos_y, max_points=10, shared=True, generator=_gen(0))
    assert sx.shape == sy.shape == (2, 10, 3) and spx.shape == spy.shape == (10, 2)
    torch.testing.assert_close(sy[..., 0], sx[..., 0] + 0.25)  # the same positions drawn for both sets
    torch.testing.assert_close(spx[:, 0], sx[0, :, 0])  # positions follow their vectors
    torch.testing.assert_close(spy[:, 0], sy[0, :, 1] / 2)
    torch.testing.assert_close(sx[0], sx[1])  # one draw serves the whole batch


def test_independent_sampling_when_sizes_differ() -> None:
    x, pos_x = _indexed_set(64)
    y, pos_y = _indexed_set(40)
    draws = [sample_sets(x, y, pos_x, pos_y, max_points=10, shared=False, generator=_gen(5)) for _ in range(2)]
    sx, sy, _, spy = draws[0]
    assert sx.shape == (2, 10, 3) and sy.shape == (2, 10, 3)
    assert int(sy[0, :, 0].max()) < 40 and len(set(sy[0, :, 0].tolist())) == 10
    torch.testing.assert_close(spy[:, 0], sy[0, :, 0])
    assert not torch.equal(sx[0, :, 0], sy[0, :, 0])  # not the same indices reused
    for a, b in zip(draws[0], draws[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # reproducible from the generator


def test_only_the_larger_set_is_sampled() -> None:
    x, pos_x = _indexed_set(64)
    y, pos_y = _indexed_set(8)
    sx, sy, _, _ = sample_sets(x, y, pos_x, pos_y, max_points=10, shared=False, generator=_gen(0))
    assert sx.shape[1] == 10 and torch.equal(sy, y)


def test_shared_indices_make_identical_inputs_lossless() -> None:
    # With independent draws, x vs x would compare two different subsets and give a positive loss.
    x = torch.rand(1, 8, 16, 16, generator=_gen(0))
    assert float(contextual_loss(x, x, max_points=30, generator=_gen(1))) < 1e-6
    assert float(contextual_bilateral_loss(x, x, max_points=30, generator=_gen(1))) < 1e-6


def test_sampled_losses_are_reproducible_with_a_generator() -> None:
    x, y = torch.rand(2, 8, 12, 12, generator=_gen(0)), torch.rand(2, 8, 12, 12, generator=_gen(1))
    first = contextual_loss(x, y, max_points=40, generator=_gen(7), reduction="none")
    torch.testing.assert_close(first, contextual_loss(x, y, max_points=40, generator=_gen(7), reduction="none"))
    assert not torch.equal(first, contextual_loss(x, y, max_points=40, generator=_gen(8), reduction="none"))
    full = contextual_loss(x, y, reduction="none")
    torch.testing.assert_close(contextual_loss(x, y, max_points=144, reduction="none"), full, rtol=0, atol=0)


def test_different_map_sizes_are_sampled_independently_and_reproducibly() -> None:
    x, y = torch.rand(1, 4, 10, 10, generator=_gen(0)), torch.rand(1, 4, 7, 9, generator=_gen(1))
    first = contextual_bilateral_loss(x, y, max_points=20, generator=_gen(2))
    assert torch.isfinite(first)
    torch.testing.assert_close(first, contextual_bilateral_loss(x, y, max_points=20, generator=_gen(2)))


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (-5, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_max_points_raise(bad, error) -> None:
    with pytest.raises(error, match="max_points must be"):
        contextual_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), max_points=bad)


def test_sampling_only_the_target_keeps_every_prediction_vector() -> None:
    x, y = rand64(1, 4, 10, 10, seed=40), rand64(1, 4, 10, 10, seed=41)
    sampled = contextual_loss(x, y, max_points=30, sample="target", generator=_gen(6), reduction="none")
    # CX ignores positions: the same 30 target vectors as a 1 x 30 map give the same value.
    index = sample_indices(100, 30, generator=_gen(6))
    subset = y.flatten(2)[..., index].unsqueeze(2)
    torch.testing.assert_close(sampled, contextual_loss(x, subset, reduction="none"), rtol=1e-12, atol=1e-12)
    assert float(contextual_loss(x, x, max_points=30, sample="target", generator=_gen(7))) < 1e-9
    # A shifted copy keeps its true matches (every prediction vector is there): a small loss.
    shifted = torch.roll(x, 1, dims=-1)
    both = contextual_loss(shifted, x, max_points=30, generator=_gen(8))
    target = contextual_loss(shifted, x, max_points=30, sample="target", generator=_gen(8))
    assert float(target) < float(both)


def test_sampling_only_the_target_for_cobi_keeps_the_positions() -> None:
    x = rand64(1, 3, 8, 8, seed=42)
    assert float(contextual_bilateral_loss(x, x, 0.5, max_points=20, sample="target", generator=_gen(9))) < 1e-9
    idx_x, idx_y = sample_positions(64, 64, 20, shared=True, generator=_gen(9), sample="target")
    assert idx_x is None and idx_y is not None and idx_y.shape == (20,)
    with pytest.raises(ValueError, match=r"sample must be one of \('both', 'target'\), got 'prediction'"):
        contextual_loss(x, x, max_points=20, sample="prediction")
