r"""Row strips and per-strip distances for the streaming engine.

The streaming engine never holds an N x M matrix: it visits the prediction's rows in full-width
strips of ``rows`` x M entries, and the strip height comes from a memory budget
(:func:`plan_strips`). Each distance is written as an *affinity* u with

.. math::

    d_{ij} = \beta_i - u_{ij},

so that the row minimum of d is the row maximum of u, and ``d - min d = max u - u`` needs no
per-element base. Every distance here uses u = -d and beta = 0: cosine u = <x, y> - 1 and squared
L2 u = 2 <x', y'> - |y'|^2 - |x'|^2, each one GEMM on augmented operands, the L2 one on vectors
centred on the target mean (x' = x - c, y' = y - c: d is translation invariant, and centring keeps
the GEMM's rounding at the scale of the data's spread rather than its offset); L1 u = -cdist.
Each class also maps a strip's gradient on d back to the rows of x and to y.

The GEMM forms (cosine, L2) round with an absolute error E_i per row that does not shrink with d.
Rows where the softmax scale amplifies it beyond tolerance (exact or near duplicates) are
*sensitive*: their maximum affinity exceeds :meth:`StripDistance.sensitive_floor`. The strip kernels
test that as they read each row and defer those rows; :meth:`StripDistance.refine` evaluates their
near field directly, without cancellation, before the kernels process them; the backward pass
refines the same rows and differentiates those entries in the direct form. The maths is in
:mod:`contextual_loss.engine.nearfield`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from contextual_loss.engine import nearfield
from contextual_loss.maths import CoBiForm, Distance

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MAX_STRIP_ROWS",
    "MIN_SHARED_STRIP_ENTRIES",
    "NEAR_BLOCK",
    "NearField",
    "StripDistance",
    "StripPlan",
    "YGradient",
    "block_max",
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

#: Strips of fewer entries than this are not shared among worker threads. With workers, each
#: pass's per-image set-up (the distance's operands, the backward's bookkeeping) runs in one
#: thread; on small maps that outweighs what sharing the strips gains. On 2 cores, quiet, one
#: worker was 15-20% faster at N = M = 1024 (strips of 2^19 entries) and as fast beside a busy
#: loop, while from N = M = 9216 the workers were 12-17% faster beside it (docs/engine.md).
MIN_SHARED_STRIP_ENTRIES = 1 << 20

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
        workers: threads that share the strips, each with its own buffers (CPU; 1 runs them in
            the calling thread with PyTorch's intra-op threads).

    """

    rows: int
    columns: int
    tiles: int
    itemsize: int
    workers: int = 1

    @property
    def workspace_bytes(self) -> int:
        """Bytes of the strip buffers alive at once: the engine's memory beyond O((N + M) C)."""
        return self.rows * self.tiles * self.columns * self.itemsize * self.workers

    def strip_rows(self, count: int) -> int:
        """Rows per strip for ``count`` rows: ``rows``, evened out so the strips come in whole rounds of workers.

        Examples:
            >>> StripPlan(rows=256, columns=4096, tiles=2, itemsize=4, workers=2).strip_rows(700)
            175
            >>> StripPlan(rows=256, columns=4096, tiles=2, itemsize=4).strip_rows(700)
            256

        """
        if self.workers == 1 or count <= self.rows:
            return self.rows if self.workers == 1 else max(1, -(-count // self.workers))
        strips = -(-count // self.rows)
        strips = -(-strips // self.workers) * self.workers  # whole rounds: no worker idles at the end
        return -(-count // strips)


def plan_strips(
    n: int,
    m: int,
    *,
    dtype: torch.dtype,
    memory_budget: int,
    tiles: int,
    max_rows: int | None = None,
    workers: int = 1,
) -> StripPlan:
    """Tallest strips (at most ``max_rows``, default :data:`MAX_STRIP_ROWS`) whose buffers fit the budget.

    Both passes hold ``tiles`` buffers of ``rows x m`` entries per worker; ``workers`` threads
    share the budget. More than one worker is used only when that gives each at least one strip
    of :data:`MIN_SHARED_STRIP_ENTRIES` entries; else the plan has one worker.
    At least one row is used, so a budget below one row's buffers is exceeded by that single row
    (the engine streams rows, not 2-D tiles).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    cap = min(n, MAX_STRIP_ROWS if max_rows is None else max_rows)
    if workers > 1 and n >= 2:
        rows = max(1, min(cap, memory_budget // (m * tiles * itemsize * workers)))
        shared = StripPlan(rows=rows, columns=m, tiles=tiles, itemsize=itemsize, workers=min(workers, n))
        rows = shared.strip_rows(n)
        if rows * m >= MIN_SHARED_STRIP_ENTRIES and rows < n:
            return StripPlan(rows=rows, columns=m, tiles=tiles, itemsize=itemsize, workers=shared.workers)
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
    maxima = block_max(u, block)
    first_block = maxima.argmax(dim=1)
    row_max = maxima.gather(1, first_block.unsqueeze(1)).squeeze(1)
    start = first_block * block
    if full == cols:
        segment = u.unflatten(1, (cols // block, block))[torch.arange(rows, device=u.device), first_block]
    else:  # the tail block is padded with the last column, which cannot come first
        offsets = torch.arange(block, device=u.device)
        segment = u.gather(1, (start.unsqueeze(1) + offsets).clamp_max_(cols - 1))
    return row_max, start + segment.argmax(dim=1)


def column_max_first_index(
    tile: Tensor,
    best: Tensor,
    block: int = 8,
    index: Tensor | None = None,
    row0: int = 0,
    global_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Columns of ``tile`` whose maximum exceeds ``best``, with that maximum and its first row.

    Returns ``(cols, col_max, rows)``: the improved columns, their new maxima and the first row
    of ``tile`` attaining each. One ``amax`` over blocks of ``block`` rows finds the block maxima;
    only the first block holding each improved column's maximum is searched for its row (a
    reduction with indices over a whole tile costs several times an ``amax`` on CPU). With
    ``index`` (M,), the global rows of the current maxima, a column whose maximum equals ``best``
    is improved too when the global row of its first row is smaller (the strip kernels' tie rule):
    ``row0`` plus the tile row, or ``global_rows[row]`` ((R,), for tiles of gathered rows).
    """
    rows, cols = tile.shape
    blocked = rows % block == 0 and rows >= 2 * block
    blocks = tile.view(rows // block, block, cols) if blocked else tile.unsqueeze(0)
    maxima = blocks.amax(dim=1)
    col_max = maxima.amax(dim=0)
    tied = (col_max == best) & (col_max > -math.inf) if index is not None else None
    candidate = col_max > best if tied is None else (col_max > best) | tied
    improved = candidate.nonzero().squeeze(1)
    sub = maxima if improved.numel() == cols else maxima.index_select(1, improved)
    first_block = sub.argmax(dim=0)
    segment = blocks[first_block, :, improved]  # (improved, block)
    first = first_block * (block if blocked else 0) + segment.argmax(dim=1)
    if tied is not None and index is not None:
        first_global = global_rows[first] if global_rows is not None else first + row0
        keep = ~tied[improved] | (first_global < index[improved])
        improved, first = improved[keep], first[keep]
    return improved, col_max[improved], first


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
    return torch.nn.functional.threshold(e.exp_(), math.exp(lowest), 0.0, inplace=True)


def spatial_tile(pos_x: Tensor, pos_y: Tensor, form: CoBiForm) -> Tensor:
    """CoBi's spatial distance D' between a strip's positions (b, 2) and all target positions (M, 2).

    ``paper``: Euclidean distance; ``released``: squared Euclidean distance. Differences are formed
    directly (no GEMM expansion), so co-located positions get exactly 0, as in the dense reference.
    """
    d = torch.cdist(pos_x, pos_y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return d.square_() if form == "released" else d


#: Columns per block of the near-field search: one amax over blocks finds the row maxima and the
#: blocks that can hold near-field entries, so only those blocks are searched entry by entry.
NEAR_BLOCK = 64


def block_max(u: Tensor, block: int = NEAR_BLOCK) -> Tensor:
    """(R, ceil(M / block)) maxima of the column blocks of a strip u (R, M): one pass over u."""
    cols = u.shape[1]
    full = cols - cols % block
    parts = [u[:, :full].unflatten(1, (full // block, block)).amax(dim=2)] if full else []
    if full < cols:
        parts.append(u[:, full:].amax(dim=1, keepdim=True))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _entries_at_least(
    u: Tensor, maxima: Tensor, which: Tensor, low: Tensor, block: int = NEAR_BLOCK
) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the entries u_ik >= low_q of the rows i = which[q] of a contiguous strip u.

    ``maxima`` (Q, blocks) holds those rows' block maxima (:func:`block_max`): only the blocks
    whose maximum reaches low_q are searched, entry by entry. Whole blocks are gathered as rows of
    a (R, M // block, block) view of u (one copy of contiguous runs, no per-entry index arithmetic);
    the last, shorter block (M not a multiple of ``block``) is compared in place.
    """
    r, m = u.shape
    q, blocks = (maxima >= low.unsqueeze(1)).nonzero(as_tuple=True)
    if q.numel() * block > u.numel() // 2:  # most blocks: one comparison over the strip is cheaper, and smaller
        threshold = u.new_full((r,), math.inf).index_copy_(0, which, low)
        flat = (u >= threshold.unsqueeze(1)).view(-1).nonzero().squeeze(1)
        return flat.div(m, rounding_mode="floor"), flat.remainder(m)
    full = m - m % block
    found_rows, found_cols = [], []
    if full < m:
        in_tail = blocks == full // block
        q_tail = q[in_tail]
        k, j = (u[which[q_tail], full:] >= low[q_tail].unsqueeze(1)).nonzero(as_tuple=True)
        found_rows.append(which[q_tail[k]])
        found_cols.append(j + full)
        q, blocks = q[~in_tail], blocks[~in_tail]
    if full > 0:
        rows = which[q]
        chunks = u[:, :full].view(r, full // block, block)[rows, blocks]  # (K, block)
        k, j = (chunks >= low[q].unsqueeze(1)).nonzero(as_tuple=True)
        found_rows.append(rows[k])
        found_cols.append(blocks[k] * block + j)
    if len(found_rows) == 1:
        return found_rows[0], found_cols[0]
    return torch.cat(found_rows), torch.cat(found_cols)


@dataclass(frozen=True)
class NearField:
    """The entries of a strip whose distances were evaluated directly (see :meth:`StripDistance.refine`).

    Attributes:
        rows: (Q,) strip-local rows of the entries.
        cols: (Q,) their columns (target indices).

    """

    rows: Tensor
    cols: Tensor


@dataclass
class YGradient:
    """A share of the gradient on y that strips accumulate into, in a fixed order (one lane of strips).

    Attributes:
        dy: (M, C) gradient on y (the direct near-field terms, and the GEMM form's for cosine and L1).
        acc: the GEMM form's accumulation when it is not dy's (L2: (M, C + 1)), else ``None``.

    """

    dy: Tensor
    acc: Tensor | None = None


class StripDistance:
    """Per-image operands of one feature distance, evaluated and differentiated strip by strip.

    Subclasses set ``clamp`` (whether the row minimum of d is clamped at 0 against rounding, as the
    dense reference clamps d) and ``bound`` (E_i, the rounding bound of the GEMM-form distances per
    row, (N,), or ``None`` for a distance computed directly, which never needs refining). ``base``
    (beta_i of the module docstring, (N,)) is 0 for every distance: u = -d.
    """

    clamp: bool = True
    #: d = factor/2 |x - y|^2 on the near field: the direct gradient is factor (x_i - y_k).
    direct_factor: float = 2.0

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.base = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        self.bound: Tensor | None = None

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        """U of the given prediction rows against every target, written to ``out`` when it is a GEMM."""
        raise NotImplementedError

    def direct(self, rows: Tensor, cols: Tensor, max_elements: int) -> Tensor:
        """The distances d of the pairs (rows[q], cols[q]) (global indices), computed without cancellation.

        Temporaries hold at most ``max_elements`` elements.
        """
        raise NotImplementedError

    def sensitive_floor(self, band_width: float, eps: float) -> Tensor | None:
        """(N,) the affinity above which a row's maximum makes it sensitive, or ``None`` for a direct distance."""
        return None if self.bound is None else nearfield.sensitive_floor(self.bound, band_width, eps)

    def refine(
        self,
        rows: Tensor | slice,
        u: Tensor,
        extra: Tensor | None,
        band_width: float,
        eps: float,
        sensitive: Tensor | None = None,
        row_min: Tensor | None = None,
        block_maxima: Tensor | None = None,
    ) -> tuple[Tensor | None, NearField | None]:
        """Evaluate the near field of the strip's sensitive rows directly, in place in ``u`` = -d.

        Args:
            rows: the strip's global rows (a slice, or (R,) indices).
            u: (R, M) the strip's GEMM-form affinities -d~ (minus CoBi's spatial term, if any), contiguous.
            extra: (R, M) CoBi's paper-form spatial term w_s D' (already subtracted from ``u``), or ``None``.
            band_width: h.
            eps: epsilon of the relative distance.
            sensitive: (R,) bool, the rows to refine, and ``row_min`` (R,) their row minima (the
                forward pass passes the rows the strip kernels deferred, the backward pass the
                forward's choice and exact minima); ``None``: find them from the strip (rows whose
                maximum exceeds :meth:`sensitive_floor`; one ``amax`` over the strip).
            row_min: see ``sensitive``.
            block_maxima: (R, ceil(M / NEAR_BLOCK)) the strip's block maxima (:func:`block_max`),
                needed for the sensitive rows only, if known; else computed for those rows.

        Returns:
            ``(sensitive, near)``: the (R,) rows found (``None`` for a direct distance) and the strip
            entries evaluated directly (``None`` if none), for :meth:`backward`.

        """
        if self.bound is None:
            return None, None
        bound = self.bound[rows]
        if sensitive is None or row_min is None:
            block_maxima = block_max(u)  # the one pass over the strip that finding sensitive rows costs
            row_max = block_maxima.amax(dim=1)
            sensitive = row_max > nearfield.sensitive_floor(bound, band_width, eps)
            row_min = row_max.neg_().clamp_min_(0.0)  # m~_i
        which = sensitive.nonzero().squeeze(1)
        if which.numel() == 0:
            return sensitive, None
        if block_maxima is None:  # (the backward pass: all the strip's blocks when most rows are sensitive)
            block_maxima = block_max(u)[which] if 4 * which.numel() >= u.shape[0] else block_max(u[which])
        else:
            block_maxima = block_maxima[which]
        row_min, bound = row_min[which], bound[which]
        ratio = nearfield.sensitivity(row_min, bound, band_width, eps)
        low = nearfield.near_reach(row_min, bound, ratio, band_width, eps).neg_()  # N_i: u_ik >= low_i
        local, cols = _entries_at_least(u, block_maxima, which, low)
        global_rows = (local + rows.start) if isinstance(rows, slice) else rows[local]
        exact = self.direct(global_rows, cols, u.numel())
        flat = local * u.shape[1] + cols
        if extra is not None:
            exact += extra.reshape(-1)[flat]
        u.view(-1)[flat] = exact.neg_()
        return sensitive, NearField(rows=local, cols=cols)

    def y_gradient(self, dy: Tensor | None = None) -> YGradient:
        """An accumulator for the gradient on y, starting from ``dy`` (M, C) (used in place) or from zeros."""
        return YGradient(torch.zeros_like(self.y) if dy is None else dy)

    def backward(
        self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: YGradient, near: NearField | None = None
    ) -> None:
        """Accumulate the gradient of a strip into the ``dx`` rows and into ``dy``.

        The gradient on the strip's distances is ``scale[:, None] * grad``: the row scale is kept
        apart so that it can be folded into the small GEMM operands. ``grad`` may be overwritten.
        Entries of ``near`` are differentiated in the direct form (no cancellation), the rest in
        the GEMM form.
        """
        weight = None
        if near is not None:
            flat, entries = near.rows * grad.shape[1] + near.cols, grad.view(-1)
            weight = entries[flat] * scale[near.rows]
            entries[flat] = 0.0
        self._gemm_backward(rows, grad, scale, dx, dy)
        if near is not None and weight is not None:
            nearfield.direct_backward(
                self.x, self.y, rows[near.rows], near.cols, weight, self.direct_factor, dx, dy.dy, grad.numel()
            )

    def _gemm_backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: YGradient) -> None:
        """:meth:`backward` of the entries in the distance's own (GEMM) form."""
        raise NotImplementedError

    def finish(self, lanes: list[YGradient]) -> None:
        """Complete ``lanes[0].dy`` after the last strip: add the other lanes in order, then convert the GEMM form."""
        first = lanes[0]
        for lane in lanes[1:]:
            first.dy.add_(lane.dy)
            if first.acc is not None and lane.acc is not None:
                first.acc.add_(lane.acc)
        self._finish(first)

    def _finish(self, lane: YGradient) -> None:
        """Add ``lane.acc`` into ``lane.dy``, for distances that accumulate in another form."""


class _CosineDistance(StripDistance):
    """d = 1 - <x, y> on centred unit (or zero) vectors; u = [x, 1] [y, -1]^T = -d. Near field: 1/2 |x - y|^2."""

    direct_factor = 1.0

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__(x, y)
        self._y_neg = torch.cat((y, y.new_full((y.shape[0], 1), -1.0)), dim=1)
        norm_x, norm_y = x.pow(2).sum(-1), y.pow(2).sum(-1)  # 1 (unit vectors) or exactly 0 (zero vectors)
        unit = nearfield.gemm_unit_roundoff(x)
        self.bound = nearfield.rounding_bound(norm_x, norm_y.amax(), x.shape[1], unit)
        # 1/2 for each zero vector: a zero vector stays at distance 1 from everything in the direct form.
        self._half_zero_x = (norm_x == 0).to(x.dtype).mul_(0.5)
        self._half_zero_y = (norm_y == 0).to(y.dtype).mul_(0.5)

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        xs = self.x[rows]  # [x, 1] per strip: (R, C + 1), no (N, C + 1) copy of x
        return torch.matmul(torch.cat((xs, xs.new_ones(xs.shape[0], 1)), dim=1), self._y_neg.mT, out=out)

    def direct(self, rows: Tensor, cols: Tensor, max_elements: int) -> Tensor:
        half = nearfield.direct_l2(self.x, self.y, rows, cols, max_elements).mul_(0.5)
        return half.add_(self._half_zero_x[rows]).add_(self._half_zero_y[cols])

    def _gemm_backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: YGradient) -> None:
        # d = 1 - <x, y>: dd/dx = -y, dd/dy = -x.
        xs = self.x[rows]
        dx[rows] = (grad @ self.y).mul_(-scale.unsqueeze(1))
        dy.dy.addmm_(grad.mT, xs * scale.unsqueeze(1), alpha=-1.0)


class _SquaredL2Distance(StripDistance):
    """d = |x' - y'|^2, x' = x - c, y' = y - c; u = [x', 1, |x'|^2] [2y', -|y'|^2, -1]^T = -d in one GEMM.

    c is the mean of the target vectors: it does not change d, but the GEMM form's rounding grows
    with |x'|^2 + |y'|^2, which centring keeps at the scale of the data's spread instead of its offset.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__(x, y)
        centre = y.mean(dim=0, keepdim=True)
        xc, yc = x - centre, y - centre
        norm_x, norm_y = xc.pow(2).sum(-1, keepdim=True), yc.pow(2).sum(-1, keepdim=True)
        self._x1 = torch.cat((xc, x.new_ones(x.shape[0], 1), norm_x), dim=1)
        self._y_aug = torch.cat((2.0 * yc, -norm_y, y.new_full((y.shape[0], 1), -1.0)), dim=1)
        self._y1 = torch.cat((yc, y.new_ones(y.shape[0], 1)), dim=1)
        unit = nearfield.gemm_unit_roundoff(x)
        self.bound = nearfield.rounding_bound(norm_x.squeeze(1), norm_y.amax(), x.shape[1], unit)

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        return torch.matmul(self._x1[rows], self._y_aug.mT, out=out)

    def direct(self, rows: Tensor, cols: Tensor, max_elements: int) -> Tensor:
        return nearfield.direct_l2(self.x, self.y, rows, cols, max_elements)  # raw vectors: no centring rounding

    def y_gradient(self, dy: Tensor | None = None) -> YGradient:
        # columns :C accumulate D^T x', column C the column sums of D
        lane = super().y_gradient(dy)
        lane.acc = self.y.new_zeros(self.y.shape[0], self.y.shape[1] + 1)
        return lane

    def _gemm_backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: YGradient) -> None:
        # dx_i = 2 (rowsum_i(D) x'_i - (D y')_i), dy_j = 2 (colsum_j(D) y'_j - (D^T x')_j), D = scale * grad;
        # the ones column of y1 / of the scaled x1 gives the row / column sums inside the GEMMs.
        c = self.x.shape[1]
        x1 = self._x1[rows, : c + 1]
        py = grad @ self._y1
        dx[rows] = (x1[:, :c] * py[:, c:] - py[:, :c]).mul_(2.0 * scale.unsqueeze(1))
        if dy.acc is None:
            raise ValueError("the L2 distance accumulates dy in its own form: make dy with y_gradient()")
        dy.acc.addmm_(grad.mT, x1 * scale.unsqueeze(1))

    def _finish(self, lane: YGradient) -> None:
        if lane.acc is not None:
            c = self.y.shape[1]
            lane.dy.addcmul_(lane.acc[:, c:], self._y1[:, :c], value=2.0).sub_(lane.acc[:, :c], alpha=2.0)


class _L1Distance(StripDistance):
    """d = sum |x - y| (torch.cdist, p = 1); u = -d. The backward is cdist's own backward of one strip.

    cdist computes each distance directly (no cancellation), so no row is ever refined (``bound`` is None).
    """

    clamp = False

    def affinity(self, rows: Tensor | slice, out: Tensor) -> Tensor:
        return torch.cdist(self.x[rows], self.y, p=1.0).neg_()

    def _gemm_backward(self, rows: Tensor, grad: Tensor, scale: Tensor, dx: Tensor, dy: YGradient) -> None:
        # cdist's derivative formula, called directly: the engine runs inside a custom operator,
        # below autograd, where autograd.grad of a recomputed cdist would record nothing.
        xs = self.x[rows].contiguous()
        d = torch.cdist(xs, self.y, p=1.0)
        g = grad.mul_(scale.unsqueeze(1))
        dx[rows] = torch.ops.aten._cdist_backward(g, xs, self.y, 1.0, d)
        dy.dy.add_(torch.ops.aten._cdist_backward(g.mT.contiguous(), self.y, xs, 1.0, d.mT.contiguous()))


_DISTANCES: dict[str, type[StripDistance]] = {
    "cosine": _CosineDistance,
    "l2": _SquaredL2Distance,
    "l1": _L1Distance,
}


def make_strip_distance(x: Tensor, y: Tensor, loss_type: Distance) -> StripDistance:
    """The strip evaluator of ``loss_type`` for one image's prepared sets x (N, C) and y (M, C)."""
    return _DISTANCES[loss_type](x, y)
