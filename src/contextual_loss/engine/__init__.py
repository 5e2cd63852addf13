"""Engines that evaluate the contextual similarity of prepared feature sets.

The functional API prepares features (flatten, sample, centre, normalise) and hands the sets to
:func:`evaluate`, the one engine entry point. It returns log CX(X, Y) per image and the
per-target best matches (:class:`EngineResult`), on one of two engines:

- ``dense`` (:mod:`contextual_loss.engine.dense`) builds the full N x M matrices with plain
  autograd; it is the readable reference every other engine is tested against, and the faster
  choice for small problems.
- ``streaming`` (:mod:`contextual_loss.engine.streaming`) never holds an N x M matrix: memory
  grows with N + M (plus a fixed strip workspace, ``memory_budget`` bytes), with an exact
  custom backward. Its per-strip work runs on the strip kernels of
  :mod:`contextual_loss.engine.kernels` (eager, native CPU or Triton, chosen by device).
- ``auto`` (the default) decides by a fixed rule from the problem's size per image and per
  batch, channels, distance, dtype and device (:func:`auto_engine`): never from the memory free
  at call time, so every step and every process of a distributed run picks the same engine.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from contextual_loss._deprecation import warn_renamed
from contextual_loss.engine._tracing import constant_under_compile
from contextual_loss.engine.dense import dense_evaluate, dense_log_cx_matrix, dense_log_similarity, dense_match
from contextual_loss.engine.streaming import (
    DoubleBackwardError,
    streaming_evaluate,
    streaming_log_similarity,
    streaming_match,
    streaming_plan,
)
from contextual_loss.engine.streaming._problem import ProgressCallback, compute_dtype, report, reporting
from contextual_loss.engine.strips import DEFAULT_MEMORY_BUDGET, StripPlan
from contextual_loss.engine.types import ContextualMatch, EngineResult, SpatialTerm
from contextual_loss.maths import Distance
from contextual_loss.options import ENGINES, ContextualOptions, EngineName

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DENSE_CHANNELS",
    "DENSE_MATRICES",
    "DENSE_MAX_BYTES",
    "DENSE_MAX_ENTRIES",
    "DENSE_MAX_SCALE",
    "DENSE_MEMORY_FRACTION",
    "ENGINES",
    "ContextualMatch",
    "DoubleBackwardError",
    "EngineName",
    "EngineResult",
    "ProgressCallback",
    "SpatialTerm",
    "StripPlan",
    "auto_engine",
    "choose_engine",
    "dense_entries_per_image",
    "dense_evaluate",
    "dense_log_cx_matrix",
    "dense_log_similarity",
    "dense_match",
    "evaluate",
    "log_similarity",
    "match",
    "reporting",
    "streaming_evaluate",
    "streaming_log_similarity",
    "streaming_match",
    "streaming_plan",
]

#: ``auto`` takes the dense engine while each image's N * M is at most this many entries, at
#: C <= :data:`DENSE_CHANNELS`; the measured CPU crossover of forward + backward time at C = 75 (5 x 5
#: RGB patches), where the streaming engine's fixed cost per image (about 1 ms) is no longer repaid
#: (docs/engine.md).
DENSE_MAX_ENTRIES = 2**15

#: Above this many channels the per-image threshold grows in proportion to C, up to
#: :data:`DENSE_MAX_SCALE` times :data:`DENSE_MAX_ENTRIES`: with more channels the GEMMs, which the
#: streaming engine runs once more (it recomputes the distances in its backward), weigh more.
DENSE_CHANNELS = 128

#: The largest factor on :data:`DENSE_MAX_ENTRIES` (reached at C = 512, the largest C measured).
DENSE_MAX_SCALE = 4

#: ``auto`` never takes the dense engine when its working set, :data:`DENSE_MATRICES` (B, N, M)
#: matrices of the compute dtype, would exceed this many bytes (CPU and every device; 6.7 M
#: float32 entries B * N * M), unless the CUDA memory rule below allows it.
DENSE_MAX_BYTES = 2**28

#: On CUDA, ``auto`` also takes the dense engine while its working set, :data:`DENSE_MATRICES`
#: (B, N, M) matrices of the compute dtype, is at most this fraction of the device's total memory.
DENSE_MEMORY_FRACTION = 1 / 16

#: N x M matrices the dense engine holds at its peak (forward + backward), the most of any option:
#: 7 measured for CX and paper-form CoBi, 10 for the released form (docs/engine.md).
DENSE_MATRICES = 10


def dense_entries_per_image(c: int) -> int:
    """The largest N * M per image for which ``auto`` prefers the dense engine's speed, at C channels.

    :data:`DENSE_MAX_ENTRIES` up to :data:`DENSE_CHANNELS` channels, then in proportion to C, at
    most :data:`DENSE_MAX_SCALE` times as many.
    """
    scale = min(max(c / DENSE_CHANNELS, 1.0), DENSE_MAX_SCALE)
    return int(DENSE_MAX_ENTRIES * scale)


def auto_engine(
    b: int,
    n: int,
    m: int,
    c: int,
    dtype: torch.dtype,
    device_type: str,
    device_memory: int | None = None,
    loss_type: Distance | None = None,
) -> Literal["dense", "streaming"]:
    """The engine ``auto`` picks for B images of N x M vectors of C channels: a fixed rule, see docs/engine.md.

    Every device: dense while each image is small, N * M <= :func:`dense_entries_per_image` (C)
    (the CPU crossover: 2^15 up to C = 128, in proportion to C above, 2^17 from C = 512), or the
    distance is ``"l1"`` (no GEMM: the dense engine was faster at every size measured), and the
    dense working set, :data:`DENSE_MATRICES` (B, N, M) matrices of the compute dtype, is at most
    :data:`DENSE_MAX_BYTES` (256 MiB). The batch does not move the crossover (both engines' time
    grows in proportion to B), only the memory bound. On CUDA (``device_memory``: the device's
    total memory in bytes) dense also while its working set fits :data:`DENSE_MEMORY_FRACTION` of
    the device.

    Args:
        b: images B.
        n: prediction vectors N.
        m: target vectors M.
        c: channels C.
        dtype: the inputs' dtype (float16/bfloat16 are computed in float32).
        device_type: ``"cpu"``, ``"cuda"``, ...
        device_memory: total memory of the CUDA device in bytes (``None`` elsewhere).
        loss_type: the distance, ``"cosine"``, ``"l2"`` or ``"l1"``; ``None`` (unknown) is
            decided as cosine and l2 are.

    """
    dense_bytes = b * n * m * DENSE_MATRICES * compute_dtype(dtype).itemsize
    fast_dense = loss_type == "l1" or n * m <= dense_entries_per_image(c)
    if fast_dense and dense_bytes <= DENSE_MAX_BYTES:
        return "dense"
    if device_type == "cuda" and device_memory is not None and dense_bytes <= device_memory * DENSE_MEMORY_FRACTION:
        return "dense"
    return "streaming"


@constant_under_compile
def _cuda_memory(index: int) -> int:
    return _cuda_memory_cached(index)


@functools.cache
def _cuda_memory_cached(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).total_memory)


def _device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device (a fixed property of the device, not what is free now)."""
    if device.type != "cuda":
        return None
    return _cuda_memory(device.index if device.index is not None else torch.cuda.current_device())


