"""Small data types shared by the engines and the functional API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from contextual_loss.maths import CoBiForm

__all__ = ["ContextualMatch", "SpatialTerm"]


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
