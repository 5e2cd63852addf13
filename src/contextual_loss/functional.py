r"""Functional API: the Contextual Loss and the Contextual Bilateral loss on feature maps.

These functions own no network: they compare two feature maps ``x`` (prediction) and ``y``
(target) of shape (B, C, H, W) as sets of H*W vectors. See :mod:`contextual_loss.maths` for the
definition and :mod:`contextual_loss.engine` for how it is evaluated.

References:
    R. Mechrez, I. Talmi, L. Zelnik-Manor. The Contextual Loss for Image Transformation with
    Non-Aligned Data. ECCV 2018.
    X. Zhang, Q. Chen, R. Ng, V. Koltun. Zoom to Learn, Learn to Zoom. CVPR 2019.

Examples:
    >>> import torch
    >>> from contextual_loss.functional import contextual_loss
    >>> x, y = torch.rand(2, 64, 16, 16), torch.rand(2, 64, 16, 16)
    >>> contextual_loss(x, y, band_width=0.5).shape
    torch.Size([])

"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from contextual_loss import engine as _engine
from contextual_loss import maths
from contextual_loss._validation import (
    check_choice,
    check_feature_pair,
    check_finite_values,
    check_nonnegative_number,
    check_positive_int,
    check_positive_number,
    check_unit_interval,
)
from contextual_loss.engine.types import ContextualMatch, SpatialTerm
from contextual_loss.sampling import sample_sets

__all__ = [
    "contextual_bilateral_loss",
    "contextual_loss",
    "contextual_match",
    "contextual_similarity",
]

Reduction = Literal["mean", "sum", "none"]
LOSS_TYPES = ("cosine", "l1", "l2")
CENTERS = ("image", "batch")
REDUCTIONS = ("mean", "sum", "none")
COBI_FORMS = ("paper", "released")
EngineName = _engine.EngineName


@contextlib.contextmanager
def _float32_math(device: torch.device) -> Iterator[None]:
    """Disable autocast so that distances and reductions run in float32 (or float64)."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _compute_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32


def _check_options(band_width: float, loss_type: str, eps: float, center: str, max_points: int | None) -> None:
    check_positive_number("band_width", band_width)
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_positive_number("eps", eps)
    check_choice("center", center, CENTERS)
    if max_points is not None:
        check_positive_int("max_points", max_points)


def _check_engine(engine: str, memory_budget: int | None) -> None:
    check_choice("engine", engine, _engine.ENGINES)
    if memory_budget is not None:
        check_positive_int("memory_budget", memory_budget)


def _spatial_option(weight_sp: float, form: str) -> tuple[float, str]:
    """Check CoBi's options; the released mixture needs a weight in [0, 1]."""
    check_choice("form", form, COBI_FORMS)
    if form == "released":
        return check_unit_interval("weight_sp", weight_sp), form
    return check_nonnegative_number("weight_sp", weight_sp), form


