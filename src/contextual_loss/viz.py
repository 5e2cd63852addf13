"""Figures of what the contextual loss matched (needs the ``viz`` extra: matplotlib).

matplotlib is imported only when a function here is called, so the rest of the package never
needs it; without it, :func:`require_matplotlib` raises :class:`MissingExtraError`, which says
``pip install "contextual-loss[viz]"``. Figures are drawn with the object-oriented API on the
non-interactive Agg canvas, so they work on machines without a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from contextual_loss._deprecation import moved
from contextual_loss.explain import MatchExplanation

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MissingExtraError",
    "displacement_to_rgb",
    "draw_image",
    "plot_explanation",
    "require_matplotlib",
    "save_figure",
]

#: Matrices up to this many rows and columns get their values written in the cells.
ANNOTATE_LIMIT = 12


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def require_matplotlib() -> Any:
    """Import matplotlib's ``Figure`` class with the Agg canvas, or explain how to install it.

    Returns:
        ``matplotlib.figure.Figure``.

    Raises:
        MissingExtraError: matplotlib is not installed.

    Examples:
        >>> Figure = require_matplotlib()
        >>> Figure.__name__
        'Figure'

    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingExtraError(
            "plotting needs matplotlib, which is not installed; install the viz extra: "
            'pip install "contextual-loss[viz]"'
        ) from error
    return Figure


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``figure`` to ``path`` (the format by its ending), creating the folder.

    Args:
        figure: a matplotlib ``Figure``, e.g. from :func:`plot_explanation`.
        path: the file to write (``.png``, ``.pdf``, ``.svg``, ...); an existing file is overwritten.
        dpi: resolution of raster formats.

    Returns:
        The path written.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> figure = require_matplotlib()(figsize=(2, 2))
        >>> save_figure(figure, Path(tempfile.mkdtemp()) / "figs" / "empty.png").name
        'empty.png'

    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(file, dpi=dpi, bbox_inches="tight")
    return file


