"""Engines that evaluate the contextual similarity of prepared feature sets.

The functional API prepares features (flatten, sample, centre, normalise) and hands the sets to
an engine. An engine returns log CX(X, Y) per image and, on request, the per-target matches. The
dense engine (:mod:`contextual_loss.engine.dense`) builds the full N x M matrices; it is the
reference that every other engine is tested against.
"""

from __future__ import annotations

from torch import Tensor

from contextual_loss.engine.dense import dense_log_similarity, dense_match
from contextual_loss.engine.types import ContextualMatch, SpatialTerm
from contextual_loss.maths import Distance

__all__ = ["ContextualMatch", "SpatialTerm", "dense_log_similarity", "dense_match", "log_similarity", "match"]


def log_similarity(
    x: Tensor, y: Tensor, *, loss_type: Distance, band_width: float, eps: float, spatial: SpatialTerm | None = None
) -> Tensor:
    """Log CX(X, Y) for each image, (B,), on the engine best suited to the problem size."""
    return dense_log_similarity(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)


def match(
    x: Tensor, y: Tensor, *, loss_type: Distance, band_width: float, eps: float, spatial: SpatialTerm | None = None
) -> ContextualMatch:
    """Per-target best matches (see :class:`ContextualMatch`) on the engine best suited to the size."""
    return dense_match(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
