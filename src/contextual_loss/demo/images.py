"""Built-in images for the demo, the experiments and the tests: nothing is downloaded.

- a colour texture with detail at several scales, the stand-in for a natural image in the
  misalignment study (a shift of one pixel changes every pixel, as in a photograph);
- a periodic pattern, where many patches are exact repeats of each other (the case Zhang et al.,
  CVPR 2019 use to motivate CoBi);
- rotation by a small angle, for misalignment that is not a translation.

All generators are deterministic given ``seed`` and return (1, C, H, W) float32 tensors in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contextual_loss._validation import check_positive_int, check_positive_number

__all__ = ["gaussian_blur", "periodic_pattern", "rotate", "texture"]


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a (B, C, H, W) tensor with reflect padding (kernel radius 3 sigma)."""
    check_positive_number("sigma", sigma)
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    if min(image.shape[-2:]) <= radius:
        raise ValueError(f"sigma={sigma} needs an image larger than {radius} pixels, got shape {tuple(image.shape)}")
    out = F.pad(image, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def texture(
    height: int,
    width: int,
    *,
    seed: int = 0,
    palette: int = 0,
    scales: tuple[float, ...] = (0.6, 1.5, 3.0, 6.0),
) -> Tensor:
    """A colour texture with equal contrast at several spatial scales (it looks like lichen).

    Gaussian noise blurred at each scale in ``scales`` (standard deviations in pixels) and
    normalised, summed, mixed across channels (mostly shared brightness plus some colour, as in
    photographs) and squashed into [0, 1] by a sigmoid. The finest scale makes neighbouring pixels
    differ, so the L1 distance grows quickly with a shift; the coarse scales give every n x n patch
    a distinctive context, so each patch has one clear best match. Textures with the same
    ``palette`` and different ``seed`` share their colour statistics.

    Args:
        height: rows.
        width: columns.
        seed: seed of the noise.
        palette: seed of the colour mixing.
        scales: blur standard deviations, one noise layer each.

    Returns:
        (1, 3, height, width) float32 in [0, 1].

    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    gen = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 3, height, width)
    for sigma in scales:
        # Blur a larger field and keep its centre: no border effects, and any size works.
        margin = math.ceil(3 * sigma) + 1
        noise = torch.randn(1, 3, height + 2 * margin, width + 2 * margin, generator=gen)
        layer = gaussian_blur(noise, sigma)[..., margin : margin + height, margin : margin + width]
        image += layer / layer.std()
    colours = torch.Generator().manual_seed(palette)
    mix = (1.0 + 0.5 * torch.randn(3, 3, generator=colours)) / 3.0
    tint = 0.3 * torch.randn(1, 3, 1, 1, generator=colours)
    image = torch.einsum("oc,bchw->bohw", mix, image)
    return torch.sigmoid(1.5 * image / image.std() + tint)


def periodic_pattern(height: int, width: int, *, period: int = 8, seed: int = 0, offset: int = 0) -> Tensor:
    """A random ``period`` x ``period`` colour tile repeated over the image.

    Every n x n patch of the result has exact copies ``period`` pixels apart in both directions.

    Args:
        height: rows.
        width: columns.
        period: side of the tile in pixels.
        seed: seed of the tile.
        offset: horizontal shift in pixels (the pattern seen ``offset`` pixels further right).

    Returns:
        (1, 3, height, width) float32 in [0, 1].

    """
    for name, value in (("height", height), ("width", width), ("period", period)):
        check_positive_int(name, value)
    tile = torch.rand(1, 3, period, period, generator=torch.Generator().manual_seed(seed))
    rows = torch.arange(height) % period
    cols = (torch.arange(width) + offset) % period
    return tile[:, :, rows][:, :, :, cols]


def rotate(image: Tensor, degrees: float) -> Tensor:
    """Rotate a (B, C, H, W) image about its centre (bilinear, reflection at the borders).

    Positive angles turn the content counter-clockwise as displayed (rows down, columns right).
    """
    if isinstance(degrees, bool) or not isinstance(degrees, (int, float)) or not math.isfinite(degrees):
        raise ValueError(f"degrees must be a finite number, got {degrees!r}")
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    height, width = image.shape[-2:]
    # affine_grid works in [-1, 1] coordinates; the aspect factors keep the rotation rigid in pixels.
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=image.dtype, device=image.device
    )
    grid = F.affine_grid(theta.expand(image.shape[0], 2, 3), list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
