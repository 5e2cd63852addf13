r"""The streaming forward pass: strip by strip, one GEMM and one strip-kernel call per strip.

For each image, the prediction's rows are visited in full-width strips. A strip's affinities u
come from the distance's GEMM (:mod:`contextual_loss.engine.strips`), minus w_s times the spatial
distance for CoBi's paper form; the strip kernels then write the row statistics and update the
running column maximum A_j and its first row i*(j) (:mod:`contextual_loss.engine.kernels.base`).
The kernels test each row as they read it: a row whose softmax scale amplifies the GEMM's
rounding beyond tolerance (exact or near duplicates: its maximum affinity is above a per-row floor)
is deferred; its near field is then evaluated directly
(:meth:`~contextual_loss.engine.strips.StripDistance.refine`, :mod:`contextual_loss.engine.nearfield`)
and the kernels process it in a second call on the deferred rows only. Which rows were refined is
kept for the backward pass, which refines the same rows again.
CoBi's released form asks the kernels for a = log CX instead and finishes the strip here: the
mixture c = logaddexp(log(1 - w) + a, log w + b), with b the spatial log-softmax, takes the column
maximum, and a at the winning entries is kept for the backward pass.
On the CPU the strips are shared among worker threads (:mod:`~contextual_loss.engine.streaming._pool`),
each with its own buffers and column maximum; the column maxima are merged at the end of each image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from contextual_loss.engine import kernels as _kernels
from contextual_loss.engine.kernels import ColumnMax, Deferral, RowStats, StripKernels
from contextual_loss.engine.streaming import _pool
from contextual_loss.engine.streaming._problem import Positions, Problem, image_positions, log_complement, report
from contextual_loss.engine.strips import (
    NEAR_BLOCK,
    StripDistance,
    StripPlan,
    column_max_first_index,
    make_strip_distance,
    spatial_tile,
)

__all__ = ["ForwardOutputs", "choose_strips", "forward", "row_stats", "select_rows", "strip_affinity"]

#: The forward operator's outputs, in order: best, index (B, M); umax, argmin, scale, log_norm,
#: clamped, sensitive (B, N), or (B, 0) when no backward will follow; feature_best (B, M) for CoBi's
#: released form, else (B, 0). ``sensitive`` (bool) marks the rows whose near field was evaluated
#: directly (never set for L1, which is computed directly everywhere).
ForwardOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def row_stats(shape: int | tuple[int, ...], like: Tensor) -> RowStats:
    """Uninitialised row statistics of ``shape`` ((N,) or (B, N)) on the device and dtype of ``like``."""
    return RowStats(
        umax=like.new_empty(shape),
        argmin=torch.empty(shape, dtype=torch.long, device=like.device),
        scale=like.new_empty(shape),
        log_norm=like.new_empty(shape),
        clamped=torch.empty(shape, dtype=torch.bool, device=like.device),
    )


def select_rows(stats: RowStats, index: slice | Tensor | int) -> RowStats:
    """The statistics of some rows: views for a slice or an int, gathered copies for an index tensor."""
    clamped = None if stats.clamped is None else stats.clamped[index]
    return RowStats(stats.umax[index], stats.argmin[index], stats.scale[index], stats.log_norm[index], clamped)


def strip_affinity(
    dist: StripDistance, rows: slice | Tensor, out: Tensor, problem: Problem, pos: Positions
) -> tuple[Tensor, Tensor | None]:
    """Affinities of a strip, and CoBi's paper-form term w_s D' (added to d, subtracted from u) or ``None``."""
    u = dist.affinity(rows, out)
    if not problem.paper or pos is None:
        return u, None
    extra = spatial_tile(pos[0][rows], pos[1], "paper").mul_(problem.spatial_weight)
    return u.sub_(extra), extra


class _ReleasedMixture:
    """CoBi's released form: the column maximum of log((1 - w) CX_feat + w CX_spatial), strip by strip."""

    def __init__(self, problem: Problem, kernels: StripKernels, pos: tuple[Tensor, Tensor], plan: StripPlan) -> None:
        self.problem, self.kernels, self.pos = problem, kernels, pos
        self.log_feature = log_complement(problem.spatial_weight)
        self.log_spatial = math.log(problem.spatial_weight)
        like = pos[0]
        self.scratch = row_stats(plan.rows, like)  # the spatial log-softmax's row statistics (not kept)
        self.zeros = like.new_zeros(plan.rows)

    def update(self, a: Tensor, rows: slice, columns: ColumnMax, feature_best: Tensor) -> None:
        """Fold the strip ``a`` = log CX_feat of ``rows`` into the running column maximum of the mixture."""
        size = a.shape[0]
        b = spatial_tile(self.pos[0][rows], self.pos[1], "released").neg_()  # affinity -D' (base 0, no clamp)
        self.kernels.forward(
            b, self.zeros[:size], select_rows(self.scratch, slice(0, size)), clamp=False,
            band_width=self.problem.band_width, eps=self.problem.eps, columns=None, row0=0, write_a=True,
        )  # fmt: skip
        mixture = torch.logaddexp(b.add_(self.log_spatial), a + self.log_feature, out=b)
        cols, col_max, local = column_max_first_index(mixture, columns.best)
        columns.best[cols] = col_max
        columns.index[cols] = local + rows.start
        feature_best[cols] = a[local, cols]


