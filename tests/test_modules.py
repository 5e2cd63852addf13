"""The loss modules: every constructor argument reaches the maths; module == functional."""

from __future__ import annotations

import itertools

import pytest
import torch
from tests.helpers import rand

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.features import IdentityFeatures, extract_patches
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss
from contextual_loss.options import WEIGHT_SP_BY_DISTANCE, feature_defaults

X, Y = rand(2, 3, 8, 8, seed=1), rand(2, 3, 8, 8, seed=2)

CX_OPTIONS = list(
    itertools.product([0.1, 0.5], ["cosine", "l1", "l2"], ["image", "batch"], ["mean", "sum", "none"], [1e-5, 1e-3])
)


@pytest.mark.parametrize(("band_width", "loss_type", "center", "reduction", "eps"), CX_OPTIONS)
def test_contextual_module_equals_functional(band_width, loss_type, center, reduction, eps):
    module = ContextualLoss(band_width, loss_type, center=center, reduction=reduction, eps=eps)
    want = contextual_loss(X, Y, band_width, loss_type, center=center, reduction=reduction, eps=eps)
    torch.testing.assert_close(module(X, Y), want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("weight_sp", "form", "loss_type", "reduction"),
    list(itertools.product([0.0, 0.1, 0.6], ["paper", "released"], ["cosine", "l2"], ["mean", "none"])),
)
def test_bilateral_module_equals_functional(weight_sp, form, loss_type, reduction):
    module = ContextualBilateralLoss(weight_sp, 0.3, loss_type, form=form, reduction=reduction)
    want = contextual_bilateral_loss(X, Y, weight_sp, 0.3, loss_type, form=form, reduction=reduction)
    torch.testing.assert_close(module(X, Y), want, rtol=0, atol=0)


def test_positional_arguments_land_where_contextual_loss_pytorch_put_them():
    # The earlier implementation dropped loss_type and let band_width land in weight_sp.
    module = ContextualBilateralLoss(0.2, 0.3, "l1")
    assert (module.weight_sp, module.band_width, module.loss_type) == (0.2, 0.3, "l1")
    module = ContextualLoss(0.3, "l2")
    assert (module.band_width, module.loss_type) == (0.3, "l2")


def test_arguments_change_the_value():
    base = float(ContextualLoss()(X, Y))
    for kwargs in ({"band_width": 0.1}, {"loss_type": "l2"}, {"center": "batch"}, {"patch_size": 3}):
        assert float(ContextualLoss(**kwargs)(X, Y)) != base, kwargs
    cobi = float(ContextualBilateralLoss()(X, Y))
    for kwargs in ({"weight_sp": 0.5}, {"band_width": 0.1}, {"loss_type": "l1"}, {"form": "released"}):
        assert float(ContextualBilateralLoss(**kwargs)(X, Y)) != cobi, kwargs


def test_patch_features_are_used():
    module = ContextualLoss(patch_size=3, padding="zero")
    want = contextual_loss(extract_patches(X, 3, "zero"), extract_patches(Y, 3, "zero"), loss_type="l2")
    torch.testing.assert_close(module(X, Y), want, rtol=0, atol=0)
    assert module.layer_weights == {"patches": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({}, "deep"),  # the image itself: cosine, as contextual_loss_pytorch's use_vgg=False
        ({"patch_size": 5}, "pixels"),
        ({"patch_size": 1}, "pixels"),
        ({"patch_size": 3, "layers": {"patches": 2.0}}, "pixels"),
        ({"layers": "relu1_2", "weights": None}, "deep"),
        ({"use_vgg": True, "vgg_layer": "relu1_2", "weights": None}, "deep"),
        ({"patch_size": 3, "layers": {"patches": 1.0, "relu1_2": 1.0}, "weights": None}, "deep"),
        ({"features": IdentityFeatures()}, "deep"),
    ],
)
def test_the_distance_and_spatial_weight_follow_the_features(kwargs, kind):
    cx, cobi = ContextualLoss(**kwargs), ContextualBilateralLoss(**kwargs)
    defaults = feature_defaults(kind)
    assert cx.feature_kind == cobi.feature_kind == kind
    assert cx.loss_type == cobi.loss_type == defaults.loss_type
    assert cobi.weight_sp == defaults.weight_sp
    # Given values are kept; the spatial weight follows a given distance.
    assert ContextualLoss(loss_type="l2", **kwargs).loss_type == "l2"
    assert ContextualBilateralLoss(loss_type="cosine", **kwargs).weight_sp == WEIGHT_SP_BY_DISTANCE["cosine"]
    assert ContextualBilateralLoss(0.7, **kwargs).weight_sp == 0.7