def _flatten(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C), positions in row-major order, each vector contiguous.

    The copy costs one pass over the features; every per-vector operation after it (norms,
    centring, the engines' row gathers and GEMMs) then reads contiguous memory, which at
    C = 256 is several times faster than the strided view.
    """
    return feature_map.flatten(2).transpose(1, 2).contiguous()


def _run(
    x: Tensor,
    y: Tensor,
    *,
    band_width: float,
    loss_type: str,
    eps: float,
    center: str,
    spatial: tuple[float, str] | None,
    max_points: int | None,
    generator: torch.Generator | None,
    want_match: bool,
    engine: str = "auto",
    memory_budget: int | None = None,
) -> Tensor | ContextualMatch:
    """Validate, flatten, sample, prepare and hand the sets to the engine."""
    check_feature_pair(x, y)
    _check_options(band_width, loss_type, eps, center, max_points)
    _check_engine(engine, memory_budget)
    check_finite_values("x", x)
    check_finite_values("y", y)
    dtype = _compute_dtype(x, y)
    with _float32_math(x.device):
        xs, ys = _flatten(x.to(dtype)), _flatten(y.to(dtype))
        form = spatial[1] if spatial is not None else "paper"
        pos_x = maths.grid_positions(*x.shape[-2:], form, device=x.device, dtype=dtype)
        pos_y = maths.grid_positions(*y.shape[-2:], form, device=y.device, dtype=dtype)
        xs, ys, pos_x, pos_y = sample_sets(
            xs, ys, pos_x, pos_y, max_points=max_points, shared=x.shape[-2:] == y.shape[-2:], generator=generator
        )
        xs, ys = maths.prepare_features(xs, ys, loss_type, center)
        term = None if spatial is None else SpatialTerm(spatial[0], spatial[1], pos_x, pos_y)
        kwargs = {
            "loss_type": loss_type,
            "band_width": float(band_width),
            "eps": float(eps),
            "spatial": term,
            "engine": engine,
            "memory_budget": memory_budget,
        }
        if want_match:
            return _engine.match(xs, ys, **kwargs)
        return _engine.log_similarity(xs, ys, **kwargs)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _loss_from_log_similarity(log_sim: Tensor, reduction: str) -> Tensor:
    # -log CX >= 0 by construction; the clamp only removes rounding of order 1e-16.
    return _reduce((-log_sim).clamp_min(0.0), reduction)


def contextual_similarity(
    x: Tensor,
    y: Tensor,
    band_width: float = 0.5,
    loss_type: str = "cosine",
    *,
    eps: float = 1e-5,
    center: str = "image",
    max_points: int | None = None,
    generator: torch.Generator | None = None,
    engine: EngineName = "auto",
    memory_budget: int | None = None,
) -> Tensor:
    r"""Contextual similarity CX(X, Y) of each image pair (Mechrez et al., ECCV 2018).

    .. math::

        CX(X, Y) = \frac{1}{M} \sum_j \max_i CX_{ij}, \qquad
        CX_{ij} = \frac{\exp((1 - \tilde d_{ij}) / h)}{\sum_k \exp((1 - \tilde d_{ik}) / h)},
        \quad \tilde d_{ij} = \frac{d_{ij}}{\min_k d_{ik} + \epsilon}.

    CX lies in [1/M, 1] (M target vectors; each row of CX_ij sums to 1): 1 when every target
    vector has an exclusive match in the prediction, 1/M for unrelated sets. It ignores
    positions: it is unchanged by permuting either set.

    Args:
        x: prediction features (B, C, H, W), floating point. float16/bfloat16 are computed in
            float32 (also under ``torch.autocast``); the result is float32 (float64 for float64).
        y: target features (B, C, H', W'); H', W' may differ from H, W.
        band_width: h > 0. Smaller values make the similarity more selective.
        loss_type: ``"cosine"`` (1 - cosine of vectors centred on the target's mean),
            ``"l1"`` (sum of absolute differences) or ``"l2"`` (squared Euclidean distance).
            ``l1`` and ``l2`` use raw, uncentred vectors, as the authors' code does.
        eps: epsilon of the relative distance d / (min d + eps), > 0.
        center: ``"image"`` (mean of each image's target vectors, the default: one sample's
            value never depends on the rest of the batch) or ``"batch"`` (mean over the whole
            batch, as the authors' code and contextual_loss_pytorch do). Cosine only.
        max_points: if set, compare at most this many randomly drawn positions per map
            (the authors used 65 * 65); the same positions for x and y when their shapes match.
        generator: ``torch.Generator`` for the sampling draws.
        engine: ``"auto"`` (default: the dense engine for small problems, the streaming engine
            otherwise), ``"dense"`` (full N x M matrices; supports double backward) or
            ``"streaming"`` (memory grows with N + M; exact first-order gradients only).
        memory_budget: bytes of strip workspace for the streaming engine (default 64 MiB). It
            bounds the engine's memory beyond the O((N + M) C) inputs and gradients; larger
            budgets mean fewer, taller strips.

    Returns:
        (B,) tensor of CX values.

    Raises:
        TypeError: non-tensor or integer inputs, non-numeric options.
        ValueError: wrong shapes, mismatched batch or channels, empty maps, NaN/inf in the
            inputs, band_width or eps <= 0, unknown loss_type, center or engine, memory_budget < 1.

    """
    log_sim = _run(
        x,
        y,
        band_width=band_width,
        loss_type=loss_type,
        eps=eps,
        center=center,
        spatial=None,
        max_points=max_points,
        generator=generator,
        want_match=False,
        engine=engine,
        memory_budget=memory_budget,
    )
    return log_sim.exp()


def contextual_loss(
    x: Tensor,
    y: Tensor,
    band_width: float = 0.5,
    loss_type: str = "cosine",
    *,
    eps: float = 1e-5,
    center: str = "image",
    reduction: Reduction = "mean",
    max_points: int | None = None,
    generator: torch.Generator | None = None,
    engine: EngineName = "auto",
    memory_budget: int | None = None,
) -> Tensor:
    r"""Contextual Loss :math:`-\log CX(X, Y)` (Mechrez et al., ECCV 2018).

    Computed in log space, so it is 0 (never negative) for identical inputs, finite for tiny
    band widths, and lies in [0, log M] for M target vectors. Arguments as in :func:`contextual_similarity`, plus
    ``reduction``: ``"mean"`` (default) or ``"sum"`` over the batch of per-image losses, or
    ``"none"`` for the (B,) vector.

    Examples:
        >>> import torch
        >>> x = torch.rand(1, 3, 8, 8)
        >>> float(contextual_loss(x, x))
        0.0

    """
    check_choice("reduction", reduction, REDUCTIONS)
    log_sim = _run(
        x,
        y,
        band_width=band_width,
        loss_type=loss_type,
        eps=eps,
        center=center,
        spatial=None,
        max_points=max_points,
        generator=generator,
        want_match=False,
        engine=engine,
        memory_budget=memory_budget,
    )
    return _loss_from_log_similarity(log_sim, reduction)


def contextual_bilateral_loss(
    x: Tensor,
    y: Tensor,
    weight_sp: float = 0.1,
    band_width: float = 0.5,
    loss_type: str = "cosine",
    *,
    form: str = "paper",
    eps: float = 1e-5,
    center: str = "image",
    reduction: Reduction = "mean",
    max_points: int | None = None,
    generator: torch.Generator | None = None,
    engine: EngineName = "auto",
    memory_budget: int | None = None,
) -> Tensor:
    r"""Contextual Bilateral loss, CoBi (Zhang et al., CVPR 2019).

    ``form="paper"`` (default) runs the contextual loss on the combined distance

    .. math::

        d_{ij} + w_s \, D'_{ij}, \qquad D'_{ij} = \lVert p_i - q_j \rVert_2,

    where p_i, q_j are the positions of the two vectors: pixel centres scaled by
    1 / max(H, W), so the aspect ratio is kept and maps of any size share one frame. Read w_s
    against the scale of the feature distance: cosine lies in [0, 2], while l1/l2 grow with the
    number of channels. ``weight_sp = 0`` gives exactly the contextual loss.

    ``form="released"`` reproduces the released code: (1 - w_s) CX_feat + w_s CX_spatial, the
    spatial CX computed from squared distances on the grid (r / (H + 1), c / (W + 1)). On equal
    grids CX_spatial is close to the identity, so this form rewards co-located pairs and, for
    w_s >= 0.5, degenerates to an aligned loss. It is offered to reproduce old numbers only; its
    reduction runs in the CX direction (max over prediction, mean over target), not reversed.

    Args:
        x, y, band_width, loss_type, eps, center, reduction, max_points, generator, engine,
            memory_budget: as in :func:`contextual_loss`.
        weight_sp: w_s >= 0 (``released``: in [0, 1]).
        form: ``"paper"`` or ``"released"``.

    Returns:
        The reduced loss, or the (B,) per-image losses for ``reduction="none"``.

    """
    check_choice("reduction", reduction, REDUCTIONS)
    log_sim = _run(
        x,
        y,
        band_width=band_width,
        loss_type=loss_type,
        eps=eps,
        center=center,
        spatial=_spatial_option(weight_sp, form),
        max_points=max_points,
        generator=generator,
        want_match=False,
        engine=engine,
        memory_budget=memory_budget,
    )
    return _loss_from_log_similarity(log_sim, reduction)


def contextual_match(
    x: Tensor,
    y: Tensor,
    band_width: float = 0.5,
    loss_type: str = "cosine",
    *,
    weight_sp: float | None = None,
    form: str = "paper",
    eps: float = 1e-5,
    center: str = "image",
    engine: EngineName = "auto",
    memory_budget: int | None = None,
) -> ContextualMatch:
    """What the loss matched: for each target vector, its best prediction vector and similarity.

    Returns a :class:`~contextual_loss.engine.types.ContextualMatch` with ``index`` (B, M), the
    row-major position i*(j) = argmax_i CX_ij in x of the match of target position j,
    ``similarity`` (B, M) = max_i CX_ij (its mean over j is CX), and ``log_similarity`` (B,).
    With ``weight_sp`` set, the matches are those of CoBi in the given ``form``. No sampling:
    every position is matched. Arguments as in :func:`contextual_bilateral_loss`.
    """
    spatial = None if weight_sp is None else _spatial_option(weight_sp, form)
    return _run(
        x,
        y,
        band_width=band_width,
        loss_type=loss_type,
        eps=eps,
        center=center,
        spatial=spatial,
        max_points=None,
        generator=None,
        want_match=True,
        engine=engine,
        memory_budget=memory_budget,
    )
