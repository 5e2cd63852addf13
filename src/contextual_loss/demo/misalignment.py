"""The misalignment study: the claim of Mechrez et al. (ECCV 2018) that CX tolerates misalignment.

:func:`misalignment_study` measures L1 and CX (and optionally CoBi) between a texture and shifted
or rotated copies of itself, as fractions of their values for an unrelated texture;
:func:`plot_misalignment` draws them (needs matplotlib) with the claim's two thresholds: CX stays
below :data:`CX_CLAIM` of its unrelated value up to a 4 px shift, while L1 passes :data:`L1_CLAIM`
within 1-2 px. The demo (``contextual-loss demo``) and ``experiments/misalignment.py`` run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from contextual_loss._validation import check_positive_int, check_positive_number
from contextual_loss.demo.images import rotate, texture
from contextual_loss.features import extract_patches
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

__all__ = [
    "CX_CLAIM",
    "L1_CLAIM",
    "MisalignmentRow",
    "MisalignmentStudy",
    "copy_labels",
    "misalignment_study",
    "plot_misalignment",
]

#: The claim's bound for CX: below this fraction of its unrelated value up to a 4 px shift.
CX_CLAIM = 0.10
#: The claim's level for L1: above this fraction of its unrelated value within 1-2 px.
L1_CLAIM = 0.40


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


def _row(
    label: str, losses: tuple[float, float, float | None], unrelated: tuple[float, float, float | None], angle: float
) -> MisalignmentRow:
    """The row of one copy: its losses and their fractions of the unrelated texture's."""
    (l1, cx, cobi), (base_l1, base_cx, base_cobi) = losses, unrelated
    return MisalignmentRow(
        label=label,
        shift=int(label.split()[1]) if label.startswith("shift") else 0,
        angle=float(angle) if label.startswith("rotation") else 0.0,
        l1=l1,
        cx_loss=cx,
        l1_fraction=l1 / base_l1,
        cx_fraction=cx / base_cx,
        cobi_loss=cobi,
        cobi_fraction=None if cobi is None or base_cobi is None else cobi / base_cobi,
    )


def copy_labels(shifts: Sequence[int], angle: float) -> list[str]:
    """The labels of the copies :func:`misalignment_study` makes, in its order (known before it runs).

    Args:
        shifts: horizontal shifts in pixels.
        angle: rotation in degrees (0: no rotated copy).

    Returns:
        ``"shift {s} px"`` per shift, ``"rotation {angle}°"`` if ``angle``, then ``"unrelated"``.

    Examples:
        >>> copy_labels((0, 2), 5.0)
        ['shift 0 px', 'shift 2 px', 'rotation 5°', 'unrelated']

    """
    return [f"shift {s} px" for s in shifts] + ([f"rotation {angle:g}°"] if angle else []) + ["unrelated"]


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

    The reference is the centre crop of a larger :func:`~contextual_loss.demo.images.texture`; a
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
    images = [crop(canvas, s) for s in shifts] + ([crop(rotate(canvas, angle))] if angle else [])
    images.append(crop(texture(size + 2 * margin, size + 2 * margin, seed=seed + 1)))
    copies = dict(zip(copy_labels(shifts, angle), images, strict=True))
    losses = {label: _losses(reference, image, patch_size, band_width, weight_sp) for label, image in copies.items()}
    rows = [_row(label, values, losses["unrelated"], angle) for label, values in losses.items()]
    return MisalignmentStudy(rows, size, patch_size, float(band_width), weight_sp, reference, copies)


def plot_misalignment(study: MisalignmentStudy, *, show_images: bool = True) -> Figure:
    """L1 and CX (and CoBi) of shifted and rotated copies, as fractions of the unrelated value.

    Left: the reference, a shifted copy, the rotated copy and the unrelated texture. Right: the
    fractions against the shift, with the rotation as separate markers, and dotted lines at the
    claim's thresholds :data:`CX_CLAIM` (blue) and :data:`L1_CLAIM` (red).
    """
    from contextual_loss.viz import require_matplotlib

    Figure = require_matplotlib()
    figure = Figure(figsize=(9.5 if show_images else 5.0, 3.6), layout="constrained")
    grid = figure.add_gridspec(2, 4 if show_images else 1, width_ratios=[1, 1, 2.6, 0.01] if show_images else None)
    if show_images:
        _draw_copies(figure, grid, study)
    _draw_fractions(figure.add_subplot(grid[:, 2 if show_images else 0]), study)
    return figure


def _draw_copies(figure: Figure, grid: GridSpec, study: MisalignmentStudy) -> None:
    """The reference, the most shifted copy, the rotated copy and the unrelated texture, 2 x 2."""
    from contextual_loss.viz import draw_image

    largest = max((row for row in study.rows if row.label.startswith("shift")), key=lambda r: r.shift)
    picks = [("reference (target)", study.reference), (largest.label, study.copies[largest.label])]
    picks += [(row.label, study.copies[row.label]) for row in study.rows if row.angle]
    picks.append(("unrelated", study.copies["unrelated"]))
    for k, (name, image) in enumerate(picks[:4]):
        draw_image(figure.add_subplot(grid[k // 2, k % 2]), image, name)


def _draw_fractions(ax: Axes, study: MisalignmentStudy) -> None:
    """Each loss over its unrelated value against the shift; the rotation as open markers at the right."""
    shifts = [row for row in study.rows if row.label.startswith("shift")]
    rotation = [row for row in study.rows if row.angle]
    xs = [row.shift for row in shifts]
    patches = f"{study.patch_size}x{study.patch_size} patches"
    ax.plot(xs, [row.l1_fraction for row in shifts], "o-", color="tab:red", label="L1 (pixels)")
    ax.plot(xs, [row.cx_fraction for row in shifts], "s-", color="tab:blue", label=f"CX loss ({patches})")
    if shifts and shifts[0].cobi_fraction is not None:
        cobi = [row.cobi_fraction for row in shifts if row.cobi_fraction is not None]  # all set with weight_sp
        ax.plot(xs, cobi, "^-", color="tab:green", label=f"CoBi loss (w_s={study.weight_sp})")
    at = xs[-1] + 1.5
    for row in rotation:
        ax.plot([at], [row.l1_fraction], "o", color="tab:red", mfc="white")
        ax.plot([at], [row.cx_fraction], "s", color="tab:blue", mfc="white")
        if row.cobi_fraction is not None:
            ax.plot([at], [row.cobi_fraction], "^", color="tab:green", mfc="white")
        ax.annotate(
            row.label, (at, row.l1_fraction), textcoords="offset points", xytext=(0, 8), fontsize=8, ha="center"
        )
    ax.axhline(CX_CLAIM, color="tab:blue", ls=":", lw=1)
    ax.axhline(L1_CLAIM, color="tab:red", ls=":", lw=1)
    ax.set_xticks([*xs, *([at] if rotation else [])])
    ax.set_xticklabels([*map(str, xs), *(["rot."] if rotation else [])])
    ax.set_xlabel("horizontal shift (px)")
    ax.set_ylabel("loss / loss for an unrelated texture")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.5, xs[-1] + 2.7)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.12))
    ax.set_title(f"misaligned copies of a {study.size}x{study.size} texture, band width {study.band_width}", fontsize=9)