def _strip_forward(
    kernels: StripKernels,
    u: Tensor,
    dist: StripDistance,
    stats: RowStats,
    problem: Problem,
    columns: ColumnMax,
    row0: int,
    write_a: bool,
    defer: Deferral | None = None,
    only: Tensor | None = None,
) -> int:
    """The strip kernels' forward pass over the strip ``u`` (see StripKernels.forward); returns the rows deferred."""
    return kernels.forward(
        u, dist.base[row0 : row0 + u.shape[0]], stats, clamp=dist.clamp, band_width=problem.band_width,
        eps=problem.eps, columns=columns, row0=row0, write_a=write_a, defer=defer, only=only,
    )  # fmt: skip


@dataclass
class _Worker:
    """One worker's buffers for the strips of one image, and its share of the column maximum."""

    buffer: Tensor  # (rows, M) the strip's affinities
    scratch: RowStats  # (rows,) one strip's statistics, when they are not kept
    deferred: Tensor  # (rows,) bool, the near-field test of a strip's rows
    maxima: Tensor  # (rows, ceil(M / NEAR_BLOCK)) block maxima of the deferred rows
    columns: ColumnMax  # (M,) the column maximum over this worker's strips
    feature_best: Tensor  # (M,) CoBi's released form: a at the winning entries, else (0,)
    mixture: _ReleasedMixture | None


