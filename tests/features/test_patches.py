"""Patch features: values against a direct unfold and a hand-computed patch, padding modes, bad sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contextual_loss.features import IdentityFeatures, PatchFeatures, extract_patches


def _ramp(channels: int = 2, height: int = 5, width: int = 6) -> torch.Tensor:
    """Every pixel holds a distinct value, so a wrong index cannot go unnoticed."""
    return torch.arange(channels * height * width, dtype=torch.float64).view(1, channels, height, width)


def _reflect(index: int, length: int) -> int:
    # Reflection without repeating the edge pixel (numpy's "reflect", torch's "reflect" padding).
    if index < 0:
        return -index
    if index >= length:
        return 2 * (length - 1) - index
    return index


def _hand_patch(image: torch.Tensor, row: int, col: int, size: int, padding: str) -> torch.Tensor:
    """The patch vector at (row, col), written out pixel by pixel from the documented layout."""
    _, channels, height, width = image.shape
    p = 0 if padding == "none" else (size - 1) // 2
    values = []
    for c in range(channels):
        for r in range(size):
            for s in range(size):
                i, j = row + r - p, col + s - p
                if padding == "reflect":
                    values.append(image[0, c, _reflect(i, height), _reflect(j, width)])
                elif 0 <= i < height and 0 <= j < width:
                    values.append(image[0, c, i, j])
                else:
                    values.append(torch.tensor(0.0, dtype=image.dtype))
    return torch.stack(values)


@pytest.mark.parametrize("padding", ["reflect", "zero", "none"])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_patch_matches_the_hand_computed_one(size: int, padding: str) -> None:
    image = _ramp()
    patches = extract_patches(image, size, padding)
    out_h, out_w = (5, 6) if padding != "none" else (5 - size + 1, 6 - size + 1)
    assert patches.shape == (1, 2 * size * size, out_h, out_w)
    for row in range(out_h):
        for col in range(out_w):
            torch.testing.assert_close(patches[0, :, row, col], _hand_patch(image, row, col, size, padding))


@pytest.mark.parametrize("size", [3, 5])
def test_zero_padding_matches_a_direct_unfold(size: int) -> None:
    image = torch.rand(2, 4, 9, 7, generator=torch.Generator().manual_seed(0))
    direct = F.unfold(image, kernel_size=size, padding=(size - 1) // 2).view(2, 4 * size * size, 9, 7)
    torch.testing.assert_close(extract_patches(image, size, "zero"), direct, rtol=0, atol=0)
    valid = F.unfold(image, kernel_size=size).view(2, 4 * size * size, 9 - size + 1, 7 - size + 1)
    torch.testing.assert_close(extract_patches(image, size, "none"), valid, rtol=0, atol=0)


def test_any_channel_count_and_batch_independence() -> None:
    image = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    patches = extract_patches(image, 3)
    assert patches.shape == (3, 9, 6, 6)
    torch.testing.assert_close(patches[1:2], extract_patches(image[1:2], 3))
    assert extract_patches(torch.rand(1, 5, 4, 4), 2).shape == (1, 20, 4, 4)


def test_size_one_is_the_image_itself() -> None:
    image = torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(extract_patches(image, 1), image, rtol=0, atol=0)


def test_gradients_flow_through_patches() -> None:
    image = torch.rand(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: extract_patches(t, 3, "reflect"), (image,))


def test_patch_features_module() -> None:
    image = torch.rand(1, 3, 8, 8)
    out = PatchFeatures(3, "zero")(image)
    assert list(out) == ["patches"]
    torch.testing.assert_close(out["patches"], extract_patches(image, 3, "zero"))
    assert repr(PatchFeatures(3, "zero")) == "PatchFeatures(size=3, padding='zero')"
    assert IdentityFeatures()(image)["input"] is image


def test_reflect_padding_needs_a_large_enough_image() -> None:
    with pytest.raises(ValueError, match=r"reflect padding for size=5 patches needs H and W > 2.*padding='zero'"):
        extract_patches(torch.rand(1, 3, 2, 8), 5, "reflect")
    assert extract_patches(torch.rand(1, 3, 2, 8), 5, "zero").shape == (1, 75, 2, 8)


def test_patches_larger_than_the_image_raise() -> None:
    with pytest.raises(ValueError, match=r"size=5 patches do not fit in an image of shape \(1, 3, 4, 4\)"):
        extract_patches(torch.rand(1, 3, 4, 4), 5, "none")


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_sizes_raise(size, error) -> None:
    with pytest.raises(error, match="size must be"):
        extract_patches(torch.rand(1, 3, 8, 8), size)
    with pytest.raises(error, match="patch_size must be"):
        PatchFeatures(size)


def test_bad_padding_and_images_raise() -> None:
    with pytest.raises(ValueError, match=r"padding must be one of \('reflect', 'zero', 'none'\), got 'circular'"):
        extract_patches(torch.rand(1, 3, 8, 8), 3, "circular")
    with pytest.raises(ValueError, match=r"padding must be one of"):
        PatchFeatures(3, "same")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got shape \(3, 8, 8\)"):
        extract_patches(torch.rand(3, 8, 8), 3)
    with pytest.raises(TypeError, match=r"image must be a torch\.Tensor"):
        extract_patches([[0.0]], 3)
