r"""Row strips and per-strip distances for the streaming engine.

The streaming engine never holds an N x M matrix: it visits the prediction's rows in full-width
strips of ``rows`` x M entries, and the strip height comes from a memory budget
(:func:`plan_strips`). Each distance is written as an *affinity* u with

.. math::

    d_{ij} = \beta_i - u_{ij},

so that the row minimum of d is the row maximum of u, and ``d - min d = max u - u`` needs no
per-element base. Cosine: u = <x, y> and beta = 1. Squared L2: u = 2 <x, y> - |y|^2 (one GEMM on
augmented operands) and beta = |x|^2, which cancels exactly in ``d - min d``. L1: u = -d and
beta = 0. Each class also maps a strip's gradient on d back to the rows of x and to y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from contextual_loss.maths import CoBiForm, Distance

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MAX_STRIP_ROWS",
    "StripDistance",
    "StripPlan",
    "column_max_first_index",
    "exp_without_underflow",
    "make_strip_distance",
    "plan_strips",
    "row_max_first_index",
    "spatial_tile",
    "underflow_limit",
]

#: Default workspace of the streaming engine, in bytes (64 MiB): two float32 strips of 8M entries.
DEFAULT_MEMORY_BUDGET = 64 * 2**20

#: The tallest strip used. Taller strips re-read Y less often (each strip's GEMM reads all of Y),
#: but the GEMM output and the elementwise work on it fall out of cache (see docs/engine.md).
MAX_STRIP_ROWS = 512


@dataclass(frozen=True)
class StripPlan:
    """How the streaming engine cuts an N x M problem into full-width row strips.

    Attributes:
        rows: prediction rows per strip (the last strip may be shorter), in both passes.
        columns: M, the width of every strip.
        tiles: strip-sized buffers alive at once in either pass (2, plus 1 for L1 and 1 for a
            CoBi spatial term); the native CPU kernels need one buffer fewer, so for them the
            workspace is an upper bound.
        itemsize: bytes per entry of the compute dtype.

    """

    rows: int
    columns: int
    tiles: int
    itemsize: int

    @property
    def workspace_bytes(self) -> int:
        """Bytes of the strip buffers alive at once: the engine's memory beyond O((N + M) C)."""
        return self.rows * self.tiles * self.columns * self.itemsize


