r"""Functional API: the Contextual Loss and the Contextual Bilateral loss on feature maps.

These functions own no network: they compare two feature maps ``x`` (prediction) and ``y``
(target) of shape (B, C, H, W) as sets of H*W vectors. See :mod:`contextual_loss.maths` for the
definition and :mod:`contextual_loss.engine` for how it is evaluated.

References:
    R. Mechrez, I. Talmi, L. Zelnik-Manor. The Contextual Loss for Image Transformation with
    Non-Aligned Data. ECCV 2018.
    X. Zhang, Q. Chen, R. Ng, V. Koltun. Zoom to Learn, Learn to Zoom. CVPR 2019.

Under ``torch.compile`` (``fullgraph=True`` works with the dense engine) two steps take another
form: the check for NaN and infinity becomes ``torch._assert_async`` (a ``RuntimeError`` when the
compiled code runs, instead of a ``ValueError``), and sampling (``max_points``) with your own
``generator`` is not traced: the graph breaks there, and ``fullgraph=True`` raises (sampling
without a ``generator`` is traced).

Examples:
    >>> import torch
    >>> from contextual_loss.functional import contextual_loss
    >>> x, y = torch.rand(2, 64, 16, 16), torch.rand(2, 64, 16, 16)
    >>> contextual_loss(x, y, band_width=0.5).shape
    torch.Size([])

"""

from __future__ import annotations

import torch
from torch import Tensor

from contextual_loss._deprecation import moved
from contextual_loss._pipeline import evaluate, per_image_loss, reduce_batch
from contextual_loss.engine.types import ContextualMatch
from contextual_loss.options import (
    DEFAULT_WEIGHT_SP,
    DEFAULTS,
    FUNCTIONAL_COBI_BAND_WIDTH,
    Center,
    CoBiForm,
    ContextualOptions,
    Distance,
    EngineName,
    Reduction,
    Sample,
    check_reduction,
)

__all__ = [
    "contextual_bilateral_loss",
    "contextual_loss",
    "contextual_match",
    "contextual_similarity",
]

# Each function keeps its drop-in signature (defaults from ``DEFAULTS``) and passes its arguments
# to ``ContextualOptions.from_arguments(locals())`` first thing, which picks and validates the options.


def contextual_similarity(
    x: Tensor,
    y: Tensor,
    band_width: float = DEFAULTS.band_width,
    loss_type: Distance = DEFAULTS.loss_type,
    *,
    eps: float = DEFAULTS.eps,
    center: Center = DEFAULTS.center,
    max_points: int | None = DEFAULTS.max_points,
    sample: Sample = DEFAULTS.sample,
    generator: torch.Generator | None = None,
    engine: EngineName = DEFAULTS.engine,
    memory_budget: int | None = DEFAULTS.memory_budget,
) -> Tensor:
    r"""Contextual similarity CX(X, Y) of each image pair (Mechrez et al., ECCV 2018).

    .. math::

        CX(X, Y) = \frac{1}{M} \sum_j \max_i CX_{ij}, \qquad
        CX_{ij} = \frac{\exp((1 - \tilde d_{ij}) / h)}{\sum_k \exp((1 - \tilde d_{ik}) / h)},
        \quad \tilde d_{ij} = \frac{d_{ij}}{\min_k d_{ik} + \epsilon}.

    CX lies in [1/M, 1] (M target vectors; each row of CX_ij sums to 1): 1 when every target
    vector has an exclusive match in the prediction, 1/M for unrelated sets. It ignores
    positions: it is unchanged by permuting either set. Exact duplicates among the target's
    vectors cap it below 1 (:func:`contextual_loss.explain.target_duplicates`; docs/definition.md,
    section 6.3).

    Args:
        x, y, band_width, loss_type, eps, center, max_points, sample, generator, engine,
            memory_budget: as in :func:`contextual_loss` (which has no ``reduction`` here).

    Returns:
        (B,) tensor of CX values, float32 (float64 for float64 inputs).

    Raises:
        TypeError, ValueError: as :func:`contextual_loss`.

    Examples:
        >>> import torch
        >>> x = torch.rand(2, 3, 8, 8)
        >>> contextual_similarity(x, x, loss_type="l1")
        tensor([1., 1.])

    """
    options = ContextualOptions.from_arguments(locals())
    return evaluate(x, y, options, generator=generator).log_similarity.exp()


