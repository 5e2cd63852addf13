"""``contextual-loss compare``: values agree with the library, the report says what was compared, folders, CSV/JSON."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from contextual_loss.demo.images import texture
from contextual_loss.engine import auto_engine
from contextual_loss.explain import target_duplicates
from contextual_loss.features import extract_patches
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_similarity
from contextual_loss.io import load_image, save_image
from contextual_loss.options import feature_defaults

#: The command line's defaults for pixels and patches (l2 distance and its CoBi spatial weight).
PIXELS = feature_defaults("pixels")


def _json(result) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_single_pair_matches_the_library(run_cli, images) -> None:
    data = _json(run_cli("compare", str(images.shifted), str(images.reference), "--json"))
    x = extract_patches(load_image(images.shifted), 5)
    y = extract_patches(load_image(images.reference), 5)
    # Reference values: the library's functions on the same files with the CLI's defaults for patches
    # (24 x 24 = 576 positions, fewer than --max-points: all are compared).
    assert data["cx"] == pytest.approx(float(contextual_similarity(x, y, 0.5, PIXELS.loss_type)), rel=1e-6)
    assert data["cx_loss"] == pytest.approx(float(contextual_loss(x, y, 0.5, PIXELS.loss_type)), rel=1e-5, abs=1e-7)
    cobi = contextual_bilateral_loss(x, y, PIXELS.weight_sp, 0.5, PIXELS.loss_type)
    assert data["cobi_loss"] == pytest.approx(float(cobi), rel=1e-6)
    settings = data["settings"]
    assert settings["features"].startswith("5x5 RGB patches")
    assert (settings["loss_type"], settings["weight_sp"]) == (PIXELS.loss_type, PIXELS.weight_sp)
    assert settings["defaults_from_features"] == ["loss_type", "weight_sp"]
    assert data["prediction_size"] == data["prediction_stored_size"] == "24x24"
    assert data["positions"] == {"prediction": 576, "target": 576} and data["entries"] == 2 * 576 * 576
    assert data["duplicates"] == {"features": 576, "duplicated": 0, "groups": 576, "cx_cap": 1.0}


def test_text_output_and_identical_images(run_cli, images) -> None:
    result = run_cli("compare", str(images.reference), str(images.reference))
    assert result.code == 0
    values = {name: float(v) for name, v in re.findall(r"^(CX|CX loss|CoBi loss)\s+([-\d.]+)", result.out, re.M)}
    assert values == {"CX": 1.0, "CX loss": 0.0, "CoBi loss": 0.0}
    lines = dict(line.split(maxsplit=1) for line in result.out.splitlines() if not line.startswith(("CX", "CoBi loss")))
    assert lines["prediction"] == f"{images.reference}: 24x24, compared at its stored size"
    assert lines["positions"] == "all, 576 per image"
    assert lines["features"] == "5x5 RGB patches (reflect padding)"
    assert lines["distance"] == f"{PIXELS.loss_type} (the default for pixels and patches), band width 0.5"
    assert lines["CoBi"] == f"paper form, weight_sp {PIXELS.weight_sp:g} (the default for {PIXELS.loss_type})"
    engine = auto_engine(1, 576, 576, 75, torch.float32, "cpu")
    assert lines["work"].startswith(f"{2 * 576 * 576:.3g} entries on the {engine} engine, ")
    assert lines["duplicates"] == "none among the 576 target features"
    assert result.err == ""


def test_given_options_are_not_called_defaults(run_cli, images) -> None:
    argv = ["compare", str(images.shifted), str(images.reference), "--loss-type", "cosine", "--weight-sp", "0.1"]
    result = run_cli(*argv)
    assert result.code == 0, result.err
    assert "distance    cosine, band width 0.5" in result.out and "weight_sp 0.1\n" in result.out


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
    expected = contextual_similarity(load_image(wide), load_image(square), loss_type=PIXELS.loss_type)
    assert data["cx"] == pytest.approx(float(expected), rel=1e-6)
    assert (data["prediction_size"], data["target_size"]) == ("12x20", "16x16")
    assert data["settings"]["features"] == "pixels (RGB values)"


def test_max_side_shrinks_keeping_aspect_and_says_so(run_cli, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    save_image(texture(40, 60, seed=4), big)
    data = _json(run_cli("compare", str(big), str(big), "--max-side", "30", "--json"))
    assert (data["prediction_size"], data["prediction_stored_size"]) == ("20x30", "40x60")
    assert data["cx"] == pytest.approx(1.0, abs=1e-6)
    text = run_cli("compare", str(big), str(big), "--max-side", "30").out
    assert f"prediction  {big}: 40x60, shrunk to 20x30 (--max-side 30)" in text


def test_max_points_sampling_is_seeded_and_is_the_librarys(run_cli, images) -> None:
    argv = ["compare", str(images.shifted), str(images.unrelated), "--max-points", "100", "--json"]
    first, again = _json(run_cli(*argv, "--seed", "3")), _json(run_cli(*argv, "--seed", "3"))
    other = _json(run_cli(*argv, "--seed", "4"))
    full = _json(run_cli("compare", str(images.shifted), str(images.unrelated), "--json"))
    assert first["cx"] == again["cx"]
    assert first["cx"] != other["cx"]
    assert first["cx"] != full["cx"]
    # By default only the target is sampled: every prediction position is kept.
    assert first["positions"] == {"prediction": 576, "target": 100}
    assert first["settings"]["sample"] == "target"
    x = extract_patches(load_image(images.shifted), 5)
    y = extract_patches(load_image(images.unrelated), 5)
    for sample, positions in (("target", 576), ("both", 100)):
        data = first if sample == "target" else _json(run_cli(*argv, "--seed", "3", "--sample", "both"))
        assert data["positions"] == {"prediction": positions, "target": 100}
        # The library with the same generator draws the same positions: CX and CoBi alike.
        options = {"max_points": 100, "sample": sample}
        gen = torch.Generator().manual_seed(3)
        expected = contextual_loss(x, y, 0.5, PIXELS.loss_type, generator=gen, **options)
        assert data["cx_loss"] == pytest.approx(float(expected), rel=1e-5)
        gen = torch.Generator().manual_seed(3)
        cobi = contextual_bilateral_loss(x, y, PIXELS.weight_sp, 0.5, PIXELS.loss_type, generator=gen, **options)
        assert data["cobi_loss"] == pytest.approx(float(cobi), rel=1e-5)
    text = run_cli("compare", str(images.shifted), str(images.unrelated), "--max-points", "100").out
    assert "positions   all 576 of the prediction; 100 of 576 of the target, drawn at random " in text
    assert "(--max-points 100, --sample target, --seed 0; --max-points 0 compares all)" in text
    text = run_cli("compare", str(images.shifted), str(images.unrelated), "--max-points", "100", "--sample", "both").out
    assert "positions   100 of 576 per image, drawn at random, the same in both images (--max-points 100" in text


def test_exact_duplicates_are_counted_and_cap_cx(run_cli, tmp_path: Path) -> None:
    # A texture with a flat block: its patches inside the block are identical, so CX(X, X) < 1.
    image = texture(24, 24, seed=6)
    image[..., 4:14, 4:14] = 0.5
    path = tmp_path / "flat.png"
    save_image(image, path)
    data = _json(run_cli("compare", str(path), str(path), "--json"))
    found = target_duplicates(extract_patches(load_image(path), 5))
    assert data["duplicates"]["duplicated"] == found.duplicated > 0
    assert data["duplicates"]["cx_cap"] == pytest.approx(found.cap) and found.cap < 1
    # For identical images whose other patches are far apart, CX reaches the cap (docs/definition.md 6.3).
    assert data["cx"] == pytest.approx(found.cap, rel=1e-5)
    text = run_cli("compare", str(path), str(path)).out
    assert (
        f"duplicates  {found.duplicated} of 576 target features have an exact duplicate: CX <= {found.cap:.6f}" in text
    )


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
    result = run_cli("compare", str(pred), str(target), "--out", str(out), "--no-progress")
    assert result.code == 0, result.err
    assert "1 prediction image(s) without a partner" in result.err and "only_pred.png" in result.err
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["prediction"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert [Path(r["target"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert (rows[0]["prediction_stored_size"], rows[0]["positions"], rows[0]["cx_cap"]) == ("16x16", "256/256", "1")
    x = extract_patches(load_image(pred / "img1.png"), 5)
    y = extract_patches(load_image(target / "img1.png"), 5)
    expected = contextual_similarity(x, y, loss_type=PIXELS.loss_type)
    assert float(rows[1]["cx"]) == pytest.approx(float(expected), rel=1e-6)
    assert "mean" in result.out and f"wrote 3 result(s) to {out}" in result.err
    assert result.out.splitlines()[1].startswith(f"distance    {PIXELS.loss_type}")


def test_folders_to_json_pairs_by_stem(run_cli, folders, tmp_path: Path) -> None:
    pred, target = folders
    (target / "img2.png").rename(target / "img2.jpg")  # paired by name without the ending
    out = tmp_path / "scores.json"
    data = _json(run_cli("compare", str(pred), str(target), "--json", "--out", str(out)))
    assert len(data["results"]) == 3
    assert Path(data["results"][2]["target"]).name == "img2.jpg"
    mean = sum(r["cx_loss"] for r in data["results"]) / 3
    assert data["mean"]["cx_loss"] == pytest.approx(mean)
    assert json.loads(out.read_text())["results"] == data["results"]


def test_an_existing_output_file_is_kept_unless_forced(run_cli, folders, tmp_path: Path) -> None:
    pred, target = folders
    out = tmp_path / "scores.json"
    out.write_text("precious")
    refused = run_cli("compare", str(pred), str(target), "--out", str(out))
    assert refused.code == 2 and f"--out: {out} already exists; add --force to overwrite it" in refused.err
    assert out.read_text() == "precious" and refused.out == ""
    assert run_cli("compare", str(pred), str(target), "--out", str(out), "--force").code == 0
    assert len(json.loads(out.read_text())["results"]) == 3


def test_the_old_output_flag_still_works_with_a_deprecation_note(run_cli, folders, tmp_path: Path) -> None:
    pred, target = folders
    out = tmp_path / "scores.csv"
    with pytest.warns(DeprecationWarning, match="--output is deprecated"):
        result = run_cli("compare", str(pred), str(target), "--output", str(out))
    assert result.code == 0 and out.is_file()
    assert "contextual-loss: warning: --output is deprecated and will be removed in the next release; use --out" in (
        result.err
    )
