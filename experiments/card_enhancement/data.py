"""Synthetic business cards: a flatbed "scan" and a phone-"camera" photo of the same card.

The scan is a card rendered with Pillow (names, titles, phone numbers, e-mail, a logo shape,
rules) in one of a few layouts and fonts. The camera image is the same card seen through a known
geometric warp (perspective, rotation, translation of a few pixels, a slight bend) and then
degraded photometrically (defocus blur, uneven illumination and a shadow, sensor noise, JPEG).

Every sample has three images of the card's size:

* ``camera``: the degraded photo, the network's input;
* ``scan``: the clean card in its own (scanner) frame, the training target, NOT aligned to the photo;
* ``aligned``: the scan warped by the known geometric warp only, i.e. the clean card in the
  camera's frame, the ground truth used for evaluation.

Both the scan and the warped scan are rendered at ``supersample`` times the resolution and
box-filtered down, so the aligned ground truth is exactly as sharp as the scan (warping at the
final resolution would blur it through interpolation).

Fonts: DejaVu from matplotlib's bundle, then the system's, then Pillow's built-in font, so that
generation works offline on a fresh machine (the exact pixels depend on which fonts are found).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "CARD_HEIGHT",
    "CARD_WIDTH",
    "CardSample",
    "Warp",
    "degrade",
    "make_dataset",
    "make_sample",
    "random_warp",
    "render_card",
    "unwarp_image",
    "warp_image",
]

CARD_WIDTH, CARD_HEIGHT = 176, 112
SUPERSAMPLE = 4

FIRST = ("Ada", "Alan", "Grace", "Linus", "Maria", "Yuki", "Omar", "Ines", "Kofi", "Lena", "Raj", "Sofia", "Tomas")
LAST = ("Lovelace", "Turing", "Hopper", "Okafor", "Nakamura", "Haddad", "Silva", "Novak", "Berg", "Moreau", "Kaur")
TITLES = ("Chief Engineer", "Product Designer", "Sales Director", "Data Scientist", "Architect", "Consultant")
COMPANIES = ("Northwind", "Bluefin Labs", "Acme Optics", "Quanta", "Helix & Co", "Vertex", "Lumen Works")
PALETTE = ((24, 68, 140), (170, 30, 40), (20, 120, 80), (200, 110, 20), (90, 40, 130), (30, 30, 30))
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
)


@dataclass(frozen=True)
class CardSample:
    """One card: the camera photo, the (unaligned) scan and the aligned ground truth, (3, H, W) in [0, 1]."""

    camera: Tensor
    scan: Tensor
    aligned: Tensor
    warp: Warp
    scan_hires: Tensor | None = None  # the supersampled render, only with make_sample(..., keep_hires=True)


# ----------------------------------------------------------------------------- fonts


def _font_dirs() -> list[Path]:
    dirs = []
    try:  # matplotlib ships DejaVu: the same files on every machine with the demo extra installed
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    dirs += [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu")]
    return dirs


@cache
def available_fonts() -> tuple[str, ...]:
    """Paths of the TrueType fonts used for the cards; empty if none is found (Pillow's default is used)."""
    found: dict[str, str] = {}
    for folder in _font_dirs():
        for name in FONT_FILES:
            if name not in found and (folder / name).is_file():
                found[name] = str(folder / name)
    return tuple(found[name] for name in FONT_FILES if name in found)


@cache
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path is not None:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except TypeError:  # older Pillow: the small bitmap font
        return ImageFont.load_default()


def _fitted_font(
    path: str | None, size: int, text: str, max_width: float
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest font not bigger than ``size`` whose rendering of ``text`` fits ``max_width``."""
    while size > 8:
        font = _font(path, size)
        if font.getlength(text) <= max_width:
            return font
        size -= 2
    return _font(path, size)


# ----------------------------------------------------------------------------- rendering


def _contact_lines(rng: np.random.Generator, first: str, last: str, company: str) -> list[str]:
    domain = company.lower().replace(" & ", "").replace(" ", "") + rng.choice([".com", ".io", ".org"])
    digits = "".join(str(d) for d in rng.integers(0, 10, size=7))
    return [
        f"+{rng.integers(1, 50)} {rng.integers(100, 999)} {digits[:3]} {digits[3:]}",
        f"{first.lower()}.{last.lower()}@{domain}",
        f"www.{domain}",
    ]


def _draw_logo(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[float, float, float], color) -> None:
    """A simple logo shape of side ``size`` at (x, y): disc, ring, square, triangle, diamond or bars."""
    x, y, size = box
    kind = rng.integers(0, 6)
    width = max(2, int(size / 7))
    if kind == 0:
        draw.ellipse((x, y, x + size, y + size), fill=color)
    elif kind == 1:
        draw.ellipse((x, y, x + size, y + size), outline=color, width=width)
    elif kind == 2:
        draw.rectangle((x, y, x + size, y + size), fill=color)
        draw.rectangle((x + size / 3, y + size / 3, x + 2 * size / 3, y + 2 * size / 3), fill=(250, 250, 250))
    elif kind == 3:
        draw.polygon(((x + size / 2, y), (x + size, y + size), (x, y + size)), fill=color)
    elif kind == 4:
        half = size / 2
        draw.polygon(((x + half, y), (x + size, y + half), (x + half, y + size), (x, y + half)), fill=color)
    else:
        for k in range(3):
            top = y + k * size / 3
            draw.rectangle((x, top, x + size * (1 - 0.25 * k), top + size / 5), fill=color)


def render_card(rng: np.random.Generator, scale: int = SUPERSAMPLE) -> Image.Image:
    """Render one business card at ``scale`` times (CARD_WIDTH, CARD_HEIGHT), RGB.

    One of four layouts (logo left / centred / colour band / top band), a random font for the
    name and one for the details, an accent colour for the logo and rules.
    """
    W, H = CARD_WIDTH * scale, CARD_HEIGHT * scale
    paper = tuple(int(v) for v in 255 - rng.integers(0, 14, size=3))
    image = Image.new("RGB", (W, H), paper)
    draw = ImageDraw.Draw(image)
    accent = PALETTE[rng.integers(0, len(PALETTE))]
    ink = tuple(int(v) for v in rng.integers(10, 50, size=3))
    fonts = available_fonts() or (None,)
    name_font, body_font = fonts[rng.integers(0, len(fonts))], fonts[rng.integers(0, len(fonts))]
    first, last = FIRST[rng.integers(0, len(FIRST))], LAST[rng.integers(0, len(LAST))]
    company, title = COMPANIES[rng.integers(0, len(COMPANIES))], TITLES[rng.integers(0, len(TITLES))]
    contacts = _contact_lines(rng, first, last, company)
    layout = rng.integers(0, 4)
    s = scale
    if layout == 1:  # centred
        _draw_logo(draw, rng, (W / 2 - 9 * s, 8 * s, 18 * s), accent)
        x0, width, anchor = W / 2, W - 16 * s, "ma"
    elif layout == 2:  # colour band on the left, text to its right
        draw.rectangle((0, 0, 22 * s, H), fill=accent)
        _draw_logo(draw, rng, (W - 30 * s, 8 * s, 20 * s), accent)
        x0, width, anchor = 30 * s, W - 64 * s, "la"
    else:  # logo top left (0) or logo right with a band on top (3)
        if layout == 3:
            draw.rectangle((0, 0, W, 6 * s), fill=accent)
        _draw_logo(draw, rng, ((W - 32 * s) if layout == 3 else 10 * s, 12 * s, 20 * s), accent)
        x0, width, anchor = (10 * s, W - 48 * s, "la") if layout == 3 else (36 * s, W - 46 * s, "la")
    y = 30 * s if layout == 1 else 12 * s
    font = _fitted_font(name_font, int(rng.integers(13, 17)) * s, f"{first} {last}", width)
    draw.text((x0, y), f"{first} {last}", font=font, fill=ink, anchor=anchor)
    y += font.size * 1.15 if hasattr(font, "size") else 14 * s
    font = _fitted_font(body_font, 9 * s, f"{title}, {company}", width)
    draw.text((x0, y), f"{title}, {company}", font=font, fill=accent, anchor=anchor)
    y += 13 * s
    rule = (x0 - width / 2, x0 + width / 2) if anchor == "ma" else (x0, x0 + width)
    draw.line((rule[0], y, rule[1], y), fill=accent, width=max(1, int(rng.integers(1, 3)) * s // 2))
    y += 5 * s
    for line in contacts:
        font = _fitted_font(body_font, int(rng.integers(8, 10)) * s, line, width)
        draw.text((x0, y), line, font=font, fill=ink, anchor=anchor)
        y += 11 * s
    return image


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Warp:
    """The camera's geometry: a bend, then a homography, from camera pixels to scan pixels.

    Points are (x, y) in continuous pixel coordinates of the 1x card (pixel centres at i + 0.5).
    ``camera_to_scan(p) = H(p + (0, bend(p_x)))`` with ``bend(x) = a (4 t (1 - t) - 2/3)``,
    t = x / CARD_WIDTH, a bow of the card whose mean displacement is about zero. The bend only
    moves points vertically as a function of x, so the inverse is exact.
    """

    homography: np.ndarray  # (3, 3), camera (after bend) -> scan
    bend: float

    def _bend(self, x: np.ndarray) -> np.ndarray:
        t = x / CARD_WIDTH
        return self.bend * (4.0 * t * (1.0 - t) - 2.0 / 3.0)

    def camera_to_scan(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2) camera points to scan points."""
        p = np.asarray(points, dtype=np.float64)
        bent = np.stack((p[..., 0], p[..., 1] + self._bend(p[..., 0])), axis=-1)
        return _apply_homography(self.homography, bent)

    def scan_to_camera(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2) scan points to camera points (the exact inverse of ``camera_to_scan``)."""
        bent = _apply_homography(np.linalg.inv(self.homography), np.asarray(points, dtype=np.float64))
        return np.stack((bent[..., 0], bent[..., 1] - self._bend(bent[..., 0])), axis=-1)


def _apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    homog = points @ h[:, :2].T + h[:, 2]
    return homog[..., :2] / homog[..., 2:]


def _homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography mapping four ``src`` points onto ``dst`` (direct linear transform)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def random_warp(
    rng: np.random.Generator,
    *,
    max_shift: float = 2.5,
    max_rotation_deg: float = 1.2,
    max_corner_jitter: float = 1.5,
    max_bend: float = 1.5,
) -> Warp:
    """A random camera geometry of a few pixels: translation, rotation, scale, perspective, bend.

    The camera frame's corners land on the scan's corners rotated about the centre, shifted and
    jittered independently (which adds the perspective); every term has zero mean.
    """
    w, h = CARD_WIDTH, CARD_HEIGHT
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    centre = np.array([w / 2, h / 2])
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = 1.0 + rng.uniform(-0.015, 0.015)
    shift = rng.uniform(-max_shift, max_shift, size=2)
    jitter = rng.uniform(-max_corner_jitter, max_corner_jitter, size=(4, 2))
    target = (corners - centre) @ rot.T * scale + centre + shift + jitter
    return Warp(_homography_from_points(corners, target), float(rng.uniform(-max_bend, max_bend)))


def _resample(image: Tensor, mapping, frame: tuple[int, int]) -> Tensor:
    """out(p) = image(mapping(p)) at ``image``'s resolution; ``frame`` = (width, height) of the 1x card."""
    _, rows, cols = image.shape
    scale = cols / frame[0]
    ys, xs = np.meshgrid((np.arange(rows) + 0.5) / scale, (np.arange(cols) + 0.5) / scale, indexing="ij")
    src = mapping(np.stack((xs, ys), axis=-1))
    # grid_sample, align_corners=False: -1 and 1 are the outer edges of the image
    grid = np.stack((2 * src[..., 0] / frame[0] - 1, 2 * src[..., 1] / frame[1] - 1), axis=-1)
    grid_t = torch.from_numpy(grid).to(image.dtype)[None]
    return F.grid_sample(image[None], grid_t, mode="bilinear", padding_mode="border", align_corners=False)[0]


def warp_image(image: Tensor, warp: Warp) -> Tensor:
    """Resample a scan-frame image (C, h, w) into the camera frame: out(p) = image(camera_to_scan(p)).

    ``image`` may be at any multiple of the card's resolution; output pixels are sampled at that
    same resolution (bilinear, edges repeated), so supersampled inputs stay supersampled.
    """
    return _resample(image, warp.camera_to_scan, (CARD_WIDTH, CARD_HEIGHT))


def unwarp_image(image: Tensor, warp: Warp) -> Tensor:
    """The inverse of :func:`warp_image`: bring a camera-frame image (C, h, w) into the scan frame.

    Useful to compare an output with the scan itself; the evaluation instead warps the scan.
    """
    return _resample(image, warp.scan_to_camera, (CARD_WIDTH, CARD_HEIGHT))


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _downsample(image: Tensor, factor: int) -> Tensor:
    return F.avg_pool2d(image[None], factor)[0] if factor > 1 else image


# ----------------------------------------------------------------------------- photometry


def _disk_kernel(radius: float) -> Tensor:
    """An anti-aliased disk of the given radius (defocus), normalised to sum 1."""
    half = math.ceil(radius + 1)
    ys, xs = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    kernel = (radius + 0.5 - torch.sqrt(xs**2 + ys**2)).clamp(0, 1)
    return kernel / kernel.sum()


def _illumination(rng: np.random.Generator, rows: int, cols: int) -> Tensor:
    """A smooth light field: tinted, a linear gradient, vignetting and a soft-edged shadow."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, rows), torch.linspace(-1, 1, cols), indexing="ij")
    gx, gy = rng.uniform(-0.2, 0.2, size=2)
    light = rng.uniform(0.7, 0.95) * (1 + gx * xs + gy * ys) * (1 - rng.uniform(0.05, 0.2) * (xs**2 + ys**2) / 2)
    if rng.random() < 0.7:  # the shadow of the phone or a hand: a half-plane with a soft edge
        angle = rng.uniform(0, 2 * math.pi)
        dist = math.cos(angle) * xs + math.sin(angle) * ys - rng.uniform(0.1, 0.8)
        softness = rng.uniform(0.05, 0.25)
        light = light * (1 - rng.uniform(0.2, 0.45) * torch.sigmoid(dist / softness))
    tint = torch.tensor([1.0, rng.uniform(0.94, 1.0), rng.uniform(0.82, 0.97)]).view(3, 1, 1)
    return light[None] * tint


def _jpeg(image: Tensor, quality: int) -> Tensor:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return _to_tensor(Image.open(buffer).convert("RGB"))


def degrade(aligned: Tensor, rng: np.random.Generator) -> Tensor:
    """The photometric part of the camera: defocus, light and shadow, sensor noise, JPEG."""
    kernel = _disk_kernel(rng.uniform(0.7, 1.6)).to(aligned)
    pad = kernel.shape[-1] // 2
    blurred = F.conv2d(F.pad(aligned[:, None], (pad,) * 4, mode="replicate"), kernel[None, None])[:, 0]
    lit = blurred * _illumination(rng, *aligned.shape[-2:])
    noise_rng = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
    sigma = rng.uniform(0.008, 0.025)
    noisy = lit + torch.randn(lit.shape, generator=noise_rng) * sigma * torch.sqrt(lit.clamp_min(0) + 0.1)
    return _jpeg(noisy, int(rng.integers(40, 80)))


# ----------------------------------------------------------------------------- samples


def make_sample(seed: int, *, keep_hires: bool = False) -> CardSample:
    """The card of this seed: camera photo, unaligned scan, aligned ground truth and the warp."""
    rng = np.random.default_rng(seed)
    hires = _to_tensor(render_card(rng, SUPERSAMPLE))
    warp = random_warp(rng)
    scan = _downsample(hires, SUPERSAMPLE)
    aligned = _downsample(warp_image(hires, warp), SUPERSAMPLE).clamp(0, 1)
    camera = degrade(aligned, rng)
    return CardSample(camera=camera, scan=scan, aligned=aligned, warp=warp, scan_hires=hires if keep_hires else None)


def make_dataset(count: int, seed: int) -> dict[str, Tensor]:
    """``count`` cards from seeds ``seed * 100_003 + i``, stacked: camera, scan, aligned as (count, 3, H, W) uint8.

    uint8 storage keeps a few hundred cards at a few megabytes; ``float() / 255`` recovers the images
    up to rounding.
    """
    samples = [make_sample(seed * 100_003 + i) for i in range(count)]
    return {
        key: torch.stack([(getattr(s, key) * 255).round().to(torch.uint8) for s in samples])
        for key in ("camera", "scan", "aligned")
    }