def displacement_to_rgb(displacement: Tensor | np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour a (H, W, 2) field of (row, col) displacements: hue = direction, saturation = length.

    Zero displacement is white; a displacement of ``max_magnitude`` (default: the largest in
    the field) is fully saturated. Right is red, down is yellow-green, left cyan, up violet.

    Args:
        displacement: (H, W, 2) displacements, (row, col) in cells.
        max_magnitude: the length drawn fully saturated; longer ones are clipped.

    Returns:
        (H, W, 3) float array in [0, 1].

    Examples:
        >>> import numpy as np
        >>> field = np.array([[[0.0, 0.0], [0.0, 1.0]]])  # no move, one cell to the right
        >>> displacement_to_rgb(field).round(2).tolist()
        [[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]]

    """
    field = np.asarray(displacement, dtype=np.float64)
    dy, dx = field[..., 0], field[..., 1]
    magnitude = np.hypot(dx, dy)
    scale = max_magnitude if max_magnitude else max(float(magnitude.max()), 1e-12)
    hue = (np.arctan2(dy, dx) / (2 * math.pi)) % 1.0
    saturation = np.clip(magnitude / scale, 0.0, 1.0)
    return _hsv_to_rgb(hue, saturation)


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """HSV (value 1) to RGB without importing matplotlib."""
    sector = np.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p, q, t = 1.0 - saturation, 1.0 - saturation * frac, 1.0 - saturation * (1.0 - frac)
    one = np.ones_like(hue)
    choices = [(one, t, p), (q, one, p), (p, one, t), (p, q, one), (t, p, one), (one, p, q)]
    sector = sector.astype(int) % 6
    rgb = np.zeros((*hue.shape, 3))
    for k, (r, g, b) in enumerate(choices):
        mask = sector == k
        rgb[mask] = np.stack((r[mask], g[mask], b[mask]), axis=-1)
    return rgb


def _image_array(image: Tensor) -> np.ndarray:
    pixels = image.detach().float().cpu()
    if pixels.ndim == 4:
        pixels = pixels[0]
    array = pixels.clamp(0, 1).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def draw_image(ax: Axes, image: Tensor, title: str) -> None:
    """Show a (1, C, H, W) or (C, H, W) image with values in [0, 1] on ``ax``, without ticks.

    Args:
        ax: a matplotlib ``Axes``.
        image: the image (C = 1 is drawn grey, C = 3 as RGB).
        title: the axes' title.

    Examples:
        >>> import torch
        >>> ax = require_matplotlib()().add_subplot()
        >>> draw_image(ax, torch.rand(3, 8, 8), "noise")
        >>> ax.get_title()
        'noise'

    """
    array = _image_array(image)
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _colour_wheel(ax: Axes) -> None:
    """A small legend disc: the colour of each displacement direction."""
    size = 41
    grid = np.linspace(-1, 1, size)
    cols, rows = np.meshgrid(grid, grid)
    wheel = displacement_to_rgb(np.stack((rows, cols), axis=-1), max_magnitude=1.0)
    alpha = (np.hypot(rows, cols) <= 1.0).astype(float)
    ax.imshow(np.concatenate((wheel, alpha[..., None]), axis=-1), interpolation="bilinear")
    ax.set_axis_off()


def _fill_gaps(values: np.ndarray, known: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Spread each known cell's value over the unknown cells within ``radius`` (nearest first).

    With sampled positions only some cells of a map are known; spreading them into small blocks
    keeps them visible at any figure size.
    """
    values, known = values.copy(), known.copy()
    offsets = sorted(
        ((dr, dc) for dr in range(-radius, radius + 1) for dc in range(-radius, radius + 1) if dr or dc),
        key=lambda o: o[0] ** 2 + o[1] ** 2,
    )
    source, source_known = values.copy(), known.copy()
    height, width = known.shape
    for dr, dc in offsets:
        rows_to = slice(max(dr, 0), height + min(dr, 0))
        cols_to = slice(max(dc, 0), width + min(dc, 0))
        rows_from = slice(max(-dr, 0), height + min(-dr, 0))
        cols_from = slice(max(-dc, 0), width + min(-dc, 0))
        take = source_known[rows_from, cols_from] & ~known[rows_to, cols_to]
        values[rows_to, cols_to][take] = source[rows_from, cols_from][take]
        known[rows_to, cols_to] |= take
    return values, known


def _compared(explanation: MatchExplanation) -> tuple[np.ndarray, int]:
    """The compared target cells (H', W') and the radius that makes sampled cells visible."""
    if explanation.sampled is None:
        return np.ones(explanation.target_shape, dtype=bool), 0
    mask = explanation.sampled.numpy()
    spacing = math.sqrt(mask.size / max(int(mask.sum()), 1))
    return mask, int(spacing // 2)


def _arrow_cells(known: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """One compared cell per step x step block of the map: where the arrows start."""
    rows, cols = np.nonzero(known)
    blocks = (rows // step) * (known.shape[1] // step + 1) + cols // step
    _, first = np.unique(blocks, return_index=True)
    return rows[first], cols[first]


def _draw_displacement(ax: Axes, explanation: MatchExplanation, max_arrows: int) -> None:
    field = explanation.displacement.numpy()
    known, radius = _compared(explanation)
    magnitude = np.hypot(field[..., 0], field[..., 1])
    # Saturate at the typical displacement, so a few far-off matches do not wash out the rest.
    scale = max(float(np.percentile(magnitude[known], 90)), 1.0)
    colours = displacement_to_rgb(np.nan_to_num(field), max_magnitude=scale)
    colours[~known] = 0.85  # cells not compared (sampled positions): grey
    if radius:
        colours, _ = _fill_gaps(colours, known, radius)
    ax.imshow(colours, interpolation="nearest")
    height, width = field.shape[:2]
    step = max(1, math.ceil(max(height, width) / max_arrows))
    if explanation.sampled is None:
        rows, cols = np.mgrid[step // 2 : height : step, step // 2 : width : step]
    else:
        rows, cols = _arrow_cells(known, step)
    # Arrows start at the target cell and end at the cell of its match in the prediction; matches far
    # beyond the typical displacement (e.g. content that entered at a border) are drawn faint.
    far = magnitude[rows, cols] > 3.0 * scale
    for mask, colour, alpha in ((~far, "black", 0.8), (far, "0.45", 0.35)):
        if mask.any():
            ax.quiver(
                cols[mask],
                rows[mask],
                field[rows, cols, 1][mask],
                field[rows, cols, 0][mask],
                angles="xy",
                scale_units="xy",
                scale=1.0,
                color=colour,
                alpha=alpha,
                width=0.005,
                headwidth=4.0,
                minlength=0.0,
            )
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    median = float(np.median(magnitude[known]))
    where = "" if explanation.sampled is None else f"; {int(known.sum())} sampled cells"
    ax.set_title(
        f"displacement to each target cell's match\n(median {median:.1f} cells; faint: far off{where})", fontsize=9
    )
    inset = ax.inset_axes((1.02, 0.0, 0.18, 0.18))
    _colour_wheel(inset)


def _short(value: float) -> str:
    """Three decimals, or scientific notation for tiny values (CX_ij spans many decades)."""
    return f"{value:.3f}" if value == 0.0 or abs(value) >= 0.001 else f"{value:.0e}"


def _draw_matrix(ax: Axes, matrix: np.ndarray, title: str, *, cmap: str, fmt: Any, mark_column_max: bool) -> Any:
    image = ax.imshow(matrix, cmap=cmap, interpolation="nearest", aspect="auto")
    rows, cols = matrix.shape
    ax.set_xlabel("target j")
    ax.set_ylabel("prediction i")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(cols) if cols <= ANNOTATE_LIMIT else [])
    ax.set_yticks(range(rows) if rows <= ANNOTATE_LIMIT else [])
    if rows > ANNOTATE_LIMIT or cols > ANNOTATE_LIMIT:
        return image
    best = matrix.argmax(axis=0)
    for i in range(rows):
        for j in range(cols):
            # White text where the colour map is dark.
            dark = sum(image.cmap(image.norm(matrix[i, j]))[:3]) < 1.5
            bold = mark_column_max and best[j] == i
            ax.text(
                j,
                i,
                fmt(float(matrix[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
                fontweight="bold" if bold else "normal",
            )
            if bold:
                ax.add_patch(_rectangle(j, i))
    return image


def _rectangle(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def plot_explanation(
    explanation: MatchExplanation,
    prediction: Tensor | None = None,
    target: Tensor | None = None,
    *,
    title: str | None = None,
    max_arrows: int = 12,
) -> Figure:
    """Draw what the loss matched: the images, the match displacements, the per-target similarity.

    Top row: the prediction and target images (when given); the displacement from each target
    cell to its match in the prediction, coloured by direction (hue) and length (saturation),
    with arrows on a coarse grid; and the per-target best similarity max_i CX_ij, with targets
    whose match is shared by another target hatched. When the explanation carries the matrices
    (small sets), a second row shows d~_ij and CX_ij, the column maxima (the matches) boxed in red.

    Args:
        explanation: from :func:`contextual_loss.explain.explain_match`.
        prediction: the prediction image (1, C, H, W), for display.
        target: the target image, for display.
        title: figure title; by default the CX value and the one-to-one fraction.
        max_arrows: arrows along the longer side of the map.

    Returns:
        A matplotlib ``Figure`` (Agg canvas); save it with :func:`save_figure`.

    Raises:
        MissingExtraError: matplotlib is not installed.

    Examples:
        >>> import torch
        >>> from contextual_loss.explain import explain_match
        >>> x = torch.rand(1, 3, 6, 6)
        >>> figure = plot_explanation(explain_match(x, x.roll(1, -1), loss_type="l1"), x, x.roll(1, -1))
        >>> len(figure.axes) > 4
        True

    """
    Figure = require_matplotlib()
    images = [(img, name) for img, name in ((prediction, "prediction"), (target, "target")) if img is not None]
    has_matrices = explanation.cx_matrix is not None
    ncols = len(images) + 2
    figure = Figure(figsize=(3.2 * ncols, 6.0 if has_matrices else 3.4), layout="constrained")
    grid = figure.add_gridspec(2, ncols, height_ratios=[1, 1.4]) if has_matrices else figure.add_gridspec(1, ncols)
    for k, (img, name) in enumerate(images):
        draw_image(figure.add_subplot(grid[0, k]), img, f"{name} {tuple(img.shape[-2:])}")
    _draw_displacement(figure.add_subplot(grid[0, len(images)]), explanation, max_arrows)
    _draw_similarity(figure, figure.add_subplot(grid[0, len(images) + 1]), explanation)
    if has_matrices:
        half = ncols // 2
        _draw_matrices(figure, figure.add_subplot(grid[1, :half]), figure.add_subplot(grid[1, half:]), explanation)
    figure.suptitle(title or _summary(explanation), fontsize=10)
    return figure


def _draw_similarity(figure: Figure, ax: Axes, explanation: MatchExplanation) -> None:
    """The per-target best similarity, targets whose match is shared hatched (cells not compared: blank)."""
    values, shared = explanation.similarity.numpy(), ~explanation.unique.numpy()
    known, radius = _compared(explanation)
    shared &= known
    if radius:
        values, _ = _fill_gaps(values, known, radius)
        shared, _ = _fill_gaps(shared, known, radius)
    similarity = ax.imshow(values, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    if shared.any():
        ax.contourf(shared.astype(float), levels=[0.5, 1.5], colors="none", hatches=["///"])
    ax.set_title("best similarity max_i CX_ij\n(hatched: match not one-to-one)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    figure.colorbar(similarity, ax=ax, shrink=0.8)


def _draw_matrices(figure: Figure, ax_d: Axes, ax_c: Axes, explanation: MatchExplanation) -> None:
    """The matrices d~_ij and CX_ij side by side, each with its colour bar."""
    img_d = _draw_matrix(
        ax_d,
        np.asarray(explanation.relative_distance),
        "relative distance d~_ij = d_ij / (min_k d_ik + eps)",
        cmap="viridis_r",
        fmt=lambda v: f"{v:.2f}",
        mark_column_max=False,
    )
    figure.colorbar(img_d, ax=ax_d, shrink=0.8)
    img_c = _draw_matrix(
        ax_c,
        np.asarray(explanation.cx_matrix),
        "CX_ij (rows sum to 1); red: max over i, the match of j",
        cmap="magma",
        fmt=_short,
        mark_column_max=True,
    )
    figure.colorbar(img_c, ax=ax_c, shrink=0.8)


def _summary(explanation: MatchExplanation) -> str:
    """The default title: the similarity, its loss, the one-to-one fraction and the band width."""
    settings = explanation.settings
    loss_name = "CoBi" if settings.get("weight_sp") is not None else "CX"
    return (
        f"{loss_name} = {explanation.cx:.4f} (loss {-math.log(explanation.cx):.4f}), "
        f"one-to-one matches {100 * explanation.unique_fraction:.0f}%, band width {settings.get('band_width')}"
    )


# Until the next release: plot_misalignment serves the demo and lives with its study now.
__getattr__ = moved(__name__, {"plot_misalignment": "contextual_loss.demo.misalignment:plot_misalignment"})
