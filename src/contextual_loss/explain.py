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

from dataclasses import dataclass, field

import torch
from torch import Tensor

from contextual_loss import maths
from contextual_loss._pipeline import evaluate, full_precision, prepare
from contextual_loss.options import DEFAULTS, ContextualOptions

__all__ = ["MATRIX_LIMIT", "MatchExplanation", "explain_match"]

#: ``explain_match(matrices=None)`` returns the N x M matrices when N * M is at most this.
MATRIX_LIMIT = 4096

#: The options an explanation records in ``settings``.
_SETTINGS = ("band_width", "loss_type", "weight_sp", "form", "eps", "center")


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
        settings: the options used (band_width, loss_type, weight_sp, form, eps, center).

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

    @property
    def unique_fraction(self) -> float:
        """Fraction of target positions whose match is exclusive (one-to-one)."""
        return float(self.unique.double().mean())

    @property
    def target_shape(self) -> tuple[int, int]:
        """(H', W') of the target map."""
        return (int(self.index.shape[0]), int(self.index.shape[1]))


def _as_single(name: str, value: Tensor) -> Tensor:
    if isinstance(value, Tensor) and value.ndim == 3:
        value = value.unsqueeze(0)
    if isinstance(value, Tensor) and value.ndim == 4 and value.shape[0] != 1:
        raise ValueError(f"{name} must hold one feature map, (1, C, H, W) or (C, H, W), got {tuple(value.shape)}")
    return value


def _matrices(x: Tensor, y: Tensor, options: ContextualOptions) -> tuple[Tensor, Tensor]:
    """(N, M) d~_ij and CX_ij in float64: the same preparation as the loss, then the definition's maths."""
    sets = prepare(x, y, options, dtype=torch.float64)
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


def explain_match(
    x: Tensor,
    y: Tensor,
    band_width: float = DEFAULTS.band_width,
    loss_type: str = DEFAULTS.loss_type,
    *,
    weight_sp: float | None = DEFAULTS.weight_sp,
    form: str = DEFAULTS.form,
    eps: float = DEFAULTS.eps,
    center: str = DEFAULTS.center,
    matrices: bool | None = None,
) -> MatchExplanation:
    r"""Explain what the contextual loss matched between one prediction and one target feature map.

    For each target position j: the prediction position :math:`i^*(j) = \arg\max_i CX_{ij}`,
    the displacement from j to it, :math:`\max_i CX_{ij}`, and whether :math:`i^*(j)` is the
    match of j alone. Arguments as in :func:`contextual_loss.functional.contextual_match`.

    Args:
        x: prediction features (1, C, H, W) or (C, H, W).
        y: target features (1, C, H', W') or (C, H', W').
        band_width: h > 0.
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``.
        weight_sp: if set, explain CoBi's matches with this spatial weight.
        form: CoBi form, ``"paper"`` or ``"released"``.
        eps: epsilon of the relative distance.
        center: ``"image"`` or ``"batch"`` (the same for one image).
        matrices: also return the N x M matrices d~_ij and CX_ij; ``None`` (default) does so when
            N * M <= :data:`MATRIX_LIMIT`.

    Returns:
        A :class:`MatchExplanation`.

    Raises:
        ValueError, TypeError: as :func:`~contextual_loss.functional.contextual_match`, or a batch
            of more than one map.

    """
    options = ContextualOptions.from_arguments(locals())
    x, y = _as_single("x", x), _as_single("y", y)
    result = evaluate(x, y, options)
    (height_x, width_x), (height_y, width_y) = x.shape[-2:], y.shape[-2:]
    index = result.prediction_index[0]
    source = torch.stack((index // width_x, index % width_x), dim=-1).view(height_y, width_y, 2)
    rows, cols = torch.meshgrid(torch.arange(height_y), torch.arange(width_y), indexing="ij")
    # Pixel centres of the source, rescaled to the target grid, minus the target's own position.
    scale = torch.tensor([height_y / height_x, width_y / width_x], dtype=torch.float64)
    mapped = (source.cpu().double() + 0.5) * scale - 0.5
    displacement = mapped - torch.stack((rows, cols), dim=-1).double()
    want = matrices if matrices is not None else x.shape[-2] * x.shape[-1] * height_y * width_y <= MATRIX_LIMIT
    rel, cx_mat = _matrices(x, y, options) if want else (None, None)
    return MatchExplanation(
        cx=float(result.log_similarity[0].exp()),
        index=index.view(height_y, width_y).cpu(),
        source=source.cpu(),
        displacement=displacement,
        similarity=result.best[0].exp().view(height_y, width_y).cpu(),
        unique=_unique_flags(index).view(height_y, width_y).cpu(),
        prediction_shape=(int(height_x), int(width_x)),
        relative_distance=None if rel is None else rel.cpu(),
        cx_matrix=None if cx_mat is None else cx_mat.cpu(),
        settings={name: getattr(options, name) for name in _SETTINGS},
    )


def _unique_flags(index: Tensor) -> Tensor:
    """Per target: True when its match is the match of no other target."""
    counts = torch.bincount(index, minlength=int(index.max()) + 1)
    return counts[index] == 1