def plan_strips(
    n: int, m: int, *, dtype: torch.dtype, memory_budget: int, tiles: int, max_rows: int | None = None
) -> StripPlan:
    """Tallest strips (at most ``max_rows``, default :data:`MAX_STRIP_ROWS`) whose buffers fit the budget.

    Both passes hold ``tiles`` buffers of ``rows x m`` entries.
    At least one row is used, so a budget below one row's buffers is exceeded by that single row
    (the engine streams rows, not 2-D tiles).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    cap = min(n, MAX_STRIP_ROWS if max_rows is None else max_rows)
    rows = max(1, min(cap, memory_budget // (m * tiles * itemsize)))
    return StripPlan(rows=rows, columns=m, tiles=tiles, itemsize=itemsize)


def row_max_first_index(u: Tensor, block: int = 256) -> tuple[Tensor, Tensor]:
    """Row maxima of a strip and the first column index attaining each, like ``u.max(dim=1)``.

    On CPU a reduction with indices costs several times a plain ``amax``; here one ``amax`` over
    blocks of ``block`` columns finds the block maxima, ``argmax`` (which returns the first
    maximum) picks each row's first block holding its maximum, and only that block is searched.
    """
    rows, cols = u.shape
    full = cols - cols % block
    parts = [u[:, :full].unflatten(1, (full // block, block)).amax(dim=2)] if full else []
    if full < cols:
        parts.append(u[:, full:].amax(dim=1, keepdim=True))
    block_max = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    first_block = block_max.argmax(dim=1)
    row_max = block_max.gather(1, first_block.unsqueeze(1)).squeeze(1)
    start = first_block * block
    if full == cols:
        segment = u.unflatten(1, (cols // block, block))[torch.arange(rows, device=u.device), first_block]
    else:  # the tail block is padded with the last column, which cannot come first
        offsets = torch.arange(block, device=u.device)
        segment = u.gather(1, (start.unsqueeze(1) + offsets).clamp_max_(cols - 1))
    return row_max, start + segment.argmax(dim=1)


def column_max_first_index(tile: Tensor, best: Tensor, block: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Columns of ``tile`` whose maximum exceeds ``best``, with that maximum and its first row.

    Returns ``(cols, col_max, rows)``: the improved columns, their new maxima and the first row
    of ``tile`` attaining each. One ``amax`` over blocks of ``block`` rows finds the block maxima;
    only the first block holding each improved column's maximum is searched for its row (a
    reduction with indices over a whole tile costs several times an ``amax`` on CPU).
    """
    rows, cols = tile.shape
    if rows % block or rows < 2 * block:
        col_max = tile.amax(dim=0)
        improved = (col_max > best).nonzero().squeeze(1)
        sub = tile if improved.numel() == cols else tile.index_select(1, improved)
        return improved, col_max[improved], sub.argmax(dim=0)
    blocks = tile.view(rows // block, block, cols)
    block_max = blocks.amax(dim=1)
    col_max = block_max.amax(dim=0)
    improved = (col_max > best).nonzero().squeeze(1)
    sub = block_max if improved.numel() == cols else block_max.index_select(1, improved)
    first_block = sub.argmax(dim=0)
    segment = blocks[first_block, :, improved]  # (improved, block)
    return improved, col_max[improved], first_block * block + segment.argmax(dim=1)


def underflow_limit(dtype: torch.dtype) -> float:
    """Arguments below this (log of the smallest normal number, plus 0.5) have exp treated as 0."""
    return math.log(torch.finfo(dtype).tiny) + 0.5


def exp_without_underflow(t: Tensor, floor: Tensor, out: Tensor | None = None) -> Tensor:
    """exp(t) for t <= 0, with ``floor`` a per-row lower bound of t (b,); in place unless ``out``.

    On CPU, ``exp`` of an argument whose result underflows (t < -87 in float32) runs tens of
    times slower than the normal range. Rows that can underflow (e.g. nearly one-hot rows of
    well-matched features) are clamped first and the clamped entries set to exactly 0 after.
    """
    lowest = underflow_limit(t.dtype)
    if not bool((floor < lowest).any()):
        return torch.exp(t, out=out) if out is not None else t.exp_()
    e = torch.clamp(t, min=lowest, out=out) if out is not None else t.clamp_(min=lowest)
    return torch.nn.functional.threshold_(e.exp_(), math.exp(lowest), 0.0)


def spatial_tile(pos_x: Tensor, pos_y: Tensor, form: CoBiForm) -> Tensor:
    """CoBi's spatial distance D' between a strip's positions (b, 2) and all target positions (M, 2).

    ``paper``: Euclidean distance; ``released``: squared Euclidean distance. Differences are formed
    directly (no GEMM expansion), so co-located positions get exactly 0, as in the dense reference.
    """
    d = torch.cdist(pos_x, pos_y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return d.square_() if form == "released" else d


class StripDistance:
    """Per-image operands of one feature distance, evaluated and differentiated strip by strip.

    Subclasses set ``base`` (beta_i of the module docstring, (N,)) and ``clamp`` (whether the
    row minimum of d is clamped at 0 against rounding, as the dense reference clamps d).
    """

    clamp: bool = True

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.base = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        """U of the given prediction rows against every target, written to ``out`` when it is a GEMM."""
        raise NotImplementedError

    def backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: Tensor) -> None:
        """Accumulate the gradient of a strip into the ``dx`` rows and into ``dy``.

        The gradient on the strip's distances is ``scale[:, None] * grad``: the row scale is kept
        apart so that it can be folded into the small GEMM operands. ``grad`` may be overwritten.
        """
        raise NotImplementedError

    def finish(self, dy: Tensor) -> None:
        """Complete ``dy`` after the last strip (for distances that accumulate in another form)."""


class _CosineDistance(StripDistance):
    """d = 1 - <x, y> on centred unit (or zero) vectors; u = <x, y>."""

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        return torch.matmul(self.x[rows], self.y.mT, out=out)

    def backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: Tensor) -> None:
        # d = 1 - <x, y>: the gradient on u is minus the gradient on d.
        xs = self.x[rows]
        dx[rows] = (grad @ self.y).mul_(-scale.unsqueeze(1))
        dy.addmm_(grad.mT, xs * scale.unsqueeze(1), alpha=-1.0)


