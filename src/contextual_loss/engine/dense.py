"""Dense reference engine: builds the full (B, N, M) matrices with plain autograd.

Memory grows with N x M (and autograd keeps several such matrices for backward), so this engine
is meant for small sets and as the readable reference the streaming engine is tested against.
"""

from __future__ import annotations

import math

from torch import Tensor

from contextual_loss import maths
from contextual_loss._deprecation import warn_renamed
from contextual_loss.engine import nearfield
from contextual_loss.engine.types import ContextualMatch, EngineResult, SpatialTerm

__all__ = ["dense_evaluate", "dense_log_cx_matrix", "dense_log_similarity", "dense_match"]


def dense_log_cx_matrix(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> Tensor:
    """The (B, N, M) matrix of log CX_ij (or of the CoBi combination) of prepared sets.

    The feature distances are those of :func:`maths.feature_distance`, evaluated accurately where
    the similarity is sensitive to their rounding (:func:`nearfield.dense_distance`).
    """
    if spatial is None:
        return maths.log_cx_matrix(nearfield.dense_distance(x, y, loss_type, band_width, eps), band_width, eps)
    d_sp = maths.spatial_distance(spatial.pos_x.to(x), spatial.pos_y.to(x), spatial.form)
    if spatial.form == "paper":
        extra = spatial.weight * d_sp
        d = nearfield.dense_distance(x, y, loss_type, band_width, eps, extra.expand(x.shape[0], -1, -1))
        return maths.log_cx_matrix(d + extra, band_width, eps)
    d = nearfield.dense_distance(x, y, loss_type, band_width, eps)
    log_sp = maths.log_cx_matrix(d_sp, band_width, eps)
    return maths.mix_released(maths.log_cx_matrix(d, band_width, eps), log_sp, spatial.weight)


def dense_evaluate(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> EngineResult:
    """Log CX per image (B,) and the per-target best matches (B, M) of prepared sets x (B, N, C), y (B, M, C)."""
    a = dense_log_cx_matrix(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
    best, index = a.max(dim=1)
    log_sim = best.logsumexp(dim=-1) - math.log(best.shape[-1])
    return EngineResult(log_sim, best.detach(), index)


def dense_log_similarity(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> Tensor:
    """Deprecated: ``dense_evaluate(...).log_similarity`` (same arguments)."""
    warn_renamed("contextual_loss.engine.dense_log_similarity", "dense_evaluate(...).log_similarity")
    return dense_evaluate(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial).log_similarity


def dense_match(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> ContextualMatch:
    """Deprecated: per-target matches from :func:`dense_evaluate` (same arguments) as a :class:`ContextualMatch`."""
    warn_renamed("contextual_loss.engine.dense_match", "dense_evaluate(...)")
    result = dense_evaluate(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
    return ContextualMatch(
        log_similarity=result.log_similarity, prediction_index=result.prediction_index, similarity=result.best.exp()
    )
