"""Numerical behaviour: log space, tiny band widths, half precision, zero norms, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import rand

from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_similarity

LOSS_TYPES = ("cosine", "l1", "l2")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("band_width", [0.01, 0.001])
def test_tiny_band_width_gives_finite_values_and_gradients(loss_type, band_width):
    x, y = rand(2, 8, 6, 6, seed=1).requires_grad_(), rand(2, 8, 6, 6, seed=2)
    loss = contextual_loss(x, y, band_width=band_width, loss_type=loss_type)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= float(loss.detach()) <= math.log(36)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("band_width", [0.5, 0.01, 0.001])
def test_identical_inputs_give_zero_loss_and_zero_gradient(loss_type, band_width):
    # The exp form gives NaN here for h <= 0.01 in float32 (exp(1 / h) overflows).
    x = rand(2, 8, 6, 6, seed=3).requires_grad_()
    loss = contextual_loss(x, x.detach(), band_width=band_width, loss_type=loss_type)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().max()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_half_precision_inputs_are_finite_and_close_to_float32(dtype, loss_type):
    x, y = rand(2, 16, 8, 8, seed=4), rand(2, 16, 8, 8, seed=5)
    ref = contextual_loss(x, y, loss_type=loss_type, reduction="none")
    xh = x.to(dtype).requires_grad_()
    got = contextual_loss(xh, y.to(dtype), loss_type=loss_type, reduction="none")
    got.sum().backward()
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all() and (got - ref).abs().max() < 1e-2
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_identical_half_inputs_give_zero_not_nan(dtype):
    x = rand(1, 16, 8, 8, seed=6).to(dtype)
    assert float(contextual_loss(x, x)) == 0.0
    assert float(contextual_bilateral_loss(x, x)) == 0.0


def test_autocast_on_cpu_computes_in_float32():
    x, y = rand(2, 16, 8, 8, seed=7), rand(2, 16, 8, 8, seed=8)
    ref = contextual_loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contextual_loss(x, y)
        same = contextual_loss(x, x)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(ref)) < 1e-6  # float32 inputs stay float32 inside
    assert float(same) == 0.0


def test_constant_images_give_a_defined_loss_and_zero_gradient():
    # All centred vectors are zero: d = 1 everywhere, CX uniform, CX = 1/M, loss = log M.
    x = torch.full((1, 3, 4, 4), 0.3, requires_grad=True)
    y = torch.full((1, 3, 4, 4), 0.7)
    loss = contextual_loss(x, y)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(16), abs=1e-6)
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_constant_target_with_varied_prediction_is_finite():
    x = rand(1, 3, 4, 4, seed=9).requires_grad_()
    y = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    loss = contextual_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_prediction_vector_equal_to_target_mean_is_finite():
    y = rand(1, 3, 4, 4, seed=10, dtype=torch.float64)
    x = rand(1, 3, 4, 4, seed=11, dtype=torch.float64)
    x[0, :, 0, 0] = y.mean(dim=(2, 3))[0]
    x.requires_grad_()
    contextual_loss(x, y).backward()
    assert torch.isfinite(x.grad).all() and float(x.grad[0, :, 0, 0].abs().max()) == 0.0


def test_similarity_is_never_above_one_nor_loss_negative():
    for seed in range(5):
        x, y = rand(1, 4, 5, 5, seed=20 + seed), rand(1, 4, 5, 5, seed=40 + seed)
        for bw in (1e-3, 0.1, 2.0):
            assert float(contextual_loss(x, y, band_width=bw)) >= 0.0
            assert float(contextual_similarity(x, y, band_width=bw)) <= 1.0


def _gradcheck(fn, *inputs):
    return torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("center", ["image", "batch"])
def test_gradcheck_contextual_loss(loss_type, center):
    x = rand(2, 3, 3, 4, seed=12, dtype=torch.float64).requires_grad_()
    y = rand(2, 3, 4, 3, seed=13, dtype=torch.float64).requires_grad_()
    assert _gradcheck(lambda a, b: contextual_loss(a, b, 0.3, loss_type, center=center, reduction="none"), x, y)


@pytest.mark.parametrize("form", ["paper", "released"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_bilateral_loss(form, loss_type):
    x = rand(2, 3, 3, 4, seed=14, dtype=torch.float64).requires_grad_()
    y = rand(2, 3, 3, 4, seed=15, dtype=torch.float64).requires_grad_()
    fn = lambda a, b: contextual_bilateral_loss(a, b, 0.3, 0.4, loss_type, form=form, reduction="none")  # noqa: E731
    assert _gradcheck(fn, x, y)


@pytest.mark.parametrize("where", [(0, 0, 0, 0), (0, 1, 2, 2), (1, 2, 19, 18), (1, 2, 19, 19)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_raise(bad, where):
    # First, middle and last elements of a tensor large enough for vectorised, multi-threaded reductions.
    x, y = rand(2, 3, 20, 20, seed=16), rand(2, 3, 20, 20, seed=17)
    x[where] = bad
    with pytest.raises(ValueError, match="x contains NaN or infinite"):
        contextual_loss(x, y)
    with pytest.raises(ValueError, match="y contains NaN or infinite"):
        contextual_loss(y, x)
