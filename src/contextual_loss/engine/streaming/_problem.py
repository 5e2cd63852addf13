"""What one streaming evaluation needs besides the tensors: its options, its strips and its progress callback."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contextual_loss.engine.strips import DEFAULT_MEMORY_BUDGET, StripPlan, plan_strips

__all__ = [
    "NO_SPATIAL",
    "Positions",
    "Problem",
    "ProgressCallback",
    "budget",
    "compute_dtype",
    "current_progress",
    "image_positions",
    "log_complement",
    "no_autocast",
    "problem_plan",
    "report",
    "reporting",
]

#: Called as ``progress(done, total)`` with the units of work (strips) done so far and in all.
ProgressCallback = Callable[[int, int], None]

#: ``spatial_form`` of a problem without a spatial term (CX, or CoBi with w_s = 0).
NO_SPATIAL = "none"

_progress: contextvars.ContextVar[ProgressCallback | None] = contextvars.ContextVar(
    "contextual_loss_progress", default=None
)


@dataclass(frozen=True)
class Problem:
    """The scalar options of one streaming evaluation, as the custom operators receive them.

    Attributes:
        loss_type: ``"cosine"``, ``"l2"`` or ``"l1"``.
        band_width: h.
        eps: epsilon of the relative distance.
        spatial_weight: CoBi's w_s (0.0 without a spatial term).
        spatial_form: ``"paper"``, ``"released"`` or :data:`NO_SPATIAL`.
        memory_budget: bytes of strip workspace.
        kernels: the requested strip kernels (``auto``, ``eager``, ``native`` or ``triton``).

    """

    loss_type: str
    band_width: float
    eps: float
    spatial_weight: float
    spatial_form: str
    memory_budget: int
    kernels: str

    @property
    def paper(self) -> bool:
        """CoBi's paper form: w_s times the spatial distance is added to the feature distance."""
        return self.spatial_form == "paper"

    @property
    def released(self) -> bool:
        """CoBi's released form: the two log-softmaxes are mixed entry by entry."""
        return self.spatial_form == "released"

    def plan(self, n: int, m: int, dtype: torch.dtype, threads: int = 1) -> StripPlan:
        """The strips of an N x M problem in compute ``dtype``, shared by up to ``threads`` workers."""
        spatial = self.spatial_form != NO_SPATIAL
        return problem_plan(n, m, self.loss_type, spatial, dtype, self.memory_budget, threads)


def problem_plan(
    n: int, m: int, loss_type: str, spatial: bool, dtype: torch.dtype, memory_budget: int, threads: int = 1
) -> StripPlan:
    """Strips for an N x M problem: 2 strip buffers, one more for L1 (cdist's) and one more for a spatial term.

    ``threads`` worker threads may share the strips (:func:`~contextual_loss.engine.strips.plan_strips`).
    """
    tiles = 2 + (loss_type == "l1") + spatial
    return plan_strips(n, m, dtype=compute_dtype(dtype), memory_budget=memory_budget, tiles=tiles, workers=threads)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (float32, float16, bfloat16) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def budget(memory_budget: int | None) -> int:
    """The strip workspace in bytes: ``memory_budget`` or :data:`DEFAULT_MEMORY_BUDGET`."""
    return DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)


def log_complement(weight: float) -> float:
    """log(1 - w) for w in [0, 1]: -inf at w = 1, so that e^{... + log(1 - w)} is exactly 0 there."""
    return math.log1p(-weight) if weight < 1.0 else -math.inf


#: One image's CoBi positions (pos_x (N, 2), pos_y (M, 2)), or ``None`` without a spatial term.
Positions = tuple[Tensor, Tensor] | None


def image_positions(problem: Problem, pos_x: Tensor | None, pos_y: Tensor | None, image: int) -> Positions:
    """One image's positions, from shared (P, 2) or per-image (B, P, 2) tensors; ``None`` without a spatial term.

    Raises:
        ValueError: the problem has a spatial term but a position tensor is missing.

    """
    if problem.spatial_form == NO_SPATIAL:
        return None
    if pos_x is None or pos_y is None:
        raise ValueError(f"spatial_form={problem.spatial_form!r} needs pos_x and pos_y, got None")
    return (pos_x[image] if pos_x.ndim == 3 else pos_x), (pos_y[image] if pos_y.ndim == 3 else pos_y)


@contextlib.contextmanager
def reporting(progress: ProgressCallback | None) -> Iterator[None]:
    """Report the engine's progress to ``progress(done, total)`` for every evaluation in this block.

    For code that calls the engine through the loss functions or modules, which take no callback:
    the streaming engine calls ``progress`` as the forward strips of each evaluation complete
    (``total`` counts the strips of all images of that evaluation), the dense engine once with
    ``(1, 1)``. The callback is held in a context variable, so other threads are not affected.
    Not supported inside ``torch.compile`` (the compiled graph does not read it).

    Examples:
        >>> import torch
        >>> from contextual_loss import contextual_loss
        >>> from contextual_loss.engine import reporting
        >>> seen = []
        >>> with reporting(lambda done, total: seen.append((done, total))):
        ...     _ = contextual_loss(torch.rand(1, 8, 40, 40), torch.rand(1, 8, 40, 40), engine="streaming")
        >>> seen[-1][0] == seen[-1][1]
        True

    """
    token = _progress.set(progress)
    try:
        yield
    finally:
        _progress.reset(token)


def current_progress() -> ProgressCallback | None:
    """The progress callback of this context (set by :func:`reporting`), or ``None``."""
    return _progress.get()


def report(done: int, total: int) -> None:
    """Call the current progress callback, if any."""
    callback = _progress.get()
    if callback is not None:
        callback(done, total)


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Run a block in the inputs' own dtype even under ``torch.autocast``."""
    ctx: contextlib.AbstractContextManager[Any]
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast
        ctx = contextlib.nullcontext()
    with ctx:
        yield
