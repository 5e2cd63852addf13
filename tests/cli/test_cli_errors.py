"""Errors a person can act on: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

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
        (["--out", "scores.txt"], "--out must end in .csv or .json"),
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


# --- Output files and folders: one line, exit status 2, nothing overwritten without --force -------


def test_demo_out_is_a_file(run_cli, tmp_path: Path) -> None:
    taken = tmp_path / "exists.png"
    taken.write_bytes(b"not a folder")
    first = run_cli("demo", "--fast", "--no-figures", "--out", str(taken))
    _one_line_error(first, f"--out: {taken} is a file")
    below = run_cli("demo", "--fast", "--out", str(taken / "sub"))
    _one_line_error(below, f"cannot create the folder {taken / 'sub'}", "is a file")
    assert first.out == below.out == ""  # checked before any work: no tables above the error
    assert taken.read_bytes() == b"not a folder"


def test_demo_refuses_to_overwrite_an_earlier_run_unless_forced(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert run_cli("demo", "--fast", "--no-figures", "--out", str(out)).code == 0
    before = (out / "texture.png").stat().st_mtime_ns
    again = run_cli("demo", "--fast", "--no-figures", "--out", str(out))
    assert again.code == 2 and "already holds texture.png" in again.err and "add --force" in again.err
    assert again.out == ""  # refused before any work
    assert (out / "texture.png").stat().st_mtime_ns == before
    assert run_cli("demo", "--fast", "--no-figures", "--out", str(out), "--force").code == 0


def test_demo_says_on_stderr_when_figures_are_skipped(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    result = run_cli("demo", "--fast", "--out", str(tmp_path / "demo"))
    assert result.code == 0, result.err
    assert "figures skipped" in result.err and "figures skipped" not in result.out


def test_download_weights_into_a_path_below_a_file(run_cli, tmp_path: Path) -> None:
    taken = tmp_path / "exists.png"
    taken.write_bytes(b"x")
    for flag in ("--out", "--dest"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # --dest: the deprecated spelling
            result = run_cli("download-weights", flag, str(taken / "sub"))
        assert result.code == 2 and "Traceback" not in result.err
        assert result.err.strip().splitlines()[-1] == (
            f"contextual-loss: error: --out: cannot create the folder {taken / 'sub'}: {taken} is a file, not a folder"
        )


def test_explain_refuses_to_overwrite_unless_forced(run_cli, images, tmp_path: Path) -> None:
    out = tmp_path / "match.png"
    out.write_bytes(b"precious")
    argv = ["explain", str(images.shifted), str(images.reference), "--out", str(out)]
    _one_line_error(run_cli(*argv), f"--out: {out} already exists; add --force to overwrite it")
    assert out.read_bytes() == b"precious"
    assert run_cli(*argv, "--force").code == 0 and out.read_bytes() != b"precious"


@pytest.mark.subprocess
def test_a_closed_pipe_ends_quietly(images) -> None:
    """``contextual-loss compare ... | head -1``: no BrokenPipeError traceback, the status of SIGPIPE."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "contextual_loss", "compare", str(images.shifted), str(images.reference)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line is written
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == "", err


# --- --version and --help: no torch, no torchvision ------------------------------------------------

#: A torchvision that fails to import as a mismatched install does.
BROKEN_TORCHVISION = 'raise RuntimeError("operator torchvision::nms does not exist")\n'


def _with_broken_torchvision(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "broken" / "torchvision"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(BROKEN_TORCHVISION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO / "src")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _main_then_modules(argv: list[str]) -> str:
    return (
        "import sys\nfrom contextual_loss.cli import main\n"
        f"try:\n    status = main({argv!r})\nexcept SystemExit as exit_:\n    status = exit_.code\n"
        "print('STATUS', status, 'torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )


@pytest.mark.subprocess
@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_import_neither_torch_nor_torchvision(tmp_path: Path, argv: list[str]) -> None:
    done = _with_broken_torchvision(tmp_path, _main_then_modules(argv))
    assert done.stdout.splitlines()[-1] == "STATUS 0 False False", done.stderr
    assert ("contextual-loss 0." in done.stdout) if argv == ["--version"] else ("download-weights" in done.stdout)
    assert "Traceback" not in done.stderr


@pytest.mark.subprocess
def test_commands_without_vgg_work_where_torchvision_is_broken(tmp_path: Path, images) -> None:
    argv = ["compare", str(images.shifted), str(images.reference)]
    done = _with_broken_torchvision(tmp_path, _main_then_modules(argv) + _main_then_modules(["compare", "--help"]))
    assert [line for line in done.stdout.splitlines() if line.startswith("STATUS")] == [
        "STATUS 0 True False",
        "STATUS 0 True False",
    ], done.stderr
    vgg = _with_broken_torchvision(
        tmp_path, _main_then_modules([*argv, "--vgg-layers", "relu1_1", "--weights", "random"])
    )
    assert vgg.stdout.splitlines()[-1].startswith("STATUS 2"), vgg.stderr
    assert vgg.stderr.strip().splitlines() == [
        "contextual-loss: error: VGG19 features: VGG19 features need torchvision, which cannot be imported "
        "(RuntimeError: operator torchvision::nms does not exist); install the torchvision release that matches "
        f"torch {torch.__version__.split('+')[0]}"
    ]
