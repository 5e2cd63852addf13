"""The command line on real photographs: scikit-image's sample photos (offline), small crops.

What a new user checks first: an identical pair scores CX = 1 (loss 0) where the photo's patches
are all distinct; exact duplicates cap CX and the report says by how much; and the loss grows
with the misalignment (0, 1, 2, 4, 8 px shifts of a crop), at the stored pixels.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contextual_loss.explain import target_duplicates
from contextual_loss.features import extract_patches
from contextual_loss.io import load_image, save_image

skimage_data = pytest.importorskip("skimage.data")

SHIFTS = (0, 1, 2, 4, 8)
#: Crop side: 48 x 48 = 2304 positions, all compared with the default --max-points.
SIDE = 48


def _photo(name: str) -> torch.Tensor:
    array = getattr(skimage_data, name)()
    if array.ndim == 2:  # a grey photo, saved as RGB as users do
        array = np.stack([array] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255.0


def _crops(name: str, folder: Path) -> dict[int, Path]:
    """The centre crop of a photo and the windows 1-8 px to its right, as PNG files."""
    photo = _photo(name)
    top, left = photo.shape[-2] // 2 - SIDE // 2, photo.shape[-1] // 2 - SIDE
    files = {}
    for shift in SHIFTS:
        files[shift] = save_image(
            photo[..., top : top + SIDE, left + shift : left + shift + SIDE], folder / f"{shift}.png"
        )
    return files


def _compare(run_cli, prediction: Path, target: Path, *argv: str) -> dict:
    result = run_cli("compare", str(prediction), str(target), "--json", *argv)
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.mark.parametrize("name", ["chelsea", "camera"])
def test_an_identical_photo_scores_cx_one(run_cli, tmp_path: Path, name: str) -> None:
    crop = _crops(name, tmp_path)[0]
    data = _compare(run_cli, crop, crop)
    assert data["duplicates"]["duplicated"] == 0  # every 5 x 5 patch of these crops is distinct
    assert (data["cx"], data["cx_loss"], data["cobi_loss"]) == (1.0, 0.0, 0.0)
    text = run_cli("compare", str(crop), str(crop)).out
    assert "CX          1.000000" in text and "duplicates  none among the 2304 target features" in text


def test_cosine_on_grey_pixels_collapses_where_the_raw_distances_reach_the_cap(run_cli, tmp_path: Path) -> None:
    # Why pixels and patches default to a raw distance (l2): the pixels of a grey photo saved as RGB,
    # once centred, all lie on one line, so cosine sees two directions and CX(X, X) = 2 / M
    # (docs/definition.md 6.3); l1 and l2 reach the cap that the photo's repeated grey values imply.
    crop = _crops("camera", tmp_path)[0]
    cosine = _compare(run_cli, crop, crop, "--pixels", "--loss-type", "cosine")
    assert cosine["cx"] == pytest.approx(2 / SIDE**2, rel=0.01)  # 2 / M within rounding of the centring
    l2 = _compare(run_cli, crop, crop, "--pixels")
    assert l2["settings"]["loss_type"] == "l2" and l2["duplicates"]["duplicated"] > 0
    cap = l2["duplicates"]["cx_cap"]
    assert cap * (1 - 1e-3) < l2["cx"] <= cap  # near-duplicates one grey level apart: below (next test)
    l1 = _compare(run_cli, crop, crop, "--pixels", "--loss-type", "l1")
    assert l1["cx"] == pytest.approx(cap, rel=1e-6) and cosine["cx"] < cap / 20


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_the_loss_grows_with_the_shift(run_cli, tmp_path: Path, name: str) -> None:
    files = _crops(name, tmp_path)
    losses = [_compare(run_cli, files[shift], files[0]) for shift in SHIFTS]
    for key in ("cx_loss", "cobi_loss"):
        values = [data[key] for data in losses]
        assert values[0] == 0.0 and all(b > a for a, b in itertools.pairwise(values)), (key, values)


def test_exact_duplicates_are_reported_with_the_cap_they_imply(run_cli, tmp_path: Path) -> None:
    # The astronaut crop holds identical patches (saturated regions): no prediction reaches CX = 1.
    crop = _crops("astronaut", tmp_path)[0]
    found = target_duplicates(extract_patches(load_image(crop), 5))
    assert found.duplicated > 0 and found.cap < 1.0
    data = _compare(run_cli, crop, crop)
    assert data["duplicates"] == {
        "features": found.features,
        "duplicated": found.duplicated,
        "groups": found.groups,
        "cx_cap": pytest.approx(found.cap),
    }
    assert data["cobi_loss"] == 0.0  # CoBi tells the duplicates apart by their positions
    # The default l2 distance stays within 0.2 % below the cap: its squared distances of patches one
    # grey level apart, (1/255)^2 = 1.5e-5, are of the order of eps (1e-5), so such near-duplicates
    # share a little of CX (docs/definition.md 6.4); l1 (distance 1/255 >> eps) reaches the cap.
    assert data["settings"]["loss_type"] == "l2"
    assert found.cap * (1 - 5e-3) < data["cx"] < found.cap
    l1 = _compare(run_cli, crop, crop, "--loss-type", "l1")
    assert l1["cx"] == pytest.approx(found.cap, rel=1e-6)  # CX(X, X) reaches the cap (docs/definition.md 6.3)


def test_sampling_the_target_keeps_the_loss_graded_where_sampling_both_does_not(run_cli, tmp_path: Path) -> None:
    # The policy for large photos: --max-points samples the target only (default), so each sampled
    # target patch still meets its true, shifted match; sampling both images at the same positions
    # leaves most true matches out and a 1 px shift scores almost like an unrelated photo.
    files = _crops("chelsea", tmp_path)
    sampled = ["--max-points", "256"]
    target = [_compare(run_cli, files[shift], files[0], *sampled)["cx_loss"] for shift in SHIFTS]
    assert target[0] == 0.0 and all(b > a for a, b in itertools.pairwise(target)), target
    both = [_compare(run_cli, files[shift], files[0], *sampled, "--sample", "both")["cx_loss"] for shift in (0, 1)]
    assert both[0] == 0.0 and both[1] > 5 * target[1], (both, target)