def _workers(x: Tensor, problem: Problem, plan: StripPlan) -> list[_Worker]:
    """Buffers for each of ``plan.workers`` workers (one worker then writes the output's column maximum)."""
    m = plan.columns
    return [
        _Worker(
            buffer=x.new_empty(plan.rows, m),
            scratch=row_stats(plan.rows, x),
            deferred=torch.empty(plan.rows, dtype=torch.bool, device=x.device),
            maxima=x.new_empty(plan.rows, -(-m // NEAR_BLOCK)),
            columns=ColumnMax(best=x.new_empty(m), index=torch.empty(m, dtype=torch.long, device=x.device)),
            feature_best=x.new_empty(m if problem.released else 0),
            mixture=None,
        )
        for _ in range(plan.workers)
    ]


def _merge(columns: ColumnMax, feature_best: Tensor, workers: list[_Worker]) -> None:
    """The column maximum of all workers' strips, ties to the smallest row (the strip kernels' rule)."""
    columns.best.copy_(workers[0].columns.best)
    columns.index.copy_(workers[0].columns.index)
    if feature_best.numel():
        feature_best.copy_(workers[0].feature_best)
    for worker in workers[1:]:
        best, index = worker.columns.best, worker.columns.index
        tied = (best == columns.best) & (best > -math.inf) & (index < columns.index)
        wins = (best > columns.best) | tied
        columns.best[wins], columns.index[wins] = best[wins], index[wins]
        if feature_best.numel():
            feature_best[wins] = worker.feature_best[wins]


def forward(
    x: Tensor, y: Tensor, pos_x: Tensor | None, pos_y: Tensor | None, problem: Problem, keep_rows: bool
) -> ForwardOutputs:
    """Stream a batch of prepared sets x (B, N, C), y (B, M, C) in their (compute) dtype; see :data:`ForwardOutputs`."""
    x, y = x.contiguous(), y.contiguous()  # a transposed view (direct callers) would make row gathers stride by N
    kernels, plan = choose_strips(x, y, problem)
    # With workers, the whole pass runs single-threaded in a worker thread (see _pool.call).
    return _pool.call(plan.workers, _forward_batch, x, y, pos_x, pos_y, problem, keep_rows, kernels, plan)


def choose_strips(x: Tensor, y: Tensor, problem: Problem) -> tuple[StripKernels, StripPlan]:
    """The strip kernels and strips of both passes over prepared sets x (B, N, C) and y (B, M, C).

    The backward pass chooses them the same way: the same kernels, and the same strip height and workers.
    """
    kernels = _kernels.select(x.device, x.dtype, problem.kernels)
    return kernels, problem.plan(x.shape[1], y.shape[1], x.dtype, _pool.threads_for(x.device, kernels.name))


def _forward_batch(
    x: Tensor,
    y: Tensor,
    pos_x: Tensor | None,
    pos_y: Tensor | None,
    problem: Problem,
    keep_rows: bool,
    kernels: StripKernels,
    plan: StripPlan,
) -> ForwardOutputs:
    """:func:`forward` once its strip kernels and strips are chosen."""
    (b, n, _), m = x.shape, y.shape[1]
    best = x.new_empty(b, m)
    index = torch.empty(b, m, dtype=torch.long, device=x.device)
    kept = row_stats((b, n if keep_rows else 0), x)  # (B, 0) when no backward pass will follow
    sensitive = torch.zeros(b, n if keep_rows else 0, dtype=torch.bool, device=x.device)
    feature_best = x.new_empty(b, m if problem.released else 0)
    workers = _workers(x, problem, plan)
    starts = list(range(0, n, plan.rows))
    for image in range(b):
        pos = image_positions(problem, pos_x, pos_y, image)
        if len(workers) == 1:  # one worker writes the output's column maximum directly
            workers[0].columns = ColumnMax(best=best[image], index=index[image])
            if problem.released:
                workers[0].feature_best = feature_best[image]
        for worker in workers:
            worker.columns.best.fill_(-math.inf)
            worker.columns.index.zero_()
            released = problem.released and pos is not None
            worker.mixture = _ReleasedMixture(problem, kernels, pos, plan) if released else None  # type: ignore[arg-type]
        rows = select_rows(kept, image) if keep_rows else None
        image_sensitive = sensitive[image] if keep_rows else None
        dist = make_strip_distance(x[image], y[image], problem.loss_type)  # type: ignore[arg-type]
        floor = dist.sensitive_floor(problem.band_width, problem.eps)  # None for L1 (computed directly)
        strip = functools.partial(
            _forward_strip, workers=workers, slices=[slice(i, min(n, i + plan.rows)) for i in starts], dist=dist,
            floor=floor, kernels=kernels, problem=problem, pos=pos, rows=rows, sensitive=image_sensitive,
        )  # fmt: skip
        _pool.run(len(starts), len(workers), strip, done=_Progress(image * len(starts), b * len(starts)))
        if len(workers) > 1:
            _merge(ColumnMax(best=best[image], index=index[image]), feature_best[image], workers)
    clamped = cast(Tensor, kept.clamped)  # (row_stats always makes it)
    return best, index, kept.umax, kept.argmin, kept.scale, kept.log_norm, clamped, sensitive, feature_best


class _Progress:
    """Reports strips as they finish: ``done`` counts on from the strips of the images before."""

    def __init__(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def __call__(self, _strip: int) -> None:
        self.done += 1
        report(self.done, self.total)


def _forward_strip(
    w: int,
    k: int,
    *,
    workers: list[_Worker],
    slices: list[slice],
    dist: StripDistance,
    floor: Tensor | None,
    kernels: StripKernels,
    problem: Problem,
    pos: Positions,
    rows: RowStats | None,
    sensitive: Tensor | None,
) -> None:
    """Strip k of an image with worker w's buffers: GEMM, strip kernels, near field of deferred rows, CoBi's mixture."""
    worker, sl = workers[w], slices[k]
    size = sl.stop - sl.start
    u, extra = strip_affinity(dist, sl, worker.buffer[:size], problem, pos)
    stats = select_rows(rows, sl) if rows is not None else select_rows(worker.scratch, slice(0, size))
    defer = None if floor is None else Deferral(floor[sl], worker.deferred[:size], worker.maxima[:size])
    write_a = worker.mixture is not None
    deferred_rows = _strip_forward(kernels, u, dist, stats, problem, worker.columns, sl.start, write_a, defer)
    if deferred_rows and defer is not None:
        # Rows with exact or near duplicates: their near field is evaluated directly, then they are processed.
        row_min = stats.umax.neg().clamp_min_(0.0)
        dist.refine(sl, u, extra, problem.band_width, problem.eps, defer.deferred, row_min, defer.block_max)
        _strip_forward(kernels, u, dist, stats, problem, worker.columns, sl.start, write_a, only=defer.deferred)
        if sensitive is not None:
            sensitive[sl] = defer.deferred
    if worker.mixture is not None:
        worker.mixture.update(u, sl, worker.columns, worker.feature_best)
