"""``contextual-loss download-weights`` with a patched downloader: never touches the network."""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import pytest
import torch

from contextual_loss.cli import COMMANDS, build_parser, main
from contextual_loss.features import VGG19Features, vgg19_cache_path


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str | None]]:
    """An empty torch hub cache and a downloader that writes a small file instead of fetching 548 MB."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls: list[tuple[str, str, str | None]] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.ones(64)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    return calls


def test_command_is_registered() -> None:
    assert "download_weights" in COMMANDS
    assert "download-weights" in build_parser().format_help()


def test_downloads_into_the_hub_cache_and_says_where(fake_hub, capsys) -> None:
    assert main(["download-weights", "--no-progress"]) == 0
    target = vgg19_cache_path()
    assert target.is_file()
    assert fake_hub == [("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", str(target), "dcbb9e9d")]
    out = capsys.readouterr().out
    assert f"saved at {target}" in out and 'weights="imagenet"' in out
    assert main(["download-weights", "--no-progress"]) == 0  # second run: found, not downloaded again
    assert len(fake_hub) == 1 and f"already present at {target}" in capsys.readouterr().out


def test_out_folder(fake_hub, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "weights"
    assert main(["download-weights", "--out", str(dest), "--no-progress"]) == 0
    assert (dest / "vgg19-dcbb9e9d.pth").is_file() and not vgg19_cache_path().exists()
    out = capsys.readouterr().out
    assert f'weights="{dest / "vgg19-dcbb9e9d.pth"}"' in out and str(vgg19_cache_path()) in out


def test_the_old_flags_still_work_with_a_deprecation_note(fake_hub, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "weights"
    with pytest.warns(DeprecationWarning) as caught:
        assert main(["download-weights", "--dest", str(dest), "--quiet"]) == 0
    assert sorted(str(w.message).split()[0] for w in caught) == ["--dest", "--quiet"]
    assert (dest / "vgg19-dcbb9e9d.pth").is_file()
    assert fake_hub[0][1] == str(dest / "vgg19-dcbb9e9d.pth")
    err = capsys.readouterr().err
    assert "--dest is deprecated" in err and "use --out" in err and "use --no-progress" in err


def test_out_must_be_a_folder(fake_hub, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["download-weights", "--out", str(a_file)]) == 2
    assert capsys.readouterr().err == f"contextual-loss: error: --out: {a_file} is a file, expected a folder\n"
    assert not fake_hub


def test_offline_machine_gets_an_actionable_error(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        # What urllib raises without DNS (the message seen on our offline build machine).
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["download-weights", "--no-progress"]) == 2  # a problem the user fixes, like every other command's
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("contextual-loss: error: ") and captured.err.count("\n") == 1
    assert "Name or service not known" in captured.err and str(vgg19_cache_path()) in captured.err
    assert "weights=PATH" in captured.err


def test_a_file_that_fails_its_checksum_is_one_line_and_not_kept(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def corrupted(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        # What torch.hub raises when the downloaded bytes do not match (it removes its temporary file).
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0123abcd...")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", corrupted)
    assert main(["download-weights", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "SHA-256 check" in captured.err and 'expected "dcbb9e9d"' in captured.err
    assert not vgg19_cache_path().exists()


def test_the_downloaded_file_is_found_by_weights_imagenet(fake_hub) -> None:
    assert main(["download-weights", "--no-progress"]) == 0
    vgg = VGG19Features("relu1_1", weights="imagenet", download=False)
    assert vgg.body[0].weight.abs().sum() == 0 and bool((vgg.body[0].bias == 1).all())  # the fake checkpoint
