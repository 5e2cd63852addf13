"""Images on disk and a runner for the command line (in-process, through ``main``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from contextual_loss.cli import main
from contextual_loss.demo.images import texture
from contextual_loss.io import save_image


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``contextual-loss ARGV`` in-process; argparse exits are turned into return codes."""

    def run(*argv: str) -> Result:
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@dataclass
class Images:
    reference: Path
    shifted: Path
    unrelated: Path


@pytest.fixture
def images(tmp_path: Path) -> Images:
    """A 24x24 texture, a copy shifted by 2 px and an unrelated texture, as PNG files."""
    canvas = texture(24, 30, seed=0)
    paths = Images(tmp_path / "reference.png", tmp_path / "shifted.png", tmp_path / "unrelated.png")
    save_image(canvas[..., :24], paths.reference)
    save_image(canvas[..., 2:26], paths.shifted)
    save_image(texture(24, 24, seed=1), paths.unrelated)
    return paths
