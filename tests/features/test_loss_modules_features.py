"""The loss modules with real extractors: layers=, use_vgg, shared features, patches + VGG, and bad combinations."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.features import FeatureUnion, IdentityFeatures, PatchFeatures, VGG19Features
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss

LOSSES = [ContextualLoss, ContextualBilateralLoss]


@pytest.fixture
def images() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)


def _functional(cls: type) -> object:
    return contextual_loss if cls is ContextualLoss else contextual_bilateral_loss


@pytest.mark.parametrize("cls", LOSSES)
def test_vgg_losses_are_finite_with_input_gradients(cls, weights_file: Path, images) -> None:
    loss_fn = cls(layers={"relu1_2": 1.0, "relu2_2": 1.0}, weights=weights_file)
    x = images[0].clone().requires_grad_(True)
    loss = loss_fn(x, images[1])
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
    assert float(loss_fn(images[1], images[1])) < 1e-5  # identical images: loss 0 through VGG too


@pytest.mark.parametrize("cls", LOSSES)
def test_layer_weights_sum_the_per_layer_losses(cls, weights_file: Path, images) -> None:
    layers = {"relu1_2": 0.5, "relu2_1": 2.0}
    loss_fn = cls(layers=layers, weights=weights_file, reduction="none")
    feats_x, feats_y = loss_fn.features(images[0]), loss_fn.features(images[1])
    kwargs = {"reduction": "none", "band_width": 0.5}  # the modules' band width (the functional CoBi's is 1.0)
    expected = sum(w * _functional(cls)(feats_x[n], feats_y[n], **kwargs) for n, w in layers.items())
    torch.testing.assert_close(loss_fn(*images), expected)


def test_layers_as_name_list_or_dict(weights_file: Path) -> None:
    as_name = ContextualLoss(layers="relu1_2", weights=weights_file)
    as_list = ContextualLoss(layers=["relu1_2", "relu2_1"], weights=weights_file)
    as_dict = ContextualLoss(layers={"relu1_2": 1, "relu2_1": 3}, weights=weights_file)
    assert as_name.layer_weights == {"relu1_2": 1.0}
    assert as_list.layer_weights == {"relu1_2": 1.0, "relu2_1": 1.0}
    assert as_dict.layer_weights == {"relu1_2": 1.0, "relu2_1": 3.0}
    assert as_dict.features.layers == ("relu1_2", "relu2_1")
    assert "layers={'relu1_2': 1.0, 'relu2_1': 3.0}" in repr(as_dict)


@pytest.mark.parametrize("cls", LOSSES)
def test_use_vgg_maps_onto_layers(cls, weights_file: Path, images) -> None:
    compat = cls(use_vgg=True, vgg_layer="relu2_2", weights=weights_file)
    modern = cls(layers={"relu2_2": 1.0}, weights=weights_file)
    assert compat.layer_weights == {"relu2_2": 1.0} and isinstance(compat.features, VGG19Features)
    torch.testing.assert_close(compat(*images), modern(*images))


def test_use_vgg_default_layer_is_relu3_4(weights_file: Path) -> None:
    assert ContextualLoss(use_vgg=True, weights=None).features.layers == ("relu3_4",)


@pytest.mark.parametrize("cls", LOSSES)
def test_one_extractor_shared_by_several_losses(cls, weights_file: Path, images) -> None:
    shared = VGG19Features(["relu1_2", "relu2_1", "relu2_2"], weights=weights_file)
    first = ContextualLoss(layers="relu1_2", features=shared)
    second = cls(layers={"relu2_1": 1.0, "relu2_2": 0.5}, features=shared)
    assert first.features is shared and second.features is shared
    params = {id(p) for p in itertools.chain(first.parameters(), second.parameters())}
    assert params == {id(p) for p in shared.parameters()}
    own = cls(layers={"relu2_1": 1.0, "relu2_2": 0.5}, weights=weights_file)
    torch.testing.assert_close(second(*images), own(*images))
    parent = nn.ModuleList([first, second]).train()
    assert parent.training and not shared.training


def test_shared_extractor_without_layers_compares_all_its_maps(weights_file: Path, images) -> None:
    shared = VGG19Features(["relu1_1", "relu1_2"], weights=weights_file)
    everything = ContextualLoss(features=shared)
    explicit = ContextualLoss(features=shared, layers=["relu1_1", "relu1_2"])
    assert everything.layer_weights is None
    torch.testing.assert_close(everything(*images), explicit(*images))


def test_custom_extractor(images) -> None:
    class TwoScales(nn.Module):
        def forward(self, image: Tensor) -> dict[str, Tensor]:
            return {"full": image, "half": nn.functional.avg_pool2d(image, 2)}

    loss_fn = ContextualLoss(features=TwoScales(), layers={"half": 2.0})
    expected = 2.0 * contextual_loss(*(nn.functional.avg_pool2d(i, 2) for i in images))
    torch.testing.assert_close(loss_fn(*images), expected)
    with pytest.raises(ValueError, match=r"layers \['quarter'\] are not among the feature maps.*\['full', 'half'\]"):
        ContextualLoss(features=TwoScales(), layers="quarter")(*images)


@pytest.mark.parametrize("cls", LOSSES)
def test_patches_and_vgg_together(cls, weights_file: Path, images) -> None:
    combined = cls(patch_size=3, layers={"patches": 1.0, "relu1_2": 0.25}, weights=weights_file, reduction="none")
    assert isinstance(combined.features, FeatureUnion)
    # One distance for every layer: with VGG19 layers, cosine (patches alone default to l2).
    assert combined.loss_type == "cosine"
    patches_only = cls(patch_size=3, loss_type="cosine", reduction="none")
    vgg_only = cls(layers="relu1_2", weights=weights_file, reduction="none")
    torch.testing.assert_close(combined(*images), patches_only(*images) + 0.25 * vgg_only(*images))


def test_patches_and_a_shared_extractor_together(weights_file: Path, images) -> None:
    shared = VGG19Features(["relu1_2"], weights=weights_file)
    combined = ContextualBilateralLoss(patch_size=3, features=shared, layers={"patches": 1.0, "relu1_2": 1.0})
    assert isinstance(combined.features, FeatureUnion) and combined.features.extractors[1] is shared
    assert torch.isfinite(combined(*images))


def test_feature_defaults_without_vgg() -> None:
    assert isinstance(ContextualLoss().features, IdentityFeatures)
    assert ContextualLoss().layer_weights == {"input": 1.0}
    patches = ContextualLoss(patch_size=5)
    assert isinstance(patches.features, PatchFeatures) and patches.layer_weights == {"patches": 1.0}


def test_union_rejects_clashing_names(images) -> None:
    union = FeatureUnion(PatchFeatures(3), PatchFeatures(5))
    with pytest.raises(ValueError, match=r"both return the layer name\(s\) \['patches'\]"):
        union(images[0])
    with pytest.raises(TypeError, match=r"one or more nn\.Module"):
        FeatureUnion()


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"layers": "relu9_1"}, ValueError, "unknown VGG19 layer"),
        ({"layers": {"relu1_1": -1.0}}, ValueError, r"layers\['relu1_1'\] must be >= 0"),
        ({"layers": {"relu1_1": "1"}}, TypeError, r"layers\['relu1_1'\] must be a real number"),
        ({"layers": {1: 1.0}}, TypeError, "layers must be a layer name"),
        ({"layers": []}, ValueError, "at least one layer"),
        ({"use_vgg": 1}, TypeError, "use_vgg must be a bool"),
        ({"use_vgg": True, "layers": "relu1_1"}, ValueError, "both choose the VGG layers"),
        ({"use_vgg": True, "vgg_layer": "relu3_5"}, ValueError, "unknown VGG19 layer"),
        ({"vgg_layer": "relu2_2"}, ValueError, "only used with use_vgg=True"),
        ({"patch_size": 3, "layers": "relu1_1"}, ValueError, "has no 'patches' entry"),
        ({"layers": "patches"}, ValueError, "patch_size is not set"),
        ({"layers": ["input", "relu1_1"]}, ValueError, "cannot be combined"),
        ({"padding": "zero"}, ValueError, "only used with patch_size"),
        ({"patch_size": 0}, ValueError, "patch_size must be >= 1"),
        ({"features": lambda image: {"x": image}}, TypeError, "features must be an nn.Module"),
        ({"weights": "vgg19.pth"}, ValueError, "no VGG layer is used"),
        ({"pooling": "avg", "patch_size": 3}, ValueError, "no VGG layer is used"),
        ({"input_range": (-1, 1)}, ValueError, "no VGG layer is used"),
        ({"features": IdentityFeatures(), "weights": None}, ValueError, "passed as features is used instead"),
        ({"layers": "relu1_1", "pooling": "mean", "weights": None}, ValueError, "pooling must be one of"),
        ({"layers": "relu1_1", "input_range": (1, 0), "weights": None}, ValueError, "input_range must be a pair"),
    ],
)
@pytest.mark.parametrize("cls", LOSSES)
def test_bad_feature_arguments_raise(cls, kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        cls(**kwargs)


def test_layers_missing_from_a_shared_vgg_raise_at_construction() -> None:
    shared = VGG19Features(["relu1_1"], weights=None)
    with pytest.raises(ValueError, match=r"layers \['relu2_1'\] are not computed by the VGG19Features"):
        ContextualLoss(layers={"relu1_1": 1.0, "relu2_1": 1.0}, features=shared)


def test_state_dict_holds_weights_it_cannot_reload_but_not_the_normalisation(weights_file: Path, vgg_state) -> None:
    # A file is read again on construction, so its weights stay out (tests/features/test_vgg_checkpoints.py).
    assert set(ContextualLoss(layers="relu1_2", weights=weights_file).state_dict()) == set()
    keys = set(ContextualLoss(layers="relu1_2", weights=dict(vgg_state)).state_dict())
    assert keys == {"features.body.0.weight", "features.body.0.bias", "features.body.2.weight", "features.body.2.bias"}
