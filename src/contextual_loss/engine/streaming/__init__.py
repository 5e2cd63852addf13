r"""Streaming engine: exact CX and CoBi with memory that grows with N + M, not N x M.

The contextual similarity of Mechrez et al. (ECCV 2018) needs, per target vector j, the maximum
over the prediction index i of a row softmax over the target index. This engine visits the
prediction's rows in full-width strips (:mod:`contextual_loss.engine.strips`); per strip one GEMM
gives the affinities u, and with :math:`s_i = 1 / (h (m_i + \epsilon))`,

.. math::

    t_{ij} = (u_{ij} - \max_k u_{ik}) s_i \le 0, \quad
    L_i = \operatorname{log1p} \sum_{k \ne k(i)} e^{t_{ik}}, \quad
    a_{ij} = t_{ij} - L_i = \log CX_{ij}, \quad
    A_j = \max_i a_{ij}, \quad \log CX = \operatorname{LSE}_j A_j - \log M.

Only row statistics (max, argmin k(i), s_i, L_i) and the running column maximum A_j with its
argmax i*(j) are kept: about 4N + 2M numbers per image. The elementwise work of a strip after its
GEMM is one call of the strip kernels (:mod:`contextual_loss.engine.kernels`: eager PyTorch,
native CPU or Triton, chosen by device). The backward pass is exact, including the gradient
through the row minimum, and recomputes only the rows that are some target's best match
(:mod:`~contextual_loss.engine.streaming._backward`).

CoBi (Zhang et al., CVPR 2019) in the paper form adds w_s times the spatial distance to the
distance inside each strip. The released form mixes two log-softmaxes per entry,
c = logaddexp(log(1 - w) + a, log w + b), takes the column maximum on c, and routes the
gradient through the feature share rho = (1 - w) e^{a - c} at the argmax entries.

On the CPU the strips of a pass are shared among worker threads, each single-threaded
(:mod:`~contextual_loss.engine.streaming._pool`): a core taken by another process then slows
one worker, not every parallel region; the results do not depend on the scheduling.

The passes run as the custom operators ``contextual_loss::streaming_forward`` and
``contextual_loss::streaming_backward`` (:mod:`~contextual_loss.engine.streaming._ops`), so
``torch.compile``, ``torch.export`` and meta tensors see one operator, not the strips.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contextual_loss._deprecation import warn_renamed
from contextual_loss.engine import kernels as _kernels
from contextual_loss.engine._tracing import constant_under_compile
from contextual_loss.engine.streaming._ops import DoubleBackwardError, streaming_forward
from contextual_loss.engine.streaming._pool import threads_for
from contextual_loss.engine.streaming._problem import NO_SPATIAL, budget, compute_dtype, problem_plan
from contextual_loss.engine.strips import DEFAULT_MEMORY_BUDGET, StripPlan
from contextual_loss.engine.types import ContextualMatch, EngineResult, SpatialTerm
from contextual_loss.maths import Distance

__all__ = [
    "DoubleBackwardError",
    "streaming_evaluate",
    "streaming_log_similarity",
    "streaming_match",
    "streaming_plan",
]


def _active_spatial(spatial: SpatialTerm | None) -> SpatialTerm | None:
    """The spatial term, or None when w_s = 0 (then CoBi equals CX in both forms)."""
    return None if spatial is None or spatial.weight == 0.0 else spatial


def streaming_plan(
    n: int,
    m: int,
    *,
    loss_type: Distance,
    spatial: SpatialTerm | None = None,
    dtype: torch.dtype = torch.float32,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | str = "cpu",
) -> StripPlan:
    """The strips the streaming engine uses for an N x M problem (rows per strip, workers, workspace bytes).

    Args:
        n: prediction vectors N.
        m: target vectors M.
        loss_type: the distance (L1 needs one more strip buffer).
        spatial: CoBi's spatial term, if any (one more strip buffer).
        dtype: dtype of the inputs (float16/bfloat16 are computed in float32).
        memory_budget: bytes of strip workspace (shared by the worker threads).
        device: the inputs' device: on the CPU, up to ``torch.get_num_threads()`` worker threads
            share the strips (with the strip kernels this thread would use).

    """
    device = torch.device(device)
    threads = threads_for(device, _kernels.resolve(device, compute_dtype(dtype)))
    return problem_plan(n, m, loss_type, _active_spatial(spatial) is not None, dtype, memory_budget, threads)


@constant_under_compile
def _requested_kernels() -> str:
    """The strip kernels asked for in this thread; under torch.compile, read once when tracing."""
    return _kernels.requested()[0]


def streaming_evaluate(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    memory_budget: int | None = None,
    dense_double_backward: bool = False,
) -> EngineResult:
    """Log CX per image and the per-target matches of prepared sets, streamed over row strips.

    Args:
        x: prepared prediction set (B, N, C).
        y: prepared target set (B, M, C).
        loss_type: ``"cosine"``, ``"l2"`` or ``"l1"``.
        band_width: h > 0.
        eps: epsilon of the relative distance.
        spatial: CoBi's spatial term, or ``None`` for CX.
        memory_budget: bytes of strip workspace (default 64 MiB); see :func:`streaming_plan`.
        dense_double_backward: a gradient taken with ``create_graph=True`` is computed from a dense
            recomputation, so that it can be differentiated again (N x M memory, on those calls
            only); otherwise differentiating the gradient raises :class:`DoubleBackwardError`.

    Returns:
        An :class:`~contextual_loss.engine.types.EngineResult` in float32 (float64 for float64
        inputs; float16/bfloat16 are computed in float32); ``log_similarity`` is differentiable once.

    """
    dtype = compute_dtype(torch.promote_types(x.dtype, y.dtype))
    x, y = x.to(dtype), y.to(dtype)
    spatial = _active_spatial(spatial)
    pos_x = pos_y = None
    weight, form = 0.0, NO_SPATIAL
    if spatial is not None:
        pos_x, pos_y = spatial.pos_x.to(dtype), spatial.pos_y.to(dtype)
        weight, form = float(spatial.weight), spatial.form
    keep_rows = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    best, index, *_ = streaming_forward(
        x, y, pos_x, pos_y, loss_type, float(band_width), float(eps), weight, form, budget(memory_budget),
        _requested_kernels(), keep_rows, dense_double_backward,
    )  # fmt: skip
    log_sim = torch.logsumexp(best, dim=1) - math.log(best.shape[1])
    return EngineResult(log_sim, best.detach(), index)


def streaming_log_similarity(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    memory_budget: int | None = None,
) -> Tensor:
    """Deprecated: ``streaming_evaluate(...).log_similarity`` (same arguments)."""
    warn_renamed("contextual_loss.engine.streaming_log_similarity", "streaming_evaluate(...).log_similarity")
    return streaming_evaluate(
        x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial, memory_budget=memory_budget
    ).log_similarity


def streaming_match(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    memory_budget: int | None = None,
) -> ContextualMatch:
    """Deprecated: per-target matches from :func:`streaming_evaluate` (same arguments) as a :class:`ContextualMatch`."""
    warn_renamed("contextual_loss.engine.streaming_match", "streaming_evaluate(...)")
    result = streaming_evaluate(
        x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial, memory_budget=memory_budget
    )
    return ContextualMatch(
        log_similarity=result.log_similarity, prediction_index=result.prediction_index, similarity=result.best.exp()
    )
