"""Shared fixtures of the feature tests: an isolated torch hub cache, no network, random VGG19 weights on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

#: The random checkpoint covers torchvision's VGG19 ``features`` up to conv4_2 (index 21): enough for
#: every layer the tests and recipes use, at 26 MB instead of the 80 MB of the whole stack.
CHECKPOINT_CONFIG = cfgs["E"][:13]


class NetworkUsedError(AssertionError):
    """Raised by the patched downloader: the tests must never reach the network."""


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TORCH_HOME at an empty folder and make any download attempt fail loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise NetworkUsedError(f"a test tried to download {url} to {dst}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path / "torch_home"


def random_vgg19_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG19 state dict with random weights (features prefix + a tiny classifier stand-in)."""
    torch.manual_seed(seed)
    features = make_layers(CHECKPOINT_CONFIG)  # torchvision's own builder, so the key names are its own
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # classifier keys are optional and must be ignored
    return state


@pytest.fixture(scope="session")
def vgg_state() -> dict[str, torch.Tensor]:
    return random_vgg19_state_dict()


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory, vgg_state: dict[str, torch.Tensor]) -> Path:
    """Random weights saved with torch.save, loaded in the tests through the real file code path."""
    path = tmp_path_factory.mktemp("weights") / "vgg19_random.pth"
    torch.save(vgg_state, path)
    return path