def test_max_points_and_generator_reach_the_sampling():
    module = ContextualLoss(max_points=20)
    a = module(X, Y, generator=torch.Generator().manual_seed(0))
    b = contextual_loss(X, Y, max_points=20, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(module(X, X, generator=torch.Generator().manual_seed(1))) < 1e-6


def test_use_vgg_is_never_silently_ignored():
    # weights=None: random VGG19 weights, no download (tests/features covers the weight sources).
    module = ContextualLoss(use_vgg=True, vgg_layer="relu1_2", weights=None)
    assert module.layer_weights == {"relu1_2": 1.0}
    feats = module.features
    want = contextual_loss(feats(X)["relu1_2"], feats(Y)["relu1_2"])
    torch.testing.assert_close(module(X, Y), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="vgg_layer='relu2_2' is only used with use_vgg=True"):
        ContextualLoss(vgg_layer="relu2_2")


def test_gradients_reach_the_prediction_and_the_module_has_no_parameters():
    x = X.clone().requires_grad_()
    ContextualBilateralLoss(patch_size=3)(x, Y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert list(ContextualLoss(patch_size=3).parameters()) == []


def test_repr_lists_the_options():
    text = repr(ContextualBilateralLoss(0.2, 0.3, "l1", form="released"))
    assert "weight_sp=0.2" in text and "form='released'" in text and "loss_type='l1'" in text


def test_torch_compile_equals_eager():
    module = ContextualLoss(band_width=0.2)
    compiled = torch.compile(module, backend="eager")
    torch.testing.assert_close(compiled(X, Y), module(X, Y))


class _TwoMaps(torch.nn.Module):
    """A user's extractor with two maps: the image and its 2x2 average."""

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fine": image, "coarse": torch.nn.functional.avg_pool2d(image, 2)}


def test_layer_losses_and_their_weighted_sum() -> None:
    module = ContextualLoss(0.3, features=_TwoMaps(), layers={"fine": 0.5, "coarse": 2.0}, reduction="none")
    layers = module.layer_losses(X, Y)
    assert list(layers) == ["fine", "coarse"]
    torch.testing.assert_close(layers["fine"], contextual_loss(X, Y, 0.3, reduction="none"), rtol=0, atol=0)
    pool = torch.nn.functional.avg_pool2d
    torch.testing.assert_close(layers["coarse"], contextual_loss(pool(X, 2), pool(Y, 2), 0.3, reduction="none"))
    torch.testing.assert_close(module.combine_layers(layers), 0.5 * layers["fine"] + 2.0 * layers["coarse"])
    torch.testing.assert_close(module(X, Y), module.combine_layers(layers), rtol=0, atol=0)


def test_option_attributes_read_and_write_the_validated_options() -> None:
    module = ContextualBilateralLoss(0.2, 0.3, "l1", form="released")
    assert module.options.weight_sp == module.weight_sp == 0.2 and module.options.form == module.form == "released"
    before = module(X, Y)
    module.band_width = 0.1  # e.g. annealed during training
    assert module.options.band_width == 0.1 and float(module(X, Y)) != float(before)
    with pytest.raises(ValueError, match="band_width must be > 0"):
        module.band_width = -1.0
    with pytest.raises(ValueError, match=r"weight_sp must lie in \[0, 1\]"):
        module.weight_sp = 2.0
    with pytest.raises(TypeError, match="weight_sp must be a real number, got NoneType"):
        module.weight_sp = None  # would silently turn CoBi into CX
    assert module.band_width == 0.1 and module.weight_sp == 0.2  # unchanged by the refused values
    assert not hasattr(ContextualLoss(), "weight_sp")


def test_torch_compile_fullgraph_equals_eager_with_gradients() -> None:
    torch._dynamo.reset()
    module = ContextualBilateralLoss(0.1, 0.2, patch_size=3, engine="dense")
    x = X.double().requires_grad_()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    want, got = module(x, Y.double()), compiled(x, Y.double())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0], rtol=1e-10, atol=1e-12)
