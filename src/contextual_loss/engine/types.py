"""Small data types shared by the engines and the functional API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from contextual_loss._deprecation import warn_renamed
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


class _MatchFields(NamedTuple):
    log_similarity: Tensor
    prediction_index: Tensor
    similarity: Tensor


class ContextualMatch(_MatchFields):
    """What the loss matched, per target vector.

    A named tuple, so it unpacks as ``log_similarity, prediction_index, similarity = match``.

    Attributes:
        log_similarity: (B,) log CX(X, Y).
        prediction_index: (B, M) int64, for each target vector j the index i*(j) = argmax_i CX_ij
            of its match among the prediction's vectors (the first index on ties).
        similarity: (B, M) max_i CX_ij, the per-target best similarity; its mean over j is CX.

    Until the next release the old name ``index`` of ``prediction_index`` still works, as an
    attribute and as a keyword of the constructor, with a ``DeprecationWarning``.

    """

    __slots__ = ()

    def __new__(
        cls,
        log_similarity: Tensor,
        prediction_index: Tensor | None = None,
        similarity: Tensor | None = None,
        *,
        index: Tensor | None = None,
    ) -> ContextualMatch:
        """Build a match; ``index=`` is the deprecated keyword of ``prediction_index``."""
        if index is not None:
            warn_renamed("ContextualMatch(index=...)", "ContextualMatch(prediction_index=...)")
            prediction_index = index
        if prediction_index is None or similarity is None:
            raise TypeError("ContextualMatch needs log_similarity, prediction_index and similarity")
        return super().__new__(cls, log_similarity, prediction_index, similarity)

    @property  # it hid tuple.index (a method) and will go with the old name
    def index(self) -> Tensor:  # type: ignore[override]
        """Deprecated name of :attr:`prediction_index`."""
        warn_renamed("ContextualMatch.index", "ContextualMatch.prediction_index")
        return self.prediction_index


class EngineResult(NamedTuple):
    """What an engine returns for prepared sets x (B, N, C) and y (B, M, C): enough for the loss and the match.

    Attributes:
        log_similarity: (B,) log CX(X, Y), differentiable with respect to x and y.
        best: (B, M) max_i log CX_ij for each target vector j (no gradient); its log-mean-exp over
            j is ``log_similarity``.
        prediction_index: (B, M) int64, the prediction index i*(j) attaining ``best`` (the first on ties).

    """

    log_similarity: Tensor
    best: Tensor
    prediction_index: Tensor
