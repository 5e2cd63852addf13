"""``contextual-loss explain``: writes the figure and a summary that matches the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from contextual_loss.explain import explain_match
from contextual_loss.features import extract_patches
from contextual_loss.io import load_image


def test_writes_a_png_and_summary(run_cli, images, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "match.png"
    result = run_cli("explain", str(images.shifted), str(images.reference), "--out", str(out), "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.width > 300
    expected = explain_match(
        extract_patches(load_image(images.shifted), 5), extract_patches(load_image(images.reference), 5)
    )
    assert summary["similarity"] == pytest.approx(expected.cx, rel=1e-6)
    assert summary["one_to_one_fraction"] == pytest.approx(expected.unique_fraction)
    # The prediction is the texture 2 px further right: most targets find their match 2 px left.
    assert summary["median_displacement"] == pytest.approx(2.0)
    assert summary["loss"] == "CX"


def test_cobi_matches_and_text_summary(run_cli, images, tmp_path: Path) -> None:
    out = tmp_path / "cobi.png"
    result = run_cli("explain", str(images.shifted), str(images.reference), "--out", str(out), "--cobi", "--pixels")
    assert result.code == 0, result.err
    assert result.out.startswith("CoBi = ") and f"figure written to {out}" in result.out
    assert out.stat().st_size > 1000


def test_unknown_output_format(run_cli, images, tmp_path: Path) -> None:
    result = run_cli("explain", str(images.shifted), str(images.reference), "--out", str(tmp_path / "x.gif"))
    assert result.code == 2 and "--out must end in .png" in result.err


def test_out_is_required(run_cli, images) -> None:
    result = run_cli("explain", str(images.shifted), str(images.reference))
    assert result.code == 2 and "--out" in result.err


def test_missing_matplotlib_names_the_extra(run_cli, images, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    result = run_cli("explain", str(images.shifted), str(images.reference), "--out", str(tmp_path / "x.png"))
    assert result.code == 2
    assert 'pip install "contextual-loss[viz]"' in result.err
    assert not (tmp_path / "x.png").exists()
