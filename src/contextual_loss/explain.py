r"""What the contextual loss matched, as data for plots.

The contextual similarity (Mechrez et al., ECCV 2018) rewards each target feature y_j for its best
prediction feature, :math:`\max_i CX_{ij}`. :func:`explain_match` returns, for every target
position, where that best prediction feature sits (and so the displacement the loss tolerated),
how strong the match is, whether it is exclusive, and, for small sets, the full matrices of
relative distances :math:`\tilde d_{ij}` and similarities :math:`CX_{ij}`. With ``weight_sp`` set
the matches are those of CoBi (Zhang et al., CVPR 2019). Plotting lives in
:mod:`contextual_loss.viz` (needs matplotlib); this module does not.

Examples:
    >>> import torch
    >>> from contextual_loss.explain import explain_match
    >>> x = torch.rand(1, 3, 4, 4)
    >>> y = x.flip(-1)  # the target is the prediction mirrored left-right
    >>> explanation = explain_match(x, y)
    >>> explanation.source[0, 0].tolist()  # target (0, 0) matched the prediction's (0, 3)
    [0, 3]

"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from contextual_loss import maths
from contextual_loss._pipeline import PreparedSets, evaluate_prepared, full_precision, prepare
from contextual_loss.options import DEFAULTS, Center, CoBiForm, ContextualOptions, Distance, Sample

__all__ = ["MATRIX_LIMIT", "Duplicates", "MatchExplanation", "explain_match", "target_duplicates"]

#: ``explain_match(matrices=None)`` returns the N x M matrices when N * M is at most this.
MATRIX_LIMIT = 4096

#: The options an explanation records in ``settings``.
_SETTINGS = ("band_width", "loss_type", "weight_sp", "form", "eps", "center", "max_points", "sample")


@dataclass(frozen=True)
class MatchExplanation:
    """Per-target matches of the contextual similarity between two feature maps.

    Positions are (row, col) cells of the feature maps; for patch features with reflect or zero
    padding they are the image's pixels.

    Attributes:
        cx: CX(X, Y) (with ``weight_sp``: the CoBi similarity), the mean of ``similarity``.
        index: (H', W') int64, the row-major index in the prediction map of each target's match.
        source: (H', W', 2) int64, that match's (row, col) in the prediction map.
        displacement: (H', W', 2) float, source minus target position in target cells (the
            source is rescaled to the target's grid when the two maps differ in size).
        similarity: (H', W') float, max_i CX_ij for each target j.
        unique: (H', W') bool, whether no other target matched the same prediction feature.
        prediction_shape: (H, W) of the prediction map.
        relative_distance: (N, M) relative distances d~_ij (prediction i, target j), or ``None``.
        cx_matrix: (N, M) CX_ij, or ``None``.
        settings: the options used (band_width, loss_type, weight_sp, form, eps, center, max_points).
        sampled: (H', W') bool, the target cells compared when positions are sampled
            (``max_points``), or ``None`` when every cell is. At the other cells ``index`` and
            ``source`` are -1, ``displacement`` and ``similarity`` NaN, ``unique`` False.
        duplicates: the exact duplicates among the compared target vectors and the cap they put
            on CX (:class:`Duplicates`).

    Examples:
        >>> import torch
        >>> x = torch.rand(1, 3, 5, 5)
        >>> e = explain_match(x, x, loss_type="l1")
        >>> e.cx, e.unique_fraction, e.target_shape, e.displacement.abs().max().item()
        (1.0, 1.0, (5, 5), 0.0)

    """

    cx: float
    index: Tensor
    source: Tensor
    displacement: Tensor
    similarity: Tensor
    unique: Tensor
    prediction_shape: tuple[int, int]
    relative_distance: Tensor | None = field(default=None, repr=False)
    cx_matrix: Tensor | None = field(default=None, repr=False)
    settings: dict[str, object] = field(default_factory=dict)
    sampled: Tensor | None = field(default=None, repr=False)
    duplicates: Duplicates | None = None

    @property
    def unique_fraction(self) -> float:
        """Fraction of the compared target positions whose match is exclusive (one-to-one)."""
        unique = self.unique if self.sampled is None else self.unique[self.sampled]
        return float(unique.double().mean())

    @property
    def compared(self) -> int:
        """How many target positions were compared (all of them unless positions are sampled)."""
        return self.index.numel() if self.sampled is None else int(self.sampled.sum())

    @property
    def target_shape(self) -> tuple[int, int]:
        """(H', W') of the target map."""
        return (int(self.index.shape[0]), int(self.index.shape[1]))


@dataclass(frozen=True)
class Duplicates:
    r"""Exact duplicates among a target's feature vectors, and the cap they put on CX.

    Target vectors at distance 0 from each other share their similarity: for every prediction,
    :math:`\max_i CX_{ij} \le 1 / K_j`, where :math:`K_j` is the size of :math:`y_j`'s group of
    identical vectors (docs/definition.md, section 6.3, (13)), so

    .. math::

        CX(X, Y) \le \frac{1}{M} \sum_j \frac{1}{K_j} = \frac{D}{M}, \qquad
        -\log CX(X, Y) \ge \log \frac{M}{D},

    with D the number of distinct vectors; CX(X, X) reaches the cap when the distinct vectors
    are far apart compared with h * eps. Only bitwise-equal vectors are counted: with the cosine
    distance collinear centred vectors are at distance 0 too, and can lower CX further, so
    :attr:`cap` is an upper bound for every distance.

    Attributes:
        features: M, the number of target vectors.
        duplicated: how many of them have at least one exact duplicate.
        groups: D, the number of distinct vectors.

    Examples:
        >>> found = Duplicates(features=16, duplicated=4, groups=13)
        >>> found.cap, round(found.loss_floor, 4)
        (0.8125, 0.2076)

    """

    features: int
    duplicated: int
    groups: int

    @property
    def cap(self) -> float:
        """D / M: no prediction reaches a higher CX against this target (1.0 without duplicates)."""
        return self.groups / self.features

    @property
    def loss_floor(self) -> float:
        """log(M / D): no prediction reaches a lower CX loss against this target (0 without duplicates)."""
        return math.log(self.features / self.groups)


def target_duplicates(y: Tensor) -> Duplicates:
    """Count the exact duplicates among the feature vectors of one target map.

    Args:
        y: target features (1, C, H, W) or (C, H, W): H * W vectors of C values.

    Returns:
        A :class:`Duplicates` with the number of vectors, of those with an exact duplicate, of
        distinct vectors, and the cap on CX they imply.

    Raises:
        TypeError: ``y`` is not a tensor.
        ValueError: ``y`` is not one (C, H, W) map, or it is empty.

    Examples:
        >>> import torch
        >>> from contextual_loss.explain import target_duplicates
        >>> y = torch.rand(1, 3, 4, 4)
        >>> y[..., 0, :] = 0.5  # a flat row: 4 identical pixels
        >>> found = target_duplicates(y)
        >>> found.features, found.duplicated, found.groups, found.cap
        (16, 4, 13, 0.8125)

    """
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of shape (1, C, H, W) or (C, H, W), got {type(y).__name__}")
    y = _as_single("y", y)
    if y.ndim != 4 or y.numel() == 0:
        raise ValueError(f"y must be one non-empty feature map, (1, C, H, W) or (C, H, W), got {tuple(y.shape)}")
    vectors = y[0].flatten(1).T  # (M, C)
    _, inverse, counts = torch.unique(vectors, dim=0, return_inverse=True, return_counts=True)
    return Duplicates(
        features=int(vectors.shape[0]), duplicated=int((counts[inverse] > 1).sum()), groups=int(counts.numel())
    )


def _as_single(name: str, value: Tensor) -> Tensor:
    if isinstance(value, Tensor) and value.ndim == 3:
        value = value.unsqueeze(0)
    if isinstance(value, Tensor) and value.ndim == 4 and value.shape[0] != 1:
        raise ValueError(f"{name} must hold one feature map, (1, C, H, W) or (C, H, W), got {tuple(value.shape)}")
    return value


def _matrices(sets: PreparedSets, options: ContextualOptions) -> tuple[Tensor, Tensor]:
    """(N, M) d~_ij and CX_ij in float64 of sets prepared in float64: the definition's maths."""
    with full_precision(sets.x.device):
        d = maths.feature_distance(sets.x, sets.y, options.loss_type)
        if sets.spatial is None:
            log_cx = maths.log_cx_matrix(d, options.band_width, options.eps)
        else:
            weight, form = sets.spatial.weight, sets.spatial.form
            d_spatial = maths.spatial_distance(sets.spatial.pos_x, sets.spatial.pos_y, form)
            log_cx = maths.bilateral_log_cx_matrix(d, d_spatial, weight, form, options.band_width, options.eps)
            if form == "paper":  # the relative distance of the combined distance the softmax sees
                d = maths.bilateral_distance(d, d_spatial, weight)
    return maths.relative_distance(d, options.eps)[0], log_cx[0].exp()


def _replayable(generator: torch.Generator | None, options: ContextualOptions) -> torch.Generator | None:
    """A generator whose draws can be repeated (for the float64 matrices): the caller's, or one seeded now."""
    if options.max_points is None or generator is not None:
        return generator
    return torch.Generator().manual_seed(int(torch.randint(2**62, ())))  # from the global generator


def _clone(generator: torch.Generator | None) -> torch.Generator | None:
    if generator is None:
        return None
    return torch.Generator(device=generator.device).set_state(generator.get_state())


def explain_match(
    x: Tensor,
    y: Tensor,
    band_width: float = DEFAULTS.band_width,
    loss_type: Distance = DEFAULTS.loss_type,
    *,
    weight_sp: float | None = DEFAULTS.weight_sp,
    form: CoBiForm = DEFAULTS.form,
    eps: float = DEFAULTS.eps,
    center: Center = DEFAULTS.center,
    max_points: int | None = DEFAULTS.max_points,
    sample: Sample = DEFAULTS.sample,
    generator: torch.Generator | None = None,
    matrices: bool | None = None,
) -> MatchExplanation:
    r"""Explain what the contextual loss matched between one prediction and one target feature map.

    For each target position j: the prediction position :math:`i^*(j) = \arg\max_i CX_{ij}`,
    the displacement from j to it, :math:`\max_i CX_{ij}`, and whether :math:`i^*(j)` is the
    match of j alone; and how many target features have an exact duplicate, which caps CX
    (:class:`Duplicates`). The values are those of the losses: ``explanation.cx`` is
    ``contextual_similarity(x, y, ...)`` (with ``weight_sp``, CoBi's similarity) for the same
    arguments and ``generator`` state.

    Args:
        x: prediction features (1, C, H, W) or (C, H, W).
        y: target features (1, C, H', W') or (C, H', W').
        band_width: h > 0.
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``.
        weight_sp: if set, explain CoBi's matches with this spatial weight.
        form: CoBi form, ``"paper"`` or ``"released"``.
        eps: epsilon of the relative distance.
        center: ``"image"`` or ``"batch"`` (the same for one image).
        max_points: if set, compare at most this many positions of each map, drawn at random as
            the losses draw them; the other target positions are left out of the explanation
            (``sampled`` marks the kept ones).
        sample: which maps ``max_points`` samples, ``"both"`` or only the ``"target"`` (see
            :func:`contextual_loss.functional.contextual_loss`).
        generator: ``torch.Generator`` for the sampling draws.
        matrices: also return the N x M matrices d~_ij and CX_ij (of the compared vectors);
            ``None`` (default) does so when N * M <= :data:`MATRIX_LIMIT`.

    Returns:
        A :class:`MatchExplanation`.

    Raises:
        ValueError, TypeError: as :func:`~contextual_loss.functional.contextual_match`, or a batch
            of more than one map.

    Examples:
        >>> import torch
        >>> x = torch.rand(1, 3, 16, 16)
        >>> e = explain_match(x, x, loss_type="l1", max_points=50, generator=torch.Generator().manual_seed(0))
        >>> e.cx, int(e.sampled.sum()), e.duplicates.cap
        (1.0, 50, 1.0)

    """
    options = ContextualOptions.from_arguments(locals())
    x, y = _as_single("x", x), _as_single("y", y)
    generator = _replayable(generator, options)
    replay = _clone(generator)
    sets = prepare(x, y, options, generator=generator)
    result = evaluate_prepared(sets, options)
    positions = _Positions(x.shape[-2:], y.shape[-2:], sets.index_x, sets.index_y)
    index = positions.prediction(result.prediction_index[0])
    want = matrices if matrices is not None else sets.x.shape[1] * sets.y.shape[1] <= MATRIX_LIMIT
    rel, cx_mat = (None, None)
    if want:  # the same vectors (the same draws), prepared in float64
        rel, cx_mat = _matrices(prepare(x, y, options, generator=replay, dtype=torch.float64), options)
    compared = torch.ones_like(index, dtype=torch.bool)
    return MatchExplanation(
        cx=float(result.log_similarity[0].exp()),
        index=positions.on_target_grid(index, -1).cpu(),
        source=positions.source(index),
        displacement=positions.displacement(index),
        similarity=positions.on_target_grid(result.best[0].exp(), math.nan).cpu(),
        unique=positions.on_target_grid(_unique_flags(index), False).cpu(),
        prediction_shape=positions.prediction_shape,
        relative_distance=None if rel is None else rel.cpu(),
        cx_matrix=None if cx_mat is None else cx_mat.cpu(),
        settings={name: getattr(options, name) for name in _SETTINGS},
        sampled=None if sets.index_y is None else positions.on_target_grid(compared, False).cpu(),
        duplicates=target_duplicates(sets.y[0].T.unsqueeze(-1)),
    )


class _Positions:
    """Maps between the compared (possibly sampled) vectors and the cells of the two feature maps.

    Args:
        prediction_shape: (H, W) of the prediction map.
        target_shape: (H', W') of the target map.
        index_x: row-major cells of the compared prediction vectors, ``None`` for all.
        index_y: the same for the target.

    """

    def __init__(
        self, prediction_shape: torch.Size, target_shape: torch.Size, index_x: Tensor | None, index_y: Tensor | None
    ) -> None:
        self.prediction_shape = (int(prediction_shape[0]), int(prediction_shape[1]))
        self.target_shape = (int(target_shape[0]), int(target_shape[1]))
        self.index_x, self.index_y = index_x, index_y

    def prediction(self, match: Tensor) -> Tensor:
        """Row-major cells in the prediction map of the matches (indices into the compared prediction vectors)."""
        return match if self.index_x is None else self.index_x[match]

    def on_target_grid(self, values: Tensor, fill: float | bool) -> Tensor:
        """(H', W'): one value per compared target vector at its cell, ``fill`` at cells not compared."""
        if self.index_y is None:
            return values.view(self.target_shape)
        grid = torch.full(
            (self.target_shape[0] * self.target_shape[1],), fill, dtype=values.dtype, device=values.device
        )
        grid[self.index_y] = values
        return grid.view(self.target_shape)

    def source(self, index: Tensor) -> Tensor:
        """(H', W', 2) int64: the (row, col) of each target's match in the prediction map; -1 where not compared."""
        width = self.prediction_shape[1]
        rows_cols = torch.stack((index // width, index % width), dim=-1)
        grid = torch.full((*self.target_shape, 2), -1, dtype=torch.int64)
        flat = grid.view(-1, 2)
        flat[slice(None) if self.index_y is None else self.index_y.cpu()] = rows_cols.cpu()
        return grid

    def displacement(self, index: Tensor) -> Tensor:
        """(H', W', 2) float64: source minus target cell, in target cells; NaN where not compared."""
        (height_x, width_x), (height_y, width_y) = self.prediction_shape, self.target_shape
        source = self.source(index).double()
        rows, cols = torch.meshgrid(torch.arange(height_y), torch.arange(width_y), indexing="ij")
        # Pixel centres of the source, rescaled to the target grid, minus the target's own position.
        scale = torch.tensor([height_y / height_x, width_y / width_x], dtype=torch.float64)
        moved = (source + 0.5) * scale - 0.5 - torch.stack((rows, cols), dim=-1).double()
        return moved.masked_fill(source < 0, math.nan)


def _unique_flags(index: Tensor) -> Tensor:
    """Per target: True when its match is the match of no other target."""
    counts = torch.bincount(index, minlength=int(index.max()) + 1)
    return counts[index] == 1
