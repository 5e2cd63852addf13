"""Real photographs, degraded like a phone camera, with misaligned clean targets.

The photographs are scikit-image's sample photos (``skimage.data``, shipped with the package, so
nothing is downloaded). They are used at half their stored size (2 x 2 box filter): the
geometric warps are rendered from the stored photo and box-filtered in the same way, so a warped
target is exactly as sharp as the unwarped truth (resampling at the working size would blur it).

Every training sample is a pure function of (seed, index), made of three crops of the same size:

* ``camera``: the clean crop degraded like a phone camera (defocus, colour cast, sensor noise,
  tone curve, JPEG), the network's input;
* ``target``: the clean photo seen through a small random warp (shift, rotation, scale) about the
  crop's centre, the training target, NOT aligned to the camera crop;
* ``aligned``: the clean crop itself, in the camera's frame: the ground truth for evaluation and
  the target of the aligned upper bound.

Held-out photos are degraded whole (a few camera draws each) and scored against the clean photo.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from experiments.card_enhancement.data import _disk_kernel, _jpeg

__all__ = [
    "PHOTOS",
    "SUPERSAMPLE",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "Camera",
    "Warp",
    "degrade",
    "load_photo",
    "random_camera",
    "random_warp",
    "test_images",
    "training_batch",
    "warp_crop",
    "warp_window",
]

SUPERSAMPLE = 2  # stored photo pixels per working pixel (per side)


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]  # the left view


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


#: The colour photographs of everyday scenes that scikit-image loads offline (``cat`` is
#: ``chelsea``; ``hubble_deep_field``, ``immunohistochemistry`` and ``retina`` are scientific
#: images, ``colorwheel`` is synthetic; the others need a download).
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
}
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle")
TEST_PHOTOS = ("chelsea", "coffee")


@cache
def load_photo(name: str) -> tuple[Tensor, Tensor]:
    """(stored, working) versions of a photo: (3, 2H, 2W) as stored (cropped to even sides) and the
    (3, H, W) 2 x 2 box-filtered working image, float32 in [0, 1]."""
    if name not in PHOTOS:
        raise ValueError(f"name must be one of {tuple(PHOTOS)}, got {name!r}")
    array = PHOTOS[name]()
    rows, cols = (s - s % SUPERSAMPLE for s in array.shape[:2])
    stored = torch.from_numpy(np.ascontiguousarray(array[:rows, :cols, :3])).permute(2, 0, 1).float() / 255.0
    return stored, F.avg_pool2d(stored[None], SUPERSAMPLE)[0]


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Warp:
    """A similarity transform about a centre: source = centre + scale R(angle) (p - centre) + shift.

    Points are (x, y) in working pixels (pixel centres at i + 0.5); the target at p shows the
    clean photo at the source point.
    """

    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def source(self, points: Tensor, centre: tuple[float, float]) -> Tensor:
        """Map (..., 2) target points to the photo points they show."""
        a = math.radians(self.angle_deg)
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=points.dtype)
        c = torch.tensor(centre, dtype=points.dtype)
        return c + self.scale * (points - c) @ rot.T + torch.tensor(self.shift, dtype=points.dtype)

    def reach(self, crop: int) -> float:
        """The farthest a point of a ``crop`` x ``crop`` window moves, in working pixels."""
        # |s R(a) - I| is the same for every direction: |s e^{ia} - 1|
        turn = abs(self.scale * cmath.exp(1j * math.radians(self.angle_deg)) - 1)
        return crop / math.sqrt(2) * turn + math.hypot(*self.shift)


MAX_SHIFT, MAX_ROTATION_DEG, MAX_SCALE = 2.5, 1.5, 0.02


def random_warp(rng: np.random.Generator) -> Warp:
    """A random misalignment: shift up to 2.5 px per axis, rotation up to 1.5 degrees, scale +-2 %."""
    return Warp(
        angle_deg=float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        scale=float(1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE)),
        shift=(float(rng.uniform(-MAX_SHIFT, MAX_SHIFT)), float(rng.uniform(-MAX_SHIFT, MAX_SHIFT))),
    )


def margin(crop: int) -> int:
    """Border (working pixels) that the largest warp of a ``crop`` window needs inside the photo."""
    worst = Warp(MAX_ROTATION_DEG, 1.0 + MAX_SCALE, (MAX_SHIFT, MAX_SHIFT))
    return math.ceil(worst.reach(crop)) + 1


def warp_window(stored: Tensor, top: int, left: int, size: tuple[int, int], warp: Warp) -> Tensor:
    """The (3, rows, cols) window at (top, left) of the working image, seen through ``warp``.

    Rendered from the stored photo (bilinear, at its resolution) and box-filtered like the working
    image itself, so the identity warp gives the working image's pixels exactly and any warp is as
    sharp as the working image. The warp turns about the window's centre.
    """
    s = SUPERSAMPLE
    rows, cols = size
    ys, xs = torch.meshgrid(
        top + (torch.arange(rows * s, dtype=torch.float64) + 0.5) / s,  # sub-pixel centres, working units
        left + (torch.arange(cols * s, dtype=torch.float64) + 0.5) / s,
        indexing="ij",
    )
    src = warp.source(torch.stack((xs, ys), dim=-1), (left + cols / 2, top + rows / 2)) * s  # stored pixels
    height, width = stored.shape[-2:]
    grid = torch.stack((2 * src[..., 0] / width - 1, 2 * src[..., 1] / height - 1), dim=-1).to(stored.dtype)
    fine = F.grid_sample(stored[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(fine, s)[0]


def warp_crop(stored: Tensor, top: int, left: int, crop: int, warp: Warp) -> Tensor:
    """The square (3, crop, crop) window at (top, left) seen through ``warp`` (see :func:`warp_window`)."""
    return warp_window(stored, top, left, (crop, crop), warp)


# ----------------------------------------------------------------------------- photometry


@dataclass(frozen=True)
class Camera:
    """One phone-camera draw: defocus radius, white-balance gains, noise level, tone curve, JPEG quality."""

    blur_radius: float
    gains: tuple[float, float, float]
    noise: float
    gamma: float
    quality: int


def random_camera(rng: np.random.Generator) -> Camera:
    """A phone camera with a consistent look (warm cast, lifted mid-tones) and per-shot variation."""
    base_gains = np.array([1.06, 1.0, 0.88])
    return Camera(
        blur_radius=float(rng.uniform(0.4, 1.0)),
        gains=tuple(float(g) for g in base_gains * rng.uniform(0.94, 1.06, size=3)),
        noise=float(rng.uniform(0.005, 0.02)),
        gamma=float(0.8 * rng.uniform(0.9, 1.1)),
        quality=int(rng.integers(60, 91)),
    )


def degrade(clean: Tensor, camera: Camera, noise_seed: int) -> Tensor:
    """The photo ``clean`` (3, H, W) as ``camera`` takes it: defocus, cast, noise, tone curve, JPEG.

    Borders are replicated for the blur; the result is quantised to 8 bits by the JPEG round trip.
    """
    kernel = _disk_kernel(camera.blur_radius).to(clean)
    pad = kernel.shape[-1] // 2
    blurred = F.conv2d(F.pad(clean[:, None], (pad,) * 4, mode="replicate"), kernel[None, None])[:, 0]
    cast = blurred * torch.tensor(camera.gains, dtype=clean.dtype).view(3, 1, 1)
    gen = torch.Generator().manual_seed(noise_seed)
    sigma = camera.noise * cast.clamp_min(0).add(0.05).sqrt()  # shot noise grows with the signal, plus a floor
    noisy = cast + torch.randn(cast.shape, generator=gen, dtype=clean.dtype) * sigma
    toned = noisy.clamp(0, 1).pow(camera.gamma)
    return _jpeg(toned, camera.quality)


# ----------------------------------------------------------------------------- samples


def training_sample(seed: int, crop: int, photos: Sequence[str] = TRAIN_PHOTOS) -> dict[str, Tensor]:
    """One training sample (camera, target, aligned crops, (3, crop, crop)), a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    name = photos[int(rng.integers(len(photos)))]
    stored, work = load_photo(name)
    border = margin(crop) + 4  # the blur of the camera crop reads 4 px around it
    rows, cols = work.shape[-2:]
    if min(rows, cols) < crop + 2 * border:
        raise ValueError(f"crop={crop} does not fit in photo {name!r} of {rows} x {cols} working pixels")
    top = int(rng.integers(border, rows - crop - border + 1))
    left = int(rng.integers(border, cols - crop - border + 1))
    aligned = work[:, top : top + crop, left : left + crop]
    target = warp_crop(stored, top, left, crop, random_warp(rng))
    context = work[:, top - 4 : top + crop + 4, left - 4 : left + crop + 4]
    camera = degrade(context, random_camera(rng), int(rng.integers(2**31)))[:, 4:-4, 4:-4]
    return {"camera": camera, "target": target, "aligned": aligned}


