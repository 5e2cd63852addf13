"""Measurements of what the contextual loss does, shared by the demo and the experiments.

- :func:`misalignment_study`: L1 and CX (and optionally CoBi) between a texture and shifted or
  rotated copies of itself, as fractions of their values for an unrelated texture: the claim of
  Mechrez et al. (ECCV 2018) that CX tolerates misalignment that ruins pixel-wise losses.
- :func:`unique_match_fraction`: how many target features have a match of their own, the
  statistic Zhang et al. (CVPR 2019) use to motivate CoBi.
- :func:`spearman` and :func:`gaussian_kl`: for the claim of Mechrez et al. (ACCV 2018) that the
  contextual loss tracks the KL divergence between the feature distributions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from contextual_loss._validation import check_positive_int, check_positive_number
from contextual_loss.features import extract_patches
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_similarity
from contextual_loss.synthetic import SEED_BAND_WIDTH, rotate, seed_images, texture

__all__ = [
    "MisalignmentRow",
    "MisalignmentStudy",
    "distinct_match_fraction",
    "gaussian_kl",
    "misalignment_study",
    "seed_permutations",
    "spearman",
    "unique_match_fraction",
]


def seed_permutations() -> list[tuple[tuple[int, ...], float]]:
    """CX of the seed example for each of the 6 orderings of the target's three pixels.

    CX ignores positions, so every ordering gives the definition's value 0.9878605414928291
    (band width 0.1, float64).
    """
    rows = []
    for order in itertools.permutations(range(3)):
        x, y = seed_images(order)
        rows.append((order, float(contextual_similarity(x, y, band_width=SEED_BAND_WIDTH))))
    return rows


@dataclass(frozen=True)
class MisalignmentRow:
    """One misaligned copy of the reference texture and its losses.

    Attributes:
        label: ``"shift 4 px"``, ``"rotation 5°"`` or ``"unrelated"``.
        shift: horizontal shift in pixels (0 for a rotation).
        angle: rotation in degrees (0 for a shift).
        l1: mean absolute pixel difference to the reference.
        cx_loss: contextual loss on patch features, -log CX.
        l1_fraction: ``l1`` divided by its value for the unrelated texture.
        cx_fraction: ``cx_loss`` divided by its value for the unrelated texture.
        cobi_loss: CoBi loss (paper form) or ``None`` when not measured.
        cobi_fraction: ``cobi_loss`` over its unrelated value, or ``None``.

    """

    label: str
    shift: int
    angle: float
    l1: float
    cx_loss: float
    l1_fraction: float
    cx_fraction: float
    cobi_loss: float | None = None
    cobi_fraction: float | None = None


@dataclass(frozen=True)
class MisalignmentStudy:
    """The result of :func:`misalignment_study`: its rows, settings and the images compared."""

    rows: list[MisalignmentRow]
    size: int
    patch_size: int
    band_width: float
    weight_sp: float | None
    reference: Tensor = field(repr=False)
    copies: dict[str, Tensor] = field(repr=False)

    def row(self, label: str) -> MisalignmentRow:
        """The row with the given label."""
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"no row labelled {label!r}; labels: {[r.label for r in self.rows]}")


def _losses(
    reference: Tensor, other: Tensor, patch_size: int, band_width: float, weight_sp: float | None
) -> tuple[float, float, float | None]:
    """L1 on pixels, CX loss (and CoBi loss) on n x n patches; the reference is the target."""
    fx, fy = extract_patches(other, patch_size), extract_patches(reference, patch_size)
    l1 = float((other - reference).abs().mean())
    cx = float(contextual_loss(fx, fy, band_width=band_width))
    cobi = None if weight_sp is None else float(contextual_bilateral_loss(fx, fy, weight_sp, band_width=band_width))
    return l1, cx, cobi


def misalignment_study(
    *,
    size: int = 64,
    patch_size: int = 5,
    shifts: Sequence[int] = (0, 1, 2, 4, 8),
    angle: float = 5.0,
    band_width: float = 0.5,
    weight_sp: float | None = None,
    seed: int = 0,
) -> MisalignmentStudy:
    """Compare a texture with shifted and rotated copies of itself, and with an unrelated texture.

    The reference is the centre crop of a larger :func:`~contextual_loss.synthetic.texture`; a
    copy shifted by s pixels is the crop s pixels to the right (new content enters at one border,
    as with a real camera), the rotated copy is the canvas rotated about its centre, then cropped.
    The unrelated image is a texture of the same kind with another seed. Each copy is compared as
    the prediction against the reference as the target.

    Args:
        size: side of the compared images in pixels.
        patch_size: side n of the RGB patches the contextual loss compares.
        shifts: horizontal shifts in pixels.
        angle: rotation in degrees (0 to leave it out).
        band_width: h of the contextual loss.
        weight_sp: if set, also measure CoBi (paper form) with this spatial weight.
        seed: seed of the reference texture (the unrelated one uses ``seed + 1``).

    Returns:
        The study, rows in the order: shifts, rotation, unrelated.

    """
    check_positive_int("size", size)
    check_positive_int("patch_size", patch_size)
    check_positive_number("band_width", band_width)
    margin = max([*shifts, 0]) + size // 4
    canvas = texture(size + 2 * margin, size + 2 * margin, seed=seed)

    def crop(image: Tensor, dx: int = 0) -> Tensor:
        return image[..., margin : margin + size, margin + dx : margin + dx + size]

    reference = crop(canvas)
    copies = {f"shift {s} px": crop(canvas, s) for s in shifts}
    if angle:
        copies[f"rotation {angle:g}°"] = crop(rotate(canvas, angle))
    copies["unrelated"] = crop(texture(size + 2 * margin, size + 2 * margin, seed=seed + 1))
    losses = {label: _losses(reference, image, patch_size, band_width, weight_sp) for label, image in copies.items()}
    base_l1, base_cx, base_cobi = losses["unrelated"]
    rows = []
    for label, (l1, cx, cobi) in losses.items():
        shift = int(label.split()[1]) if label.startswith("shift") else 0
        rows.append(
            MisalignmentRow(
                label=label,
                shift=shift,
                angle=float(angle) if label.startswith("rotation") else 0.0,
                l1=l1,
                cx_loss=cx,
                l1_fraction=l1 / base_l1,
                cx_fraction=cx / base_cx,
                cobi_loss=cobi,
                cobi_fraction=None if cobi is None else cobi / base_cobi,
            )
        )
    return MisalignmentStudy(rows, size, patch_size, float(band_width), weight_sp, reference, copies)


def _check_index(index: Tensor) -> Tensor:
    if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index must be an integer torch.Tensor of shape (B, M), got {index!r:.80}")
    if index.ndim == 1:
        index = index.unsqueeze(0)
    if index.ndim != 2 or index.shape[1] == 0:
        raise ValueError(f"index must have shape (B, M) with M >= 1, got {tuple(index.shape)}")
    return index.long()


def unique_match_fraction(index: Tensor) -> Tensor:
    """Fraction of target features whose matched prediction feature matches no other target.

    With ``index`` from :func:`~contextual_loss.functional.contextual_match` (``index[b, j]`` is
    the prediction feature that target j matched), target j counts when no j' != j has the same
    match: a one-to-one match in the sense of Zhang et al. (CVPR 2019).

    Args:
        index: (B, M) or (M,) integer tensor.

    Returns:
        (B,) float tensor in [0, 1].

    """
    index = _check_index(index)
    size = int(index.max()) + 1
    counts = torch.zeros(index.shape[0], size, dtype=torch.long, device=index.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    return (counts.gather(1, index) == 1).double().mean(dim=1)


def distinct_match_fraction(index: Tensor) -> Tensor:
    """Number of distinct prediction features matched, divided by the number of targets M.

    Args:
        index: (B, M) or (M,) integer tensor, as in :func:`unique_match_fraction`.

    Returns:
        (B,) float tensor in (0, 1].

    """
    index = _check_index(index)
    return torch.tensor([row.unique().numel() / index.shape[1] for row in index], dtype=torch.float64)


def _ranks(values: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank."""
    order = values.argsort(stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, values.numel() + 1, dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties).

    Raises:
        ValueError: lengths differ, fewer than 2 values, or one sequence is constant.

    """
    ta, tb = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if ta.numel() != tb.numel() or ta.numel() < 2:
        raise ValueError(f"a and b must have the same length >= 2, got {ta.numel()} and {tb.numel()}")
    ra, rb = _ranks(ta), _ranks(tb)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    if denominator == 0.0:
        raise ValueError("spearman is undefined when a sequence is constant")
    return float((ra * rb).sum()) / denominator


def gaussian_kl(mean_p: float, std_p: float, mean_q: float, std_q: float, dim: int) -> float:
    r"""KL(P || Q) for isotropic Gaussians in ``dim`` dimensions whose means differ along one axis.

    .. math::

        KL = d \log\frac{\sigma_q}{\sigma_p} + \frac{d \sigma_p^2 + (\mu_p - \mu_q)^2}{2 \sigma_q^2} - \frac{d}{2}

    for P = N(mu_p e_1, sigma_p^2 I), Q = N(mu_q e_1, sigma_q^2 I).
    """
    check_positive_int("dim", dim)
    check_positive_number("std_p", std_p)
    check_positive_number("std_q", std_q)
    return dim * math.log(std_q / std_p) + (dim * std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - dim / 2