def contextual_loss(
    x: Tensor,
    y: Tensor,
    band_width: float = DEFAULTS.band_width,
    loss_type: Distance = DEFAULTS.loss_type,
    *,
    eps: float = DEFAULTS.eps,
    center: Center = DEFAULTS.center,
    reduction: Reduction = "mean",
    max_points: int | None = DEFAULTS.max_points,
    sample: Sample = DEFAULTS.sample,
    generator: torch.Generator | None = None,
    engine: EngineName = DEFAULTS.engine,
    memory_budget: int | None = DEFAULTS.memory_budget,
) -> Tensor:
    r"""Contextual Loss :math:`-\log CX(X, Y)` between feature maps (Mechrez et al., ECCV 2018).

    Each image's H * W feature vectors are compared as a set with the target's H' * W' vectors
    (see :func:`contextual_similarity` for CX; docs/definition.md for the whole definition).
    Computed in log space: the loss lies in [0, log M] for M target vectors, is never negative,
    and stays finite for band widths down to 1e-3. It is exactly 0 for identical inputs whose
    target vectors are all distinct and far apart compared with h * eps (docs/definition.md,
    section 6.3); duplicates, and for ``l1``/``l2`` features of tiny scale, keep it above 0.

    Args:
        x: prediction features (B, C, H, W), floating point. float16/bfloat16 are computed in
            float32 (also under ``torch.autocast``); the gradient reaches ``x`` in its own dtype.
        y: target features (B, C, H', W'): the same B and C; H', W' may differ from H, W.
        band_width: h > 0. Smaller values make the similarity more selective.
        loss_type: the feature distance d_ij: ``"cosine"`` (1 - cosine of vectors centred on the
            target's mean; the papers' choice for deep features), ``"l1"`` (sum of absolute
            differences) or ``"l2"`` (squared Euclidean distance; what the modules use for pixels
            and patches). ``l1`` and ``l2`` use raw, uncentred vectors, as the authors' code does.
        eps: epsilon > 0 of the relative distance d / (min d + eps).
        center: the cosine distance's centre: ``"image"`` (mean of each image's target vectors,
            the default: one image's value never depends on the rest of the batch) or
            ``"batch"`` (mean over the whole batch, as the authors' code and
            contextual_loss_pytorch do). Not used by ``l1``/``l2``.
        reduction: ``"mean"`` (default) or ``"sum"`` of the per-image losses over the batch, or
            ``"none"`` for the (B,) per-image losses.
        max_points: if set, compare at most this many randomly drawn positions per map (the
            authors used 65 * 65); the same positions of x and y when their shapes agree.
        sample: which maps ``max_points`` samples: ``"both"`` (default; the authors' choice, for
            training) or only the ``"target"``: every prediction position is kept, so each
            sampled target vector still meets its true match, at a cost of N * max_points
            (the command line compares images so: a shift of 1 px then costs little, where
            sampling both maps makes any shift look almost unrelated; docs/cli.md).
        generator: ``torch.Generator`` for the sampling draws (``max_points``).
        engine: ``"auto"`` (default: the dense engine for small problems, the streaming engine
            otherwise), ``"dense"`` (full N x M matrices; supports double backward) or
            ``"streaming"`` (memory grows with N + M; exact first-order gradients).
        memory_budget: bytes of strip workspace for the streaming engine (default 64 MiB). It
            bounds the engine's memory beyond the O((N + M) C) inputs and gradients; larger
            budgets mean fewer, taller strips.

    Returns:
        The loss: a scalar for ``"mean"`` and ``"sum"``, the (B,) per-image losses for
        ``"none"``; float32 (float64 for float64 inputs), differentiable with respect to x and y.

    Raises:
        TypeError: x or y is not a dense floating-point tensor; an option of the wrong type
            (e.g. ``band_width="0.5"``); a ``generator`` that is not a ``torch.Generator``.
        ValueError: x or y is not (B, C, H, W), is empty or holds NaN/inf; their B or C differ;
            ``band_width`` or ``eps`` <= 0; an unknown ``loss_type``, ``center``, ``reduction``
            ``engine`` or ``sample``; ``max_points`` or ``memory_budget`` < 1.

    Examples:
        >>> import torch
        >>> x, y = torch.rand(2, 64, 16, 16), torch.rand(2, 64, 12, 12)
        >>> contextual_loss(x, y).shape, contextual_loss(x, y, reduction="none").shape
        (torch.Size([]), torch.Size([2]))
        >>> float(contextual_loss(x, x))
        0.0

    """
    options = ContextualOptions.from_arguments(locals())
    check_reduction(reduction)
    return reduce_batch(per_image_loss(x, y, options, generator=generator), reduction)


