"""Bad input gets a clear error naming the argument, the value received and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_similarity

X = torch.rand(2, 3, 4, 4)


@pytest.mark.parametrize(
    ("x", "y", "error", "pattern"),
    [
        (X.numpy(), X, TypeError, r"x must be a torch.Tensor of shape \(B, C, H, W\), got ndarray"),
        (X, [1.0], TypeError, r"y must be a torch.Tensor .* got list"),
        (X[0], X, ValueError, r"x must have shape \(B, C, H, W\) \(4 dimensions\), got shape \(3, 4, 4\)"),
        (X, X[None], ValueError, r"y must have shape .* got shape \(1, 2, 3, 4, 4\)"),
        (X, X[:1], ValueError, r"same batch size, got x: \(2, 3, 4, 4\) and y: \(1, 3, 4, 4\)"),
        (X, X[:, :2], ValueError, r"same number of channels, got x: \(2, 3, 4, 4\) and y: \(2, 2, 4, 4\)"),
        ((X * 255).to(torch.uint8), X, TypeError, r"x must have a floating-point dtype .* got torch.uint8"),
        (X, X.long(), TypeError, r"y must have a floating-point dtype .* got torch.int64"),
        (X, X.bool(), TypeError, r"y must have a floating-point dtype"),
        (X[..., :0], X, ValueError, r"x must not be empty, got shape \(2, 3, 4, 0\)"),
        (X, X[:, :, :0], ValueError, r"y must not be empty"),
    ],
)
def test_bad_tensors(x, y, error, pattern):
    with pytest.raises(error, match=pattern):
        contextual_loss(x, y)
    with pytest.raises(error, match=pattern):
        contextual_bilateral_loss(x, y)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"band_width": 0.0}, ValueError, r"band_width must be > 0, got 0.0"),
        ({"band_width": -1}, ValueError, r"band_width must be > 0, got -1"),
        ({"band_width": float("nan")}, ValueError, r"band_width must be finite, got nan"),
        ({"band_width": "0.5"}, TypeError, r"band_width must be a real number, got str '0.5'"),
        ({"band_width": True}, TypeError, r"band_width must be a real number, got bool"),
        ({"loss_type": "L1"}, ValueError, r"loss_type must be one of \('cosine', 'l1', 'l2'\), got 'L1'"),
        ({"center": "global"}, ValueError, r"center must be one of \('image', 'batch'\), got 'global'"),
        ({"eps": 0.0}, ValueError, r"eps must be > 0, got 0.0"),
        ({"max_points": 0}, ValueError, r"max_points must be >= 1, got 0"),
        ({"max_points": 2.5}, TypeError, r"max_points must be an int, got float 2.5"),
    ],
)
def test_bad_options(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        contextual_similarity(X, X, **kwargs)
    with pytest.raises(error, match=pattern):
        ContextualLoss(**kwargs)


def test_bad_reduction():
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        contextual_loss(X, X, reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ContextualBilateralLoss(reduction="elementwise_mean")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"weight_sp": -0.1}, ValueError, r"weight_sp must be >= 0, got -0.1"),
        ({"weight_sp": 1.5, "form": "released"}, ValueError, r"weight_sp must lie in \[0, 1\], got 1.5"),
        ({"weight_sp": None}, TypeError, r"weight_sp must be a real number, got NoneType"),
        ({"form": "tf"}, ValueError, r"form must be one of \('paper', 'released'\), got 'tf'"),
    ],
)
def test_bad_bilateral_options(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        contextual_bilateral_loss(X, X, **kwargs)
    with pytest.raises(error, match=pattern):
        ContextualBilateralLoss(**kwargs)


def test_paper_form_accepts_weights_above_one():
    assert torch.isfinite(contextual_bilateral_loss(X, X.flip(-1), weight_sp=3.0))


def test_module_rejects_non_tensor_input():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        ContextualLoss()(np.zeros((1, 3, 4, 4)), X[:1])


def test_devices_must_match():
    with pytest.raises(ValueError, match=r"same device, got x on cpu and y on meta"):
        contextual_loss(X, torch.empty(2, 3, 4, 4, device="meta"))