class _SquaredL2Distance(StripDistance):
    """d = |x|^2 + |y|^2 - 2 <x, y>; u = [x, 1] [2y, -|y|^2]^T in one GEMM, beta = |x|^2."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__(x, y)
        ones_x = x.new_ones(x.shape[0], 1)
        ones_y = y.new_ones(y.shape[0], 1)
        self.base = x.pow(2).sum(-1)
        self._x1 = torch.cat((x, ones_x), dim=1)
        self._y_aug = torch.cat((2.0 * y, -y.pow(2).sum(-1, keepdim=True)), dim=1)
        self._y1 = torch.cat((y, ones_y), dim=1)
        self._acc: Tensor | None = None

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        return torch.matmul(self._x1[rows], self._y_aug.mT, out=out)

    def backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: Tensor) -> None:
        # dx_i = 2 (rowsum_i(D) x_i - (D y)_i), dy_j = 2 (colsum_j(D) y_j - (D^T x)_j), D = scale * grad;
        # the ones column of y1 / of the scaled x gives the row / column sums inside the GEMMs.
        xs = self.x[rows]
        py = grad @ self._y1
        c = xs.shape[1]
        dx[rows] = (xs * py[:, c:] - py[:, :c]).mul_(2.0 * scale.unsqueeze(1))
        if self._acc is None:  # columns :C accumulate D^T x, column C the column sums of D
            self._acc = self.y.new_zeros(self.y.shape[0], c + 1)
        self._acc.addmm_(grad.mT, self._x1[rows] * scale.unsqueeze(1))

    def finish(self, dy: Tensor) -> None:
        if self._acc is not None:
            c = self.y.shape[1]
            dy.addcmul_(self._acc[:, c:], self.y, value=2.0).sub_(self._acc[:, :c], alpha=2.0)


class _L1Distance(StripDistance):
    """d = sum |x - y| (torch.cdist, p = 1); u = -d. The backward is cdist's own backward of one strip."""

    clamp = False

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__(x, y)
        self.base = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        return torch.cdist(self.x[rows], self.y, p=1.0).neg_()

    def backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: Tensor) -> None:
        # cdist's derivative formula, called directly: the engine runs inside a custom operator,
        # below autograd, where autograd.grad of a recomputed cdist would record nothing.
        xs = self.x[rows].contiguous()
        d = torch.cdist(xs, self.y, p=1.0)
        g = grad.mul_(scale.unsqueeze(1))
        dx[rows] = torch.ops.aten._cdist_backward(g, xs, self.y, 1.0, d)
        dy.add_(torch.ops.aten._cdist_backward(g.mT.contiguous(), self.y, xs, 1.0, d.mT.contiguous()))


_DISTANCES: dict[str, type[StripDistance]] = {
    "cosine": _CosineDistance,
    "l2": _SquaredL2Distance,
    "l1": _L1Distance,
}


def make_strip_distance(x: Tensor, y: Tensor, loss_type: Distance) -> StripDistance:
    """The strip evaluator of ``loss_type`` for one image's prepared sets x (N, C) and y (M, C)."""
    return _DISTANCES[loss_type](x, y)