def choose_engine(
    x: Tensor, y: Tensor, engine: EngineName = "auto", loss_type: Distance | None = None
) -> Literal["dense", "streaming"]:
    """The engine ``engine`` resolves to for prepared sets x (B, N, C) and y (B, M, C) compared with ``loss_type``."""
    if engine != "auto":
        return engine
    (b, n, c), m = x.shape, y.shape[1]
    dtype = torch.promote_types(x.dtype, y.dtype)
    return auto_engine(b, n, m, c, dtype, x.device.type, _device_memory(x.device), loss_type)


def _prepared_set(name: str, t: object) -> Tensor:
    """``t`` if it is a 3-d floating-point tensor, else a ``TypeError`` naming ``name``."""
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim != 3:
        got = f"a {t.ndim}-d {t.dtype} tensor" if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a 3-d floating-point tensor (B, N, C) of prepared features, got {got}")
    return t


def _check_sets(x: object, y: object) -> None:
    xs, ys = _prepared_set("x", x), _prepared_set("y", y)
    if xs.shape[0] != ys.shape[0] or xs.shape[2] != ys.shape[2]:
        raise ValueError(
            f"x (B, N, C) and y (B, M, C) must agree in B and C, got {tuple(xs.shape)} and {tuple(ys.shape)}"
        )