def training_batch(seed: int, step: int, batch_size: int, crop: int, photos: Sequence[str] = TRAIN_PHOTOS) -> dict:
    """The batch of ``step``: ``batch_size`` samples stacked, (B, 3, crop, crop) each."""
    samples = [training_sample((seed * 1_000_003 + step) * 64 + i, crop, photos) for i in range(batch_size)]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def test_images(
    photos: Sequence[str] = TEST_PHOTOS, shots: int = 2, size: int | None = None
) -> list[dict[str, Tensor | str | int]]:
    """Held-out photos, each taken ``shots`` times: camera (3, H, W) and truth, H and W multiples of 4.

    ``size`` keeps only a centred ``size`` x ``size`` window (quick runs).
    """
    images = []
    for name in photos:
        _, work = load_photo(name)
        rows, cols = (s - s % 4 for s in work.shape[-2:])
        if size is not None:
            rows, cols = min(rows, size), min(cols, size)
        top, left = (work.shape[-2] - rows) // 2, (work.shape[-1] - cols) // 2
        truth = work[:, top : top + rows, left : left + cols]
        for shot in range(shots):
            rng = np.random.default_rng([7, PHOTO_IDS[name], shot])
            camera = degrade(truth, random_camera(rng), int(rng.integers(2**31)))
            images.append({"photo": name, "shot": shot, "camera": camera, "truth": truth})
    return images


PHOTO_IDS = {name: i for i, name in enumerate(PHOTOS)}
