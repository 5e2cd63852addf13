"""explain_match: match positions, displacements, similarities and small-set matrices."""

from __future__ import annotations

import math

import pytest
import torch

from contextual_loss.demo.images import texture
from contextual_loss.demo.seed_example import SEED_CX, seed_images
from contextual_loss.explain import MATRIX_LIMIT, explain_match
from contextual_loss.features import extract_patches
from contextual_loss.functional import contextual_bilateral_loss, contextual_similarity


def _distinct_features(height: int, width: int, channels: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_spatial_permutation_is_recovered() -> None:
    x = _distinct_features(5, 6)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    y = x.flatten(2)[..., perm].view_as(x)  # target j shows the prediction's feature perm[j]
    result = explain_match(x, y)
    assert torch.equal(result.index.flatten(), perm)
    assert torch.equal(result.source[..., 0].flatten(), perm // 6)
    assert torch.equal(result.source[..., 1].flatten(), perm % 6)
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    assert torch.equal(result.displacement[..., 0], (perm // 6).view(5, 6).double() - rows)
    assert torch.equal(result.displacement[..., 1], (perm % 6).view(5, 6).double() - cols)
    assert bool(result.unique.all()) and result.unique_fraction == 1.0
    assert result.cx == pytest.approx(1.0, abs=1e-12)


def test_a_shift_gives_a_uniform_displacement() -> None:
    canvas = texture(20, 26, seed=5)
    target, prediction = canvas[..., :20], canvas[..., 3:23]
    result = explain_match(extract_patches(prediction, 5), extract_patches(target, 5))
    # Target column c shows the prediction's column c - 3; away from the borders that is the match.
    interior = result.displacement[2:-2, 5:-2]
    assert torch.equal(interior, torch.tensor([0.0, -3.0], dtype=torch.float64).expand_as(interior))
    assert result.prediction_shape == (20, 20) and result.target_shape == (20, 20)


def test_similarity_and_matrices_agree_with_the_functions() -> None:
    x, y = _distinct_features(3, 4, seed=2), _distinct_features(2, 5, seed=3)
    result = explain_match(x, y, band_width=0.3)
    assert result.cx_matrix is not None and result.relative_distance is not None
    assert result.cx_matrix.shape == (12, 10)
    torch.testing.assert_close(result.cx_matrix.sum(dim=1), torch.ones(12, dtype=torch.float64))
    best, index = result.cx_matrix.max(dim=0)
    torch.testing.assert_close(best.view(2, 5), result.similarity)
    assert torch.equal(index.view(2, 5), result.index)
    assert result.cx == pytest.approx(float(result.similarity.mean()), rel=1e-12)
    assert result.cx == pytest.approx(float(contextual_similarity(x, y, band_width=0.3)), rel=1e-12)
    # d~ has its row minimum m / (m + eps) with m = min_k d_ik: just below 1 (eps = 1e-5, m ~ 0.1).
    minima = result.relative_distance.min(dim=1).values
    assert bool((minima < 1).all()) and bool((minima > 1 - 1e-3).all())


def test_seed_example_matrices() -> None:
    x, y = seed_images((2, 0, 1))
    result = explain_match(x, y, band_width=0.1)
    assert result.cx == pytest.approx(SEED_CX, abs=1e-12)  # the definition's value
    # Target pixel j is the light version of prediction pixel order[j]: (2, 0, 1).
    assert result.index.flatten().tolist() == [2, 0, 1]
    assert result.cx_matrix is not None and result.cx_matrix.shape == (3, 3)


@pytest.mark.parametrize("form", ["paper", "released"])
def test_cobi_matches(form: str) -> None:
    x, y = _distinct_features(4, 4, seed=4), _distinct_features(4, 4, seed=5)
    result = explain_match(x, y, weight_sp=0.3, form=form)
    expected = contextual_bilateral_loss(x, y, 0.3, 0.5, form=form)
    assert -math.log(result.cx) == pytest.approx(float(expected), rel=1e-10)
    assert result.cx_matrix is not None
    torch.testing.assert_close(result.cx_matrix.max(dim=0).values.view(4, 4), result.similarity)
    assert result.settings["weight_sp"] == 0.3 and result.settings["form"] == form


def test_maps_of_different_sizes_use_the_target_grid() -> None:
    x = _distinct_features(4, 4, seed=6)
    y = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")  # every cell doubled
    result = explain_match(x, y)
    assert result.prediction_shape == (4, 4) and result.target_shape == (8, 8)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(result.source[..., 0], rows // 2) and torch.equal(result.source[..., 1], cols // 2)
    # Source centres rescaled to the target grid are half a cell from the target cell.
    assert bool((result.displacement.abs() == 0.5).all())
    assert result.unique_fraction == 0.0  # four targets share each source


def test_matrices_only_for_small_sets_unless_asked() -> None:
    small = _distinct_features(4, 4)
    large = _distinct_features(9, 9)
    assert 81 * 81 > MATRIX_LIMIT >= 16 * 16
    assert explain_match(small, small).cx_matrix is not None
    assert explain_match(large, large).cx_matrix is None
    assert explain_match(large, large, matrices=True).cx_matrix is not None
    assert explain_match(small, small, matrices=False).relative_distance is None


def test_three_dimensional_input_is_one_map() -> None:
    x = _distinct_features(3, 3)[0]
    assert explain_match(x, x).index.shape == (3, 3)


def test_bad_input() -> None:
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one feature map"):
        explain_match(x, x)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        explain_match([1.0], torch.rand(1, 3, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="band_width"):
        explain_match(x[:1], x[:1], band_width=0.0)
