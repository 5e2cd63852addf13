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
    # The command line's defaults for patches: the l2 distance; 576 positions, all compared.
    expected = explain_match(
        extract_patches(load_image(images.shifted), 5), extract_patches(load_image(images.reference), 5), loss_type="l2"
    )
    assert summary["similarity"] == pytest.approx(expected.cx, rel=1e-6)
    assert summary["one_to_one_fraction"] == pytest.approx(expected.unique_fraction)
    # The prediction is the texture 2 px further right: most targets find their match 2 px left.
    assert summary["median_displacement"] == pytest.approx(2.0)
    assert summary["loss"] == "CX" and summary["positions"] == 576
    assert summary["settings"]["loss_type"] == "l2" and summary["duplicates"]["cx_cap"] == 1.0


@pytest.mark.parametrize("extra", [[], ["--max-points", "150"], ["--pixels", "--max-points", "150", "--seed", "2"]])
def test_explain_and_compare_agree_on_the_same_pair(run_cli, images, tmp_path: Path, extra: list[str]) -> None:
    pair = [str(images.shifted), str(images.reference), *extra]
    compared = json.loads(run_cli("compare", *pair, "--json").out)
    for cobi, key in (([], "cx_loss"), (["--cobi"], "cobi_loss")):
        result = run_cli("explain", *pair, "--out", str(tmp_path / f"e{len(cobi)}.png"), "--json", *cobi)
        assert result.code == 0, result.err
        summary = json.loads(result.out)
        assert summary["loss_value"] == pytest.approx(compared[key], rel=1e-5, abs=1e-7)
        assert summary["positions"] == compared["positions"]["target"]


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