def contextual_bilateral_loss(
    x: Tensor,
    y: Tensor,
    weight_sp: float = DEFAULT_WEIGHT_SP,
    band_width: float = FUNCTIONAL_COBI_BAND_WIDTH,
    loss_type: Distance = DEFAULTS.loss_type,
    *,
    form: CoBiForm = DEFAULTS.form,
    eps: float = DEFAULTS.eps,
    center: Center = DEFAULTS.center,
    reduction: Reduction = "mean",
    max_points: int | None = DEFAULTS.max_points,
    sample: Sample = DEFAULTS.sample,
    generator: torch.Generator | None = None,
    engine: EngineName = DEFAULTS.engine,
    memory_budget: int | None = DEFAULTS.memory_budget,
) -> Tensor:
    r"""Contextual Bilateral loss, CoBi (Zhang et al., CVPR 2019), between feature maps.

    ``form="paper"`` (default) runs the contextual loss on the combined distance

    .. math::

        d_{ij} + w_s \, D'_{ij}, \qquad D'_{ij} = \lVert p_i - q_j \rVert_2,

    where p_i, q_j are the positions of the two vectors: pixel centres scaled by
    1 / max(H, W), so the aspect ratio is kept and maps of any size share one frame. Read w_s
    against the scale of the feature distance: cosine lies in [0, 2] (w_s = 0.1, the default),
    while l1/l2 grow with the number of channels (1.0 suits the l1 and l2 distances of 5 x 5
    RGB patches). ``weight_sp = 0`` gives exactly the contextual loss.

    ``form="released"`` reproduces the released code: (1 - w_s) CX_feat + w_s CX_spatial, the
    spatial CX computed from squared distances on the grid (r / (H + 1), c / (W + 1)). On equal
    grids CX_spatial is close to the identity, so this form rewards co-located pairs and, for
    w_s >= 0.5, degenerates to an aligned loss. It is offered to reproduce old numbers only; its
    reduction runs in the CX direction (max over prediction, mean over target), not reversed.

    Args:
        x: prediction features (B, C, H, W), floating point.
        y: target features (B, C, H', W').
        weight_sp: w_s >= 0 (``released``: in [0, 1]).
        band_width: h > 0; **1.0 by default**, as contextual_loss_pytorch's function (the modules
            and the other functions default to 0.5).
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``.
        form: ``"paper"`` or ``"released"``.
        eps, center, reduction, max_points, sample, generator, engine, memory_budget: as in
            :func:`contextual_loss`.

    Returns:
        The reduced loss (a scalar), or the (B,) per-image losses for ``reduction="none"``.

    Raises:
        TypeError, ValueError: as :func:`contextual_loss`; also ``weight_sp`` < 0 (> 1 for
            ``released``), an unknown ``form``, or ``weight_sp=None``.

    Examples:
        >>> import torch
        >>> x = torch.rand(1, 3, 8, 8)
        >>> float(contextual_bilateral_loss(x, x))
        0.0
        >>> float(contextual_bilateral_loss(x, x.flip(-1), weight_sp=0.0, band_width=0.5)) == float(
        ...     contextual_loss(x, x.flip(-1)))  # w_s = 0 is CX, which ignores positions
        True

    """
    options = ContextualOptions.from_arguments(locals(), bilateral=True)
    check_reduction(reduction)
    return reduce_batch(per_image_loss(x, y, options, generator=generator), reduction)


def contextual_match(
    x: Tensor,
    y: Tensor,
    band_width: float = DEFAULTS.band_width,
    loss_type: Distance = DEFAULTS.loss_type,
    *,
    weight_sp: float | None = DEFAULTS.weight_sp,
    form: CoBiForm = DEFAULTS.form,
    eps: float = DEFAULTS.eps,
    center: Center = DEFAULTS.center,
    engine: EngineName = DEFAULTS.engine,
    memory_budget: int | None = DEFAULTS.memory_budget,
) -> ContextualMatch:
    """What the loss matched: for each target vector, its best prediction vector and similarity.

    No sampling: every position is matched. For pictures of the matches see
    :func:`contextual_loss.explain.explain_match`.

    Args:
        x: prediction features (B, C, H, W).
        y: target features (B, C, H', W').
        band_width: h > 0 (0.5 by default, also with ``weight_sp``: pass 1.0 to match the
            functional :func:`contextual_bilateral_loss`'s default).
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``.
        weight_sp: ``None`` (default) for CX's matches; a number w_s >= 0 for CoBi's.
        form: CoBi's form, ``"paper"`` or ``"released"`` (with ``weight_sp``).
        eps, center, engine, memory_budget: as in :func:`contextual_loss`.

    Returns:
        A :class:`~contextual_loss.engine.types.ContextualMatch`: ``prediction_index`` (B, M)
        int64, the row-major position i*(j) = argmax_i CX_ij in x of the match of target
        position j; ``similarity`` (B, M) = max_i CX_ij (its mean over j is CX); and
        ``log_similarity`` (B,) = log CX.

    Raises:
        TypeError, ValueError: as :func:`contextual_loss` and :func:`contextual_bilateral_loss`.

    Examples:
        >>> import torch
        >>> x = torch.rand(1, 3, 2, 2)
        >>> y = x.flip(-1)  # the target is the prediction mirrored left-right
        >>> contextual_match(x, y, loss_type="l1").prediction_index
        tensor([[1, 0, 3, 2]])

    """
    result = evaluate(x, y, ContextualOptions.from_arguments(locals()))
    return ContextualMatch(result.log_similarity, result.prediction_index, result.best.exp())


# Until the next release: the choice tuples once defined here live in contextual_loss.options.
__getattr__ = moved(
    __name__,
    {name: f"contextual_loss.options:{name}" for name in ("LOSS_TYPES", "CENTERS", "REDUCTIONS", "COBI_FORMS")},
)
