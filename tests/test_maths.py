"""The building blocks in contextual_loss.maths."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import rand64

from contextual_loss import maths


def test_l1_and_l2_agree_with_cdist():
    x, y = rand64(2, 7, 5, seed=1), rand64(2, 9, 5, seed=2)
    torch.testing.assert_close(maths.feature_distance(x, y, "l1"), torch.cdist(x, y, p=1))
    torch.testing.assert_close(maths.feature_distance(x, y, "l2"), torch.cdist(x, y, p=2) ** 2)


def test_l1_is_sum_of_absolute_differences_not_absolute_sum():
    # A defect of earlier implementations: |sum(x - y)| instead of sum |x - y|.
    x = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    y = torch.zeros(1, 1, 2, dtype=torch.float64)
    assert float(maths.feature_distance(x, y, "l1")) == 2.0


def test_cosine_distance_is_clamped_and_zero_vectors_are_at_distance_one():
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    d = maths.feature_distance(x, y, "cosine")
    torch.testing.assert_close(d, torch.tensor([[[0.0, 2.0], [1.0, 1.0]]], dtype=torch.float64))


def test_prepare_centres_on_the_target_mean_and_normalises():
    x, y = rand64(2, 6, 4, seed=3), rand64(2, 5, 4, seed=4)
    px, py = maths.prepare_features(x, y, "cosine", "image")
    mu = y.mean(1, keepdim=True)
    torch.testing.assert_close(px, (x - mu) / (x - mu).norm(dim=-1, keepdim=True))
    torch.testing.assert_close(py.norm(dim=-1), torch.ones(2, 5, dtype=torch.float64))
    # l1 / l2 use the raw vectors (as the authors' code): no centring.
    assert maths.prepare_features(x, y, "l2")[0] is x


def test_zero_norm_vectors_become_zero_with_zero_gradient():
    y = torch.ones(1, 4, 3, dtype=torch.float64, requires_grad=True)  # constant target: y - mu = 0
    x = rand64(1, 4, 3, seed=5).requires_grad_()
    px, py = maths.prepare_features(x, y, "cosine")
    assert torch.equal(py, torch.zeros_like(py))
    (px.sum() + py.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_grid_positions_paper_frame():
    pos = maths.grid_positions(2, 4, "paper", dtype=torch.float64)
    assert pos.shape == (8, 2)
    torch.testing.assert_close(pos[0], torch.tensor([0.125, 0.125], dtype=torch.float64))
    torch.testing.assert_close(pos[-1], torch.tensor([1.5 / 4, 3.5 / 4], dtype=torch.float64))
    # A 2x coarser map shares the frame: its first cell's centre lies between the fine cells 0 and 1.
    fine = maths.grid_positions(4, 8, "paper", dtype=torch.float64)
    torch.testing.assert_close((fine[0] + fine[9]) / 2, pos[0])


def test_grid_positions_released_frame():
    pos = maths.grid_positions(2, 3, "released", dtype=torch.float64)
    torch.testing.assert_close(pos[-1], torch.tensor([1 / 3, 2 / 4], dtype=torch.float64))


def test_spatial_distance_forms():
    a = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    assert float(maths.spatial_distance(a, b, "paper")) == pytest.approx(0.5)
    assert float(maths.spatial_distance(a, b, "released")) == pytest.approx(0.25)


def test_log_cx_matrix_is_a_log_softmax_over_the_target_index():
    d = rand64(2, 5, 7, seed=6)
    a = maths.log_cx_matrix(d, 0.3, 1e-5)
    torch.testing.assert_close(a.exp().sum(-1), torch.ones(2, 5, dtype=torch.float64))
    rel = maths.relative_distance(d, 1e-5)
    w = torch.exp((1 - rel) / 0.3)
    torch.testing.assert_close(a.exp(), w / w.sum(-1, keepdim=True))
    assert (a <= 0).all()


def test_log_cx_matrix_is_finite_for_tiny_band_width():
    d = rand64(1, 4, 4, seed=7)
    d.diagonal(dim1=1, dim2=2).zero_()
    a = maths.log_cx_matrix(d, 1e-4, 1e-5)  # the exp form overflows: exp(1 / h) = exp(1e4)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a.diagonal(dim1=1, dim2=2), torch.zeros(1, 4, dtype=torch.float64))


def test_mix_released_edges_and_value():
    a, b = rand64(1, 3, 3, seed=8).log(), rand64(1, 3, 3, seed=9).log()
    assert torch.equal(maths.mix_released(a, b, 0.0), a)  # exactly: log(w) = -inf adds nothing
    assert torch.equal(maths.mix_released(a, b, 1.0), b)
    torch.testing.assert_close(maths.mix_released(a, b, 0.25), (0.75 * a.exp() + 0.25 * b.exp()).log())


def test_log_similarity_from_matrix_reduces_max_over_prediction_then_mean_over_target():
    cx = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]], dtype=torch.float64)  # N = 3, M = 2
    assert float(maths.log_similarity_from_matrix(cx.log())) == pytest.approx(math.log((0.9 + 0.8) / 2))


def test_mix_released_has_finite_second_derivatives_where_one_share_dominates():
    # The released spatial CX is nearly the identity: log CX_sp is ~0 on the diagonal and below -1e3
    # elsewhere. logaddexp's second derivative overflowed to NaN there; the log-sum-exp form does not.
    log_feat = torch.tensor([[-2.0, -1500.0], [-0.5, -3.0]], dtype=torch.float64, requires_grad=True)
    log_spatial = torch.tensor([[0.0, -2000.0], [-1800.0, 0.0]], dtype=torch.float64)
    mixed = maths.mix_released(log_feat, log_spatial, 0.3)
    (grad,) = torch.autograd.grad(mixed.sum(), log_feat, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), log_feat)
    assert torch.isfinite(grad).all() and torch.isfinite(second).all()
    # d/da log((1 - w) e^a + w e^b) = (1 - w) e^a / mix: check one entry in closed form.
    want = 0.7 * math.exp(-2.0) / (0.7 * math.exp(-2.0) + 0.3)
    torch.testing.assert_close(grad[0, 0], torch.tensor(want, dtype=torch.float64))
