"""Errors a person can act on: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contextual_loss.demo.images import texture
from contextual_loss.io import save_image

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.err


def test_missing_file(run_cli, images, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    _one_line_error(run_cli("compare", str(missing), str(images.reference)), "PRED", "nope.png")
    _one_line_error(run_cli("compare", str(images.reference), str(missing)), "TARGET", "nope.png")


def test_unreadable_image(run_cli, images, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _one_line_error(run_cli("compare", str(broken), str(images.reference)), "cannot read", "broken.png")


def test_unreadable_image_inside_a_folder(run_cli, tmp_path: Path) -> None:
    pred, target = tmp_path / "p", tmp_path / "t"
    pred.mkdir()
    target.mkdir()
    save_image(texture(12, 12), pred / "a.png")
    (target / "a.png").write_text("text, not pixels")
    _one_line_error(run_cli("compare", str(pred), str(target), "--no-progress"), "cannot read", "a.png")


def test_file_and_folder_mixed(run_cli, images, tmp_path: Path) -> None:
    _one_line_error(run_cli("compare", str(tmp_path), str(images.reference)), "two image files or two folders")


def test_folders_without_common_names(run_cli, tmp_path: Path) -> None:
    pred, target = tmp_path / "p", tmp_path / "t"
    pred.mkdir()
    target.mkdir()
    save_image(texture(12, 12), pred / "a.png")
    save_image(texture(12, 12), target / "b.png")
    result = run_cli("compare", str(pred), str(target))
    assert result.code == 2
    assert result.err.strip().splitlines()[-1].endswith(f"no images with the same name in {pred} and {target}")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--band-width", "0"], "--band-width: expected a value > 0"),
        (["--band-width", "nan"], "--band-width: expected a finite number"),
        (["--patch-size", "two"], "--patch-size: expected an integer"),
        (["--loss-type", "l3"], "invalid choice: 'l3'"),
        (["--pixels", "--patch-size", "3"], "not allowed with argument"),
        (["--output", "scores.txt"], "--output must end in .csv or .json"),
        (["--weights", "w.pth"], "--weights and --vgg-pooling only apply to VGG19"),
        (["--vgg-pooling", "avg"], "only apply to VGG19"),
        (["--device", "cuda:7"] if not sys.modules["torch"].cuda.is_available() else ["--device", "bogus"], "--device"),
    ],
)
def test_bad_options(run_cli, images, argv: list[str], fragment: str) -> None:
    _one_line_error(run_cli("compare", str(images.shifted), str(images.reference), *argv), fragment)


def test_bad_vgg_layer_syntax(run_cli, images) -> None:
    result = run_cli("compare", str(images.shifted), str(images.reference), "--vgg-layers", "conv3_2:heavy")
    _one_line_error(result, "NAME:WEIGHT", "conv3_2:heavy")


def test_patch_larger_than_the_image(run_cli, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.png"
    save_image(texture(2, 2), tiny)
    _one_line_error(run_cli("compare", str(tiny), str(tiny), "--patch-size", "7"), "tiny.png vs", "patch")


def test_no_command_prints_help(run_cli) -> None:
    result = run_cli()
    assert result.code == 2
    assert "compare" in result.err and "explain" in result.err and "demo" in result.err


@pytest.mark.subprocess
def test_entry_point_reports_without_traceback_and_without_matplotlib(tmp_path: Path) -> None:
    """``python -m contextual_loss`` in a fresh process: exit status 2, one line on stderr, and
    neither the package's core modules nor the command line import matplotlib (the viz extra)."""
    code = (
        "import runpy, sys\n"
        "import contextual_loss.demo, contextual_loss.explain, contextual_loss.io\n"
        "sys.argv = ['contextual-loss', 'compare', sys.argv[1], sys.argv[2]]\n"
        "try:\n    runpy.run_module('contextual_loss', run_name='__main__')\n"
        "except SystemExit as exit_:\n    print(exit_.code, 'matplotlib' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.png"), str(tmp_path / "b.png")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert process.stdout.split() == ["2", "False"], process.stderr
    assert process.stderr.strip() == f"contextual-loss: error: PRED: no such file or folder: {tmp_path / 'a.png'}"