def _evaluate(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None,
    engine: EngineName,
    memory_budget: int | None,
    progress: ProgressCallback | None = None,
) -> EngineResult:
    _check_sets(x, y)
    if choose_engine(x, y, engine, loss_type) == "dense":
        result = dense_evaluate(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
        if progress is not None:  # one unit of work
            progress(1, 1)
        elif not torch.compiler.is_compiling():
            report(1, 1)  # to the callback of an enclosing reporting() block, if any
        return result

    def stream() -> EngineResult:
        # engine="auto" promises the dense engine's abilities: a second differentiation recomputes densely.
        return streaming_evaluate(
            x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial, memory_budget=memory_budget,
            dense_double_backward=engine == "auto",
        )  # fmt: skip

    if progress is None:
        return stream()
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "progress callbacks of the streaming engine are not supported inside torch.compile; "
            "call contextual_loss.engine.evaluate without progress there"
        )
    with reporting(progress):
        return stream()


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
        progress: optional ``progress(done, total)`` callback, called as the units of work are
            done: the forward strips of all images for the streaming engine (also inside the
            custom operator), once ``(1, 1)`` for the dense engine. Not supported inside
            ``torch.compile``.

    Returns:
        An :class:`EngineResult`: ``log_similarity`` (B,), differentiable (once on the streaming
        engine), ``best`` (B, M) = max_i log CX_ij without gradient, ``index`` (B, M) = i*(j).
        float32 (float64 for float64 inputs; float16/bfloat16 are computed in float32).

    Raises:
        TypeError: ``options`` is not a :class:`ContextualOptions`, or x, y are not 3-d
            floating-point tensors.
        ValueError: x and y disagree in B or C.
        contextual_loss.engine.kernels.KernelsUnavailableError: forced strip kernels cannot run.

    """
    if not isinstance(options, ContextualOptions):
        raise TypeError(f"options must be a ContextualOptions, got {type(options).__name__}")
    return _evaluate(
        x, y, loss_type=options.loss_type, band_width=options.band_width, eps=options.eps, spatial=spatial,
        engine=options.engine, memory_budget=options.memory_budget, progress=progress,
    )  # fmt: skip


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
    """Deprecated: ``evaluate(x, y, ContextualOptions(...), spatial).log_similarity``."""
    warn_renamed("contextual_loss.engine.log_similarity", "contextual_loss.engine.evaluate(...).log_similarity")
    return _evaluate(
        x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial, engine=engine,
        memory_budget=memory_budget,
    ).log_similarity  # fmt: skip


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
    """Deprecated: per-target best matches from :func:`evaluate` as a :class:`ContextualMatch`."""
    warn_renamed("contextual_loss.engine.match", "contextual_loss.engine.evaluate(...)")
    result = _evaluate(
        x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial, engine=engine,
        memory_budget=memory_budget,
    )  # fmt: skip
    return ContextualMatch(
        log_similarity=result.log_similarity, prediction_index=result.prediction_index, similarity=result.best.exp()
    )
