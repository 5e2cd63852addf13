"""Where VGG19 weights come from: files, the torch hub cache, and the offline error. No test touches the network."""

from __future__ import annotations

import shutil
import socket
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import VGG19_Weights

from contextual_loss.features import VGG19Features, WeightsNotFoundError, download_vgg19_weights, vgg19_cache_path
from contextual_loss.features.weights import load_vgg19_state_dict

OFFLINE_ERROR = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
"""What urllib raises on a machine without DNS (seen on our build machine: Errno -2/-3 inside a URLError)."""


def _first_conv(vgg: VGG19Features) -> torch.Tensor:
    return vgg.body[0].weight


def test_cache_path_follows_torch_home(_offline_hub: Path) -> None:
    # torchvision's file name for VGG19_Weights.IMAGENET1K_V1, under $TORCH_HOME/hub/checkpoints.
    assert vgg19_cache_path() == _offline_hub / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert vgg19_cache_path().name == Path(VGG19_Weights.IMAGENET1K_V1.url).name


@pytest.mark.parametrize("as_type", [str, Path])
def test_weights_from_a_file_are_loaded(weights_file: Path, vgg_state, as_type) -> None:
    vgg = VGG19Features(["relu3_2"], weights=as_type(weights_file))
    for key, value in vgg.body.state_dict().items():
        torch.testing.assert_close(value, vgg_state[f"features.{key}"], rtol=0, atol=0)
    assert _first_conv(vgg).dtype == torch.float32 and not _first_conv(vgg).requires_grad


def test_loaded_weights_are_a_private_copy(vgg_state) -> None:
    state = {k: v.clone() for k, v in vgg_state.items()}
    vgg = VGG19Features("relu1_1", weights=state)
    state["features.0.weight"].zero_()
    assert _first_conv(vgg).abs().sum() > 0


def test_a_full_torchvision_state_dict_is_accepted(vgg_state) -> None:
    # Every key of torchvision.models.vgg19().state_dict(), built on the meta device; the entries the
    # extractor needs are replaced by real tensors, the classifier stays on meta and is never read.
    with torch.device("meta"):
        full = torchvision.models.vgg19().state_dict()
    full.update({k: v for k, v in vgg_state.items() if k.startswith("features.")})
    vgg = VGG19Features("relu2_2", weights=full)
    torch.testing.assert_close(_first_conv(vgg), vgg_state["features.0.weight"])


def test_classifier_keys_are_optional(vgg_state) -> None:
    features_only = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
    assert set(load_vgg19_state_dict(features_only)) == {k.removeprefix("features.") for k in features_only}


def test_imagenet_weights_are_read_from_the_hub_cache(weights_file: Path) -> None:
    # The conftest's downloader raises if called: this must be served from the cache alone.
    cached = vgg19_cache_path()
    cached.parent.mkdir(parents=True)
    shutil.copy(weights_file, cached)
    from_cache = VGG19Features("relu1_2", weights="imagenet")
    from_enum = VGG19Features("relu1_2", weights=VGG19_Weights.IMAGENET1K_V1)
    from_file = VGG19Features("relu1_2", weights=weights_file)
    torch.testing.assert_close(_first_conv(from_cache), _first_conv(from_file), rtol=0, atol=0)
    torch.testing.assert_close(_first_conv(from_enum), _first_conv(from_file), rtol=0, atol=0)


def test_construction_prints_and_warns_nothing(weights_file: Path, capfd) -> None:
    vgg19_cache_path().parent.mkdir(parents=True)
    shutil.copy(weights_file, vgg19_cache_path())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VGG19Features(["relu1_2"], weights="imagenet")
        VGG19Features(["relu1_2"], weights=None)
    assert caught == []
    assert capfd.readouterr() == ("", "")


def test_missing_imagenet_weights_without_download_say_where_and_how() -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        VGG19Features("relu1_1", weights="imagenet", download=False)
    message = str(info.value)
    assert str(vgg19_cache_path()) in message
    assert "contextual-loss download-weights" in message and "weights=PATH" in message
    assert isinstance(info.value, FileNotFoundError)


def test_offline_download_failure_says_where_and_how(monkeypatch) -> None:
    calls = []

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        raise OFFLINE_ERROR

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsNotFoundError) as info:
        VGG19Features("relu1_1")  # weights="imagenet" is the default
    message = str(info.value)
    assert str(vgg19_cache_path()) in message and "Temporary failure in name resolution" in message
    assert "contextual-loss download-weights" in message and "weights=PATH" in message
    assert info.value.__cause__ is OFFLINE_ERROR
    assert calls == [(VGG19_Weights.IMAGENET1K_V1.url, str(vgg19_cache_path()), "dcbb9e9d")]
    assert not vgg19_cache_path().exists()


def test_download_writes_into_the_cache_once(monkeypatch, weights_file: Path) -> None:
    calls = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(dst)
        shutil.copy(weights_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert download_vgg19_weights() == vgg19_cache_path()
    assert download_vgg19_weights() == vgg19_cache_path()  # already there: no second download
    assert calls == [str(vgg19_cache_path())]
    VGG19Features("relu1_1")  # now served from the cache


def test_missing_file_raises_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(WeightsNotFoundError, match="does not exist") as info:
        VGG19Features("relu1_1", weights=missing)
    assert str(missing) in str(info.value)


def test_unreadable_or_foreign_files_raise(tmp_path: Path, vgg_state) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read the VGG19 state dict"):
        VGG19Features("relu1_1", weights=garbage)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ValueError, match="holds a list, expected a state dict"):
        VGG19Features("relu1_1", weights=a_list)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": vgg_state}, wrapped)  # a training checkpoint, not a torchvision state dict
    with pytest.raises(ValueError, match=r"not a torchvision VGG19 state dict: unexpected keys 'state_dict'"):
        VGG19Features("relu1_1", weights=wrapped)


def test_incomplete_or_mismatched_state_dicts_raise(vgg_state) -> None:
    shallow = {k: v for k, v in vgg_state.items() if k in ("features.0.weight", "features.0.bias")}
    with pytest.raises(ValueError, match=r"lacks \['features.2.weight', 'features.2.bias'\].*'relu1_2'"):
        VGG19Features(["relu1_1", "relu1_2"], weights=shallow)
    VGG19Features("relu1_1", weights=shallow)  # enough for the first layer
    wrong = dict(vgg_state, **{"features.2.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(ValueError, match=r"features.2.weight is \(64, 64, 1, 1\), expected a tensor of shape"):
        VGG19Features("relu1_2", weights=wrong)
    with pytest.raises(ValueError, match=r"unexpected keys 'module.features.0.weight'"):
        VGG19Features("relu1_1", weights={f"module.{k}": v for k, v in vgg_state.items()})


@pytest.mark.parametrize("bad", [123, 1.5, ["imagenet"], True])
def test_bad_weights_arguments_raise(bad) -> None:
    with pytest.raises(TypeError, match="weights must be 'imagenet', a path"):
        VGG19Features("relu1_1", weights=bad)
