"""Built-in images: the texture, the periodic pattern, blur, rotation."""

from __future__ import annotations

import pytest
import torch

from contextual_loss.demo.images import gaussian_blur, periodic_pattern, rotate, texture


def test_texture_is_deterministic_and_in_range() -> None:
    a, b = texture(20, 30, seed=1), texture(20, 30, seed=1)
    assert a.shape == (1, 3, 20, 30) and torch.equal(a, b)
    assert float(a.min()) > 0.0 and float(a.max()) < 1.0
    assert not torch.equal(a, texture(20, 30, seed=2))
    assert texture(3, 2).shape == (1, 3, 3, 2)  # any size, even below the blur radius


def test_texture_has_fine_detail() -> None:
    """The design claim behind the misalignment study: a 1 px shift changes L1 a lot."""
    canvas = texture(40, 41, seed=0)
    shifted = (canvas[..., 1:] - canvas[..., :-1]).abs().mean()
    unrelated = (canvas[..., :-1] - texture(40, 40, seed=9)).abs().mean()
    assert 0.3 < float(shifted / unrelated) < 0.6


def test_gaussian_blur() -> None:
    flat = torch.full((1, 2, 9, 9), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[..., 7, 7] = 1.0
    blurred = gaussian_blur(impulse, 1.5)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(blurred, blurred.transpose(-1, -2))
    with pytest.raises(ValueError, match="larger"):
        gaussian_blur(torch.zeros(1, 1, 4, 4), 3.0)


def test_periodic_pattern() -> None:
    image = periodic_pattern(20, 24, period=6, seed=3)
    torch.testing.assert_close(image[..., :, :18], image[..., :, 6:])
    torch.testing.assert_close(image[..., :14, :], image[..., 6:, :])
    moved = periodic_pattern(20, 24, period=6, seed=3, offset=2)
    torch.testing.assert_close(moved[..., :22], image[..., 2:])


def test_rotate() -> None:
    image = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rotate(image, 0.0), image)
    # Counter-clockwise as displayed, like numpy's and torch's rot90 on (rows, cols).
    torch.testing.assert_close(rotate(image, 90.0), torch.rot90(image, 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="degrees"):
        rotate(image, float("nan"))
