"""Checkpoints of models that hold a VGG-based loss: reloadable weights are left out, the rest is saved.

"imagenet" is served by the conftest's isolated torch hub cache holding random weights (the real
ImageNet file is never available here); a second random file stands for other weights.
"""

from __future__ import annotations

import copy
import io
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.features import VGG19Features, vgg19_cache_path

#: Shallow layers keep the tests fast; the configuration of a VGG loss on relu3_2 and relu4_2
#: is measured in its own test.
LAYERS = {"relu1_2": 1.0, "relu2_1": 1.0}
ISSUE_LAYERS = {"relu3_2": 1.0, "relu4_2": 1.0}


class Net(nn.Module):
    """A small image-to-image network that holds its training criterion, as training code often does."""

    def __init__(self, **criterion: object) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        if criterion:
            self.criterion = ContextualLoss(**criterion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def imagenet(weights_file: Path) -> Path:
    """The torch hub cache holds "the ImageNet weights" (random ones from the conftest)."""
    vgg19_cache_path().parent.mkdir(parents=True)
    shutil.copy(weights_file, vgg19_cache_path())
    return vgg19_cache_path()


@pytest.fixture
def other_weights_file(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "other_vgg19.pth"
    torch.save({key: 1.5 * value for key, value in vgg_state.items()}, path)
    return path


def _round_trip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Through torch.save and torch.load(weights_only=True), as a checkpoint file goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _size(state: dict[str, torch.Tensor]) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def _criterion_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [key for key in state if key.startswith("criterion.")]


def _vgg(model: Net) -> VGG19Features:
    return model.criterion.features


@pytest.fixture(params=["imagenet", "file"])
def reloadable(request: pytest.FixtureRequest, imagenet: Path, weights_file: Path) -> dict[str, object]:
    """Constructor arguments of a loss whose VGG19 weights it can load again by itself."""
    return {"layers": LAYERS, "weights": "imagenet" if request.param == "imagenet" else weights_file}


def test_reloadable_weights_are_left_out_of_the_state_dict(reloadable) -> None:
    model, bare = Net(**reloadable), Net()
    state = model.state_dict()
    assert list(state) == list(bare.state_dict())  # the network's weights only
    assert _vgg(model).weights_source in ("imagenet", "file")


def test_the_issues_criterion_adds_under_two_kib_instead_of_22_mib(imagenet: Path) -> None:
    bare = _size(Net().state_dict())
    assert _size(Net(layers=ISSUE_LAYERS).state_dict()) - bare < 2048  # only the metadata with the fingerprint
    assert _size(Net(layers=ISSUE_LAYERS, weights=None).state_dict()) - bare > 22 * 2**20  # random weights: saved


def test_the_checkpoint_loads_strictly_into_the_network_without_the_criterion(reloadable) -> None:
    model = Net(**reloadable)
    bare = Net()
    bare.load_state_dict(_round_trip(model.state_dict()))  # strict
    for name, value in model.body.state_dict().items():
        torch.testing.assert_close(bare.body.state_dict()[name], value, rtol=0, atol=0)


def test_a_reloaded_model_computes_the_same_loss(reloadable) -> None:
    torch.manual_seed(0)
    model = Net(**reloadable)
    with torch.no_grad():
        model.body[0].weight.add_(1.0)  # trained: differs from a fresh network
    x, y = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    before = model.criterion(model(x), y)
    torch.manual_seed(1)
    fresh = Net(**reloadable)
    fresh.load_state_dict(_round_trip(model.state_dict()))  # strict
    torch.testing.assert_close(fresh.criterion(fresh(x), y), before, rtol=0, atol=0)


def test_a_network_checkpoint_loads_strictly_into_a_model_with_the_criterion(reloadable) -> None:
    bare = Net()
    model = Net(**reloadable)
    vgg_before = copy.deepcopy(_vgg(model).body.state_dict())
    model.load_state_dict(_round_trip(bare.state_dict()))  # written without the loss, e.g. by inference code
    for key, value in _vgg(model).body.state_dict().items():
        torch.testing.assert_close(value, vgg_before[key], rtol=0, atol=0)


@pytest.mark.parametrize("source", ["random", "state_dict"])
def test_weights_the_loss_cannot_reload_are_saved_and_restored(source, vgg_state) -> None:
    weights = None if source == "random" else {k: v.clone() for k, v in vgg_state.items()}
    torch.manual_seed(0)
    model = Net(layers=LAYERS, weights=weights)
    assert _vgg(model).weights_source == source
    state = model.state_dict()
    assert _criterion_keys(state) == [f"criterion.features.body.{key}" for key in _vgg(model).body.state_dict()]
    torch.manual_seed(1)
    other = Net(layers=LAYERS, weights=None)  # other random weights
    other.load_state_dict(_round_trip(state))
    for key, value in _vgg(model).body.state_dict().items():
        torch.testing.assert_close(_vgg(other).body.state_dict()[key], value, rtol=0, atol=0)


def test_checkpoints_written_with_the_weights_still_load(reloadable, vgg_state) -> None:
    # What every checkpoint looked like before: the criterion's VGG weights under their keys, no metadata.
    model = Net(**reloadable)
    legacy = dict(model.state_dict())
    legacy.update({f"criterion.features.body.{k}": v.clone() for k, v in _vgg(model).body.state_dict().items()})
    fresh = Net(**reloadable)
    fresh.load_state_dict(_round_trip(legacy))  # strict
    for key, value in _vgg(model).body.state_dict().items():
        torch.testing.assert_close(_vgg(fresh).body.state_dict()[key], value, rtol=0, atol=0)
    assert _criterion_keys(fresh.state_dict()) == []  # the same weights: left out again


def test_a_legacy_checkpoint_with_other_weights_wins_and_is_then_saved(reloadable) -> None:
    # An old checkpoint whose VGG weights differ from the cache's: loaded as before, and from then on
    # the extractor holds weights it cannot reload, so its state dict keeps them.
    model = Net(**reloadable)
    legacy = dict(model.state_dict())
    body = _vgg(model).body.state_dict()
    legacy.update({f"criterion.features.body.{k}": torch.randn_like(v) for k, v in body.items()})
    model.load_state_dict(legacy)
    torch.testing.assert_close(_vgg(model).body[0].weight, legacy["criterion.features.body.0.weight"])
    assert len(_criterion_keys(model.state_dict())) == len(body)


def test_weights_changed_after_construction_are_saved(reloadable) -> None:
    model = Net(**reloadable)
    with torch.no_grad():
        _vgg(model).body[0].weight.mul_(1.5)  # e.g. fine-tuned on purpose
    state = model.state_dict()
    torch.testing.assert_close(state["criterion.features.body.0.weight"], _vgg(model).body[0].weight)


def test_loading_into_a_loss_with_other_weights_raises(reloadable, other_weights_file: Path) -> None:
    state = _round_trip(Net(**reloadable).state_dict())
    for weights in (other_weights_file, None):
        target = Net(layers=LAYERS, weights=weights)
        for strict in (True, False):
            with pytest.raises(RuntimeError, match=r"VGG19 weights from .* left out of it, and criterion\.features"):
                target.load_state_dict(state, strict=strict)
    with pytest.raises(RuntimeError, match="construct the loss with the same weights="):
        Net(layers=LAYERS, weights=other_weights_file).load_state_dict(state)


def test_without_metadata_only_a_loss_that_reloads_its_weights_accepts_the_gap(reloadable) -> None:
    # A state dict that lost its metadata (e.g. rebuilt as a plain dict) carries no fingerprint.
    state = dict(Net(**reloadable).state_dict())
    Net(**reloadable).load_state_dict(state)  # strict: the loss reloads its own weights
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"criterion\.features\.body\.0\.weight"):
        Net(layers=LAYERS, weights=None).load_state_dict(state)  # random weights cannot be recovered


def test_a_half_precision_extractor_still_matches_its_float32_checkpoint(reloadable) -> None:
    model = Net(**reloadable)
    _vgg(model).half()
    state = model.state_dict()
    assert _criterion_keys(state) == []  # the same weights, rounded: still reloadable
    Net(**reloadable).load_state_dict(_round_trip(state))


def test_assign_loading_keeps_the_extractor_weights(reloadable) -> None:
    model, source = Net(**reloadable), Net(**reloadable)
    expected = _vgg(model).body[0].weight.clone()
    model.load_state_dict(_round_trip(source.state_dict()), assign=True)
    assert torch.equal(_vgg(model).body[0].weight, expected) and not _vgg(model).body[0].weight.requires_grad
    assert torch.equal(model.body[0].weight, source.body[0].weight)


def test_a_shared_extractor_is_left_out_under_every_loss(imagenet: Path) -> None:
    vgg = VGG19Features(["relu1_2", "relu2_2", "relu3_2"], pooling="avg")
    holder = nn.ModuleDict(
        {
            "style": ContextualLoss(layers={"relu3_2": 1.0}, features=vgg),
            "cobi": ContextualBilateralLoss.zoom_recipe(4, features=vgg),
        }
    )
    assert list(holder.state_dict()) == []
    holder.load_state_dict(_round_trip(holder.state_dict()))


def test_deep_copies_and_pickled_modules_keep_the_behaviour(reloadable) -> None:
    model = Net(**reloadable)
    assert _criterion_keys(copy.deepcopy(model).state_dict()) == []
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the whole module, hooks included
    buffer.seek(0)
    assert _criterion_keys(torch.load(buffer, weights_only=False).state_dict()) == []


def test_repr_names_the_weights_source(imagenet: Path) -> None:
    assert "weights='imagenet'" in repr(VGG19Features("relu1_1"))
    assert "weights='random'" in repr(VGG19Features("relu1_1", weights=None))
