"""Fixtures shared by every test: no network, an isolated torch hub cache, a cpu/cuda ``device``.

Markers (registered in ``pyproject.toml``): ``subprocess`` for tests that start a Python process,
``ddp`` for the data-parallel tests (two processes). CI runs everything; locally
``pytest -m "not subprocess"`` skips both kinds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


class NetworkRefusedError(OSError):
    """What a download gets during the tests: an OSError, as a machine without network gives."""


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TORCH_HOME at an empty folder and refuse every download; returns that TORCH_HOME.

    The refusal is an ``OSError``, so the library reports it as it would report a machine without
    network (``WeightsNotFoundError`` naming the cache); a test that downloads by mistake fails.
    """
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def refuse(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise NetworkRefusedError(f"network is unreachable (a test tried to download {url} to {dst})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return home


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Run a test on the CPU and on CUDA (skipped, with the reason, where CUDA is absent)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: torch.cuda.is_available() is False here")
    return torch.device(request.param)


#: Tests in folders whose files other helpers own, marked here: file -> (test name prefix, markers).
_MARKED_HERE = {
    "tests/experiments/test_card_ddp.py": ("test_", ("ddp", "subprocess")),
    "tests/features/test_vgg_features.py": ("test_importing_the_package_does_not_import_torchvision", ("subprocess",)),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the ``subprocess``/``ddp`` markers to the tests listed in ``_MARKED_HERE``."""
    root = Path(str(config.rootpath))
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix() if Path(str(item.path)).is_relative_to(root) else ""
        prefix, markers = _MARKED_HERE.get(where, ("", ()))
        if markers and item.name.startswith(prefix):
            for marker in markers:
                item.add_marker(marker)
