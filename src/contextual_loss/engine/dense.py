"""Dense reference engine: builds the full (B, N, M) matrices with plain autograd.

Memory grows with N x M (and autograd keeps several such matrices for backward), so this engine
is meant for small sets and as the readable reference the streaming engine is tested against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contextual_loss import maths
from contextual_loss.engine.types import ContextualMatch, SpatialTerm

__all__ = ["dense_log_cx_matrix", "dense_log_similarity", "dense_match"]


def dense_log_cx_matrix(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> Tensor:
    """The (B, N, M) matrix of log CX_ij (or of the CoBi combination) of prepared sets."""
    d = maths.feature_distance(x, y, loss_type)
    if spatial is None:
        return maths.log_cx_matrix(d, band_width, eps)
    d_sp = maths.spatial_distance(spatial.pos_x.to(d), spatial.pos_y.to(d), spatial.form)
    if spatial.form == "paper":
        return maths.log_cx_matrix(d + spatial.weight * d_sp, band_width, eps)
    log_sp = maths.log_cx_matrix(d_sp, band_width, eps)
    return maths.mix_released(maths.log_cx_matrix(d, band_width, eps), log_sp, spatial.weight)


def dense_log_similarity(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> Tensor:
    """Log CX(X, Y) per image, (B,)."""
    a = dense_log_cx_matrix(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
    return maths.log_similarity_from_matrix(a)


def dense_match(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: maths.Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
) -> ContextualMatch:
    """Per-target matches i*(j), max_i CX_ij and log CX(X, Y), from the dense matrix."""
    a = dense_log_cx_matrix(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
    best, index = a.max(dim=1)
    log_sim = torch.logsumexp(best, dim=-1) - math.log(best.shape[-1])
    return ContextualMatch(log_similarity=log_sim, prediction_index=index, similarity=best.exp())
