"""Small data types shared by the engines and the functional API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from contextual_loss.maths import CoBiForm

__all__ = ["ContextualMatch", "EngineResult", "SpatialTerm"]


@dataclass(frozen=True)
class SpatialTerm:
    """The spatial part of CoBi (Zhang et al., CVPR 2019).

    Attributes:
        weight: w_s. ``paper`` form: added to the feature distance, d_ij + w_s D'_ij.
            ``released`` form: mixing weight of (1 - w_s) CX_feat + w_s CX_spatial.
        form: ``"paper"`` (our definition) or ``"released"`` (the released code's mixture).
        pos_x: (N, 2) positions of the prediction's vectors in the form's frame.
        pos_y: (M, 2) positions of the target's vectors.

    """

    weight: float
    form: CoBiForm
    pos_x: Tensor
    pos_y: Tensor


class ContextualMatch(NamedTuple):
    """What the loss matched, per target vector.

    Attributes:
        log_similarity: (B,) log CX(X, Y).
        index: (B, M) int64, for each target vector j the prediction index i*(j) = argmax_i CX_ij
            (the first index on ties).
        similarity: (B, M) max_i CX_ij, the per-target best similarity; its mean over j is CX.

    """

    log_similarity: Tensor
    index: Tensor
    similarity: Tensor


class EngineResult(NamedTuple):
    """What an engine returns for prepared sets x (B, N, C) and y (B, M, C): enough for the loss and the match.

    Attributes:
        log_similarity: (B,) log CX(X, Y), differentiable with respect to x and y.
        best: (B, M) max_i log CX_ij for each target vector j (no gradient); its log-mean-exp over
            j is ``log_similarity``.
        index: (B, M) int64, the prediction index i*(j) attaining ``best`` (the first on ties).

    """

    log_similarity: Tensor
    best: Tensor
    index: Tensor
