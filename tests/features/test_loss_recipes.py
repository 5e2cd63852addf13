"""The papers' recipes: ContextualBilateralLoss.zoom_recipe (Zhang et al. 2019), ContextualLoss.mechrez_recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.features import FeatureUnion, PatchFeatures, VGG19Features


def _vgg(loss: nn.Module) -> VGG19Features:
    return next(m for m in loss.modules() if isinstance(m, VGG19Features))


@pytest.mark.parametrize(("zoom", "n"), [(4, 10), (8, 15)])
def test_zoom_recipe_defaults(zoom: int, n: int, weights_file: Path) -> None:
    # Zhang et al. 2019: n x n RGB patches (n = 10 for 4x, 15 for 8x) + lambda * VGG19 conv1_2, conv2_2,
    # conv3_2 (post-ReLU in their network, hence relu*), cosine, average pooling; h = 0.5, w_s = 0.1.
    loss = ContextualBilateralLoss.zoom_recipe(zoom, weights=weights_file)
    assert isinstance(loss.features, FeatureUnion)
    patches = next(m for m in loss.modules() if isinstance(m, PatchFeatures))
    assert patches.size == n
    assert loss.layer_weights == {"patches": 1.0, "relu1_2": 1.0, "relu2_2": 1.0, "relu3_2": 1.0}
    assert _vgg(loss).pooling == "avg" and _vgg(loss).layers == ("relu1_2", "relu2_2", "relu3_2")
    assert (loss.loss_type, loss.band_width, loss.weight_sp, loss.form) == ("cosine", 0.5, 0.1, "paper")


def test_zoom_recipe_runs_with_gradients(weights_file: Path) -> None:
    loss = ContextualBilateralLoss.zoom_recipe(4, vgg_weight=0.5, weights=weights_file)
    assert loss.layer_weights["relu2_2"] == 0.5
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=gen, requires_grad=True)
    value = loss(x, torch.rand(1, 3, 16, 16, generator=gen))
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_zoom_recipe_overrides_and_shared_extractor(weights_file: Path) -> None:
    shared = VGG19Features(["relu1_2", "relu2_2", "relu3_2"], weights=weights_file, pooling="avg")
    loss = ContextualBilateralLoss.zoom_recipe(8, features=shared, weight_sp=0.3, reduction="none")
    assert _vgg(loss) is shared and loss.weight_sp == 0.3 and loss.reduction == "none"
    custom = ContextualBilateralLoss.zoom_recipe(None, patch_size=5, weights=None)
    assert next(m for m in custom.modules() if isinstance(m, PatchFeatures)).size == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((3,), {}, "zoom must be 4 or 8"),
        ((4,), {"patch_size": 5}, "zoom must be 4 or 8 .* or None with patch_size"),
        ((None,), {}, "zoom=None needs patch_size"),
        ((4,), {"vgg_weight": -1.0}, "vgg_weight must be >= 0"),
    ],
)
def test_zoom_recipe_bad_arguments(args, kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        ContextualBilateralLoss.zoom_recipe(*args, weights=None, **kwargs)


@pytest.mark.parametrize(("task", "h"), [("animation", 0.5), ("style_transfer", 0.1)])
def test_mechrez_recipe_defaults(task: str, h: float, weights_file: Path) -> None:
    # Mechrez et al. 2018 (config.py of their code): conv3_2 + conv4_2 post-ReLU, weight 1 each, cosine,
    # average pooling; h = 0.5 for single-image animation and 0.1 for style transfer.
    loss = ContextualLoss.mechrez_recipe(task, weights=weights_file)
    assert loss.layer_weights == {"relu3_2": 1.0, "relu4_2": 1.0}
    assert (loss.band_width, loss.loss_type, _vgg(loss).pooling) == (h, "cosine", "avg")


def test_mechrez_recipe_runs_with_gradients(weights_file: Path) -> None:
    loss = ContextualLoss.mechrez_recipe(weights=weights_file, max_points=32)
    assert loss.max_points == 32
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen, requires_grad=True)
    value = loss(x, torch.rand(2, 3, 32, 32, generator=gen), generator=torch.Generator().manual_seed(1))
    value.backward()
    assert torch.isfinite(value) and value > 0 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_mechrez_recipe_bad_task() -> None:
    with pytest.raises(ValueError, match=r"task must be one of \('animation', 'style_transfer'\), got 'style'"):
        ContextualLoss.mechrez_recipe("style", weights=None)
