"""``contextual-loss compare``: values agree with the library, folders, CSV/JSON, options."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from contextual_loss.demo.images import texture
from contextual_loss.features import extract_patches
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_similarity
from contextual_loss.io import load_image, save_image


def _json(result) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_single_pair_matches_the_library(run_cli, images) -> None:
    data = _json(run_cli("compare", str(images.shifted), str(images.reference), "--json"))
    x = extract_patches(load_image(images.shifted), 5)
    y = extract_patches(load_image(images.reference), 5)
    # Reference values: the library's functions on the same files with the CLI's defaults.
    assert data["cx"] == pytest.approx(float(contextual_similarity(x, y)), rel=1e-6)
    assert data["cx_loss"] == pytest.approx(float(contextual_loss(x, y)), rel=1e-5, abs=1e-7)
    assert data["cobi_loss"] == pytest.approx(float(contextual_bilateral_loss(x, y, 0.1)), rel=1e-6)
    assert data["settings"]["features"].startswith("5x5 RGB patches")
    assert data["prediction_size"] == "24x24"


def test_text_output_and_identical_images(run_cli, images) -> None:
    result = run_cli("compare", str(images.reference), str(images.reference))
    assert result.code == 0
    values = {name: float(v) for name, v in re.findall(r"^(CX|CX loss|CoBi loss)\s+([-\d.]+)", result.out, re.M)}
    assert values == {"CX": 1.0, "CX loss": 0.0, "CoBi loss": 0.0}
    assert "reference.png (24x24)" in result.out


def test_loss_options_reach_the_functions(run_cli, images) -> None:
    argv = ["compare", str(images.shifted), str(images.unrelated), "--json", "--patch-size", "3"]
    argv += ["--band-width", "0.2", "--loss-type", "l1", "--weight-sp", "0.3", "--cobi-form", "released"]
    data = _json(run_cli(*argv))
    x = extract_patches(load_image(images.shifted), 3)
    y = extract_patches(load_image(images.unrelated), 3)
    assert data["cx"] == pytest.approx(float(contextual_similarity(x, y, 0.2, "l1")), rel=1e-6)
    cobi = contextual_bilateral_loss(x, y, 0.3, 0.2, "l1", form="released")
    assert data["cobi_loss"] == pytest.approx(float(cobi), rel=1e-6)


def test_pixels_and_different_sizes(run_cli, tmp_path: Path) -> None:
    wide, square = tmp_path / "wide.png", tmp_path / "square.png"
    save_image(texture(12, 20, seed=2), wide)
    save_image(texture(16, 16, seed=3), square)
    data = _json(run_cli("compare", str(wide), str(square), "--pixels", "--json"))
    expected = contextual_similarity(load_image(wide), load_image(square))
    assert data["cx"] == pytest.approx(float(expected), rel=1e-6)
    assert (data["prediction_size"], data["target_size"]) == ("12x20", "16x16")
    assert data["settings"]["features"] == "pixels (RGB values)"


def test_max_side_shrinks_keeping_aspect(run_cli, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    save_image(texture(40, 60, seed=4), big)
    data = _json(run_cli("compare", str(big), str(big), "--max-side", "30", "--json"))
    assert data["prediction_size"] == "20x30"
    assert data["cx"] == pytest.approx(1.0, abs=1e-6)


def test_max_points_sampling_is_seeded(run_cli, images) -> None:
    argv = ["compare", str(images.shifted), str(images.unrelated), "--max-points", "100", "--json"]
    first, again = _json(run_cli(*argv, "--seed", "3")), _json(run_cli(*argv, "--seed", "3"))
    other = _json(run_cli(*argv, "--seed", "4"))
    full = _json(run_cli("compare", str(images.shifted), str(images.unrelated), "--json"))
    assert first["cx"] == again["cx"]
    assert first["cx"] != other["cx"]
    assert first["cx"] != full["cx"]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    for k in range(3):
        save_image(texture(16, 16, seed=10 + k), pred / f"img{k}.png")
        save_image(texture(16, 16, seed=20 + k), target / f"img{k}.png")
    save_image(texture(16, 16, seed=30), pred / "only_pred.png")
    (pred / "notes.txt").write_text("not an image")
    return pred, target


def test_folders_to_csv(run_cli, folders, tmp_path: Path) -> None:
    pred, target = folders
    out = tmp_path / "results" / "scores.csv"
    result = run_cli("compare", str(pred), str(target), "--output", str(out), "--no-progress")
    assert result.code == 0, result.err
    assert "1 prediction image(s) without a partner" in result.err and "only_pred.png" in result.err
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["prediction"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert [Path(r["target"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    x = extract_patches(load_image(pred / "img1.png"), 5)
    y = extract_patches(load_image(target / "img1.png"), 5)
    assert float(rows[1]["cx"]) == pytest.approx(float(contextual_similarity(x, y)), rel=1e-6)
    assert "mean" in result.out and f"wrote 3 result(s) to {out}" in result.out


def test_folders_to_json_pairs_by_stem(run_cli, folders, tmp_path: Path) -> None:
    pred, target = folders
    (target / "img2.png").rename(target / "img2.jpg")  # paired by name without the ending
    out = tmp_path / "scores.json"
    data = _json(run_cli("compare", str(pred), str(target), "--json", "--output", str(out)))
    assert len(data["results"]) == 3
    assert Path(data["results"][2]["target"]).name == "img2.jpg"
    mean = sum(r["cx_loss"] for r in data["results"]) / 3
    assert data["mean"]["cx_loss"] == pytest.approx(mean)
    assert json.loads(out.read_text())["results"] == data["results"]
