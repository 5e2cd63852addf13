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
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from contextual_loss.engine import kernels as _kernels
from contextual_loss.engine.kernels import ColumnMax, Deferral, RowStats, StripKernels
from contextual_loss.engine.streaming._problem import Positions, Problem, image_positions, log_complement, report
from contextual_loss.engine.strips import (
    NEAR_BLOCK,
    StripDistance,
    StripPlan,
    column_max_first_index,
    make_strip_distance,
    spatial_tile,
)

__all__ = ["ForwardOutputs", "forward", "row_stats", "select_rows", "strip_affinity"]

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


def forward(
    x: Tensor, y: Tensor, pos_x: Tensor | None, pos_y: Tensor | None, problem: Problem, keep_rows: bool
) -> ForwardOutputs:
    """Stream a batch of prepared sets x (B, N, C), y (B, M, C) in their (compute) dtype; see :data:`ForwardOutputs`."""
    x, y = x.contiguous(), y.contiguous()  # a transposed view (direct callers) would make row gathers stride by N
    (b, n, _), m = x.shape, y.shape[1]
    kernels = _kernels.select(x.device, x.dtype, problem.kernels)
    plan = problem.plan(n, m, x.dtype)
    best = x.new_empty(b, m)
    index = torch.empty(b, m, dtype=torch.long, device=x.device)
    kept = row_stats((b, n if keep_rows else 0), x)  # (B, 0) when no backward pass will follow
    sensitive = torch.zeros(b, n if keep_rows else 0, dtype=torch.bool, device=x.device)
    scratch = row_stats(plan.rows, x)  # one strip's statistics, reused when they are not kept
    feature_best = x.new_empty(b, m if problem.released else 0)
    deferred = torch.empty(plan.rows, dtype=torch.bool, device=x.device)  # the near-field test of a strip's rows
    maxima = x.new_empty(plan.rows, -(-m // NEAR_BLOCK))
    per_image = -(-n // plan.rows)
    for image in range(b):
        pos = image_positions(problem, pos_x, pos_y, image)
        columns = ColumnMax(best=best[image].fill_(-math.inf), index=index[image].zero_())
        rows = select_rows(kept, image) if keep_rows else None
        mixture = _ReleasedMixture(problem, kernels, pos, plan) if problem.released and pos is not None else None
        dist = make_strip_distance(x[image], y[image], problem.loss_type)  # type: ignore[arg-type]
        floor = dist.sensitive_floor(problem.band_width, problem.eps)  # None for L1 (computed directly)
        buffer = x.new_empty(plan.rows, m)
        for strip, row0 in enumerate(range(0, n, plan.rows)):
            sl = slice(row0, min(n, row0 + plan.rows))
            size = sl.stop - row0
            u, extra = strip_affinity(dist, sl, buffer[:size], problem, pos)
            stats = select_rows(rows, sl) if rows is not None else select_rows(scratch, slice(0, size))
            defer = None if floor is None else Deferral(floor[sl], deferred[:size], maxima[:size])
            write_a = mixture is not None
            deferred_rows = _strip_forward(kernels, u, dist, stats, problem, columns, row0, write_a, defer)
            if deferred_rows and defer is not None:
                # Rows with exact or near duplicates: their near field is evaluated directly, then they are processed.
                row_min = stats.umax.neg().clamp_min_(0.0)
                dist.refine(sl, u, extra, problem.band_width, problem.eps, defer.deferred, row_min, defer.block_max)
                _strip_forward(kernels, u, dist, stats, problem, columns, row0, write_a, only=defer.deferred)
                if keep_rows:
                    sensitive[image, sl] = defer.deferred
            if mixture is not None:
                mixture.update(u, sl, columns, feature_best[image])
            report(image * per_image + strip + 1, b * per_image)
    clamped = cast(Tensor, kept.clamped)  # (row_stats always makes it)
    return best, index, kept.umax, kept.argmin, kept.scale, kept.log_norm, clamped, sensitive, feature_best
