"""Engines that evaluate the contextual similarity of prepared feature sets.

The functional API prepares features (flatten, sample, centre, normalise) and hands the sets to
an engine. An engine returns log CX(X, Y) per image and, on request, the per-target matches.

- ``dense`` (:mod:`contextual_loss.engine.dense`) builds the full N x M matrices with plain
  autograd; it is the readable reference every other engine is tested against, and the faster
  choice for small problems.
- ``streaming`` (:mod:`contextual_loss.engine.streaming`) never holds an N x M matrix: memory
  grows with N + M (plus a fixed strip workspace, ``memory_budget`` bytes), with an exact
  custom backward.
- ``auto`` (the default) takes the dense engine when B * N * M <= :data:`DENSE_MAX_ENTRIES`
  and the streaming engine otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from contextual_loss.engine.dense import dense_log_cx_matrix, dense_log_similarity, dense_match
from contextual_loss.engine.streaming import (
    DoubleBackwardError,
    streaming_log_similarity,
    streaming_match,
    streaming_plan,
)
from contextual_loss.engine.strips import DEFAULT_MEMORY_BUDGET, StripPlan
from contextual_loss.engine.types import ContextualMatch, EngineResult, SpatialTerm
from contextual_loss.maths import Distance
from contextual_loss.options import ENGINES, ContextualOptions, EngineName

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DENSE_MAX_ENTRIES",
    "ENGINES",
    "ContextualMatch",
    "DoubleBackwardError",
    "EngineName",
    "EngineResult",
    "ProgressCallback",
    "SpatialTerm",
    "StripPlan",
    "choose_engine",
    "dense_log_similarity",
    "dense_match",
    "evaluate",
    "log_similarity",
    "match",
    "streaming_log_similarity",
    "streaming_match",
    "streaming_plan",
]

T = TypeVar("T")
#: Called as ``progress(done, total)`` with the units of work (strips) done so far and in all.
ProgressCallback = Callable[[int, int], None]

#: ``auto`` uses the dense engine up to this many entries B * N * M. Measured on a 2-core CPU with
#: the native strip kernels (forward + backward, fresh processes): at C = 64 dense is faster at
#: 12 x 12 maps and streaming from 16 x 16 (1.3x); at C = 256 dense is faster up to 16 x 16 (1.2x)
#: and the two are even at 20 x 20 and 24 x 24; streaming wins from 32 x 32. See docs/engine.md.
DENSE_MAX_ENTRIES = 2**16


def choose_engine(x: Tensor, y: Tensor, engine: EngineName = "auto") -> Literal["dense", "streaming"]:
    """The engine ``engine`` resolves to for prepared sets x (B, N, C) and y (B, M, C)."""
    if engine != "auto":
        return engine
    entries = x.shape[0] * x.shape[1] * y.shape[1]
    return "dense" if entries <= DENSE_MAX_ENTRIES else "streaming"


def _dispatch(
    x: Tensor,
    y: Tensor,
    engine: EngineName,
    memory_budget: int | None,
    dense_fn: Callable[..., T],
    streaming_fn: Callable[..., T],
    kwargs: dict[str, Any],
) -> T:
    """Call ``dense_fn`` or ``streaming_fn`` (with the memory budget) as :func:`choose_engine` decides."""
    if choose_engine(x, y, engine) == "dense":
        return dense_fn(x, y, **kwargs)
    return streaming_fn(x, y, memory_budget=memory_budget, **kwargs)


def log_similarity(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    engine: EngineName = "auto",
    memory_budget: int | None = None,
) -> Tensor:
    """Log CX(X, Y) for each image, (B,), on the chosen engine (``auto``: by problem size)."""
    kwargs = {"loss_type": loss_type, "band_width": band_width, "eps": eps, "spatial": spatial}
    return _dispatch(x, y, engine, memory_budget, dense_log_similarity, streaming_log_similarity, kwargs)


def match(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    engine: EngineName = "auto",
    memory_budget: int | None = None,
) -> ContextualMatch:
    """Per-target best matches (see :class:`ContextualMatch`) on the chosen engine."""
    kwargs = {"loss_type": loss_type, "band_width": band_width, "eps": eps, "spatial": spatial}
    return _dispatch(x, y, engine, memory_budget, dense_match, streaming_match, kwargs)


def evaluate(
    x: Tensor,
    y: Tensor,
    options: ContextualOptions,
    spatial: SpatialTerm | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> EngineResult:
    """The one engine entry point: log CX per image and the per-target matches of prepared sets.

    Args:
        x: prepared prediction set (B, N, C).
        y: prepared target set (B, M, C).
        options: the comparison's options; the engine reads ``loss_type``, ``band_width``,
            ``eps``, ``engine`` and ``memory_budget``.
        spatial: CoBi's spatial term (weight, form and positions), or ``None`` for CX.
        progress: optional ``progress(done, total)`` callback (not yet called by this version).

    Returns:
        An :class:`EngineResult` (log_similarity, best, index).

    """
    kwargs = {"loss_type": options.loss_type, "band_width": options.band_width, "eps": options.eps, "spatial": spatial}
    if choose_engine(x, y, options.engine) == "dense":
        a = dense_log_cx_matrix(x, y, **kwargs)
        best, index = a.max(dim=1)
        log_sim = torch.logsumexp(best, dim=-1) - math.log(best.shape[-1])
        return EngineResult(log_sim, best.detach(), index)
    from contextual_loss.engine.streaming import _stream

    return EngineResult(*_stream(x, y, memory_budget=options.memory_budget, **kwargs))
