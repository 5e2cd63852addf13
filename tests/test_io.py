"""Image files to tensors and back; pairing the images of two folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contextual_loss.io import (
    ImageReadError,
    find_images,
    load_image,
    pair_images,
    resize_max_side,
    save_image,
)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    image = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    path = save_image(image, tmp_path / "x.png")
    loaded = load_image(path)
    assert loaded.shape == (1, 3, 5, 7) and loaded.dtype == torch.float32
    assert float((loaded - image).abs().max()) <= 0.5 / 255 + 1e-6  # 8-bit rounding


def test_grey_rgba_and_mode(tmp_path: Path) -> None:
    grey = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (1, 3, 2, 2) and torch.equal(rgb[0, 0], rgb[0, 2])
    torch.testing.assert_close(load_image(tmp_path / "g.png", mode="L")[0, 0], torch.from_numpy(grey / 255.0).float())
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]  # alpha dropped


def test_sixteen_bit_precision(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    expected = torch.from_numpy(values / 65535.0).float()
    torch.testing.assert_close(loaded[0, 1], expected)  # finer than 8-bit steps


def test_max_side_keeps_aspect(tmp_path: Path) -> None:
    save_image(torch.rand(1, 3, 30, 60), tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png", max_side=20).shape == (1, 3, 10, 20)
    assert load_image(tmp_path / "wide.png", max_side=100).shape == (1, 3, 30, 60)
    small = resize_max_side(torch.ones(1, 3, 7, 3), 5)
    assert small.shape == (1, 3, 5, 2) and float(small.max()) <= 1.0
    with pytest.raises(ValueError, match="max_side"):
        resize_max_side(small, 0)


def test_read_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"no such file: .*missing\.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match=r"cannot read .*text\.png"):
        load_image(tmp_path / "text.png")
    save_image(torch.rand(1, 3, 16, 16), tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")
    assert issubclass(ImageReadError, ValueError)
    with pytest.raises(ValueError, match="mode"):
        load_image(tmp_path / "missing.png", mode="CMYK")


def test_save_image_checks_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one image"):
        save_image(torch.rand(2, 3, 4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="C in"):
        save_image(torch.rand(1, 2, 4, 4), tmp_path / "x.png")
    save_image(torch.rand(1, 4, 4), tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode == "L"


def test_find_and_pair_images(tmp_path: Path) -> None:
    pred, target = tmp_path / "p", tmp_path / "t"
    pred.mkdir()
    target.mkdir()
    for name in ("b.png", "a.JPG", "c.png", "readme.txt"):
        (pred / name).write_bytes(b"")
    for name in ("a.png", "b.webp", "d.png"):
        (target / name).write_bytes(b"")
    assert [p.name for p in find_images(pred)] == ["a.JPG", "b.png", "c.png"]
    found = pair_images(pred, target)
    assert [(p.name, t.name) for p, t in found.pairs] == [("a.JPG", "a.png"), ("b.png", "b.webp")]
    assert [p.name for p in found.unpaired_predictions] == ["c.png"]
    assert [p.name for p in found.unpaired_targets] == ["d.png"]


def test_pairing_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such folder"):
        find_images(tmp_path / "nowhere")
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="share the name 'x'"):
        pair_images(tmp_path, tmp_path)
