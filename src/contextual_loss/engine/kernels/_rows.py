"""Deferred rows and row selection (``defer`` and ``only`` of ``StripKernels.forward``) for any implementation.

The native kernels test and skip rows while they read them. The eager and Triton implementations
derive from :class:`WholeStripForward`, which gives them ``forward`` once: the selected rows are
gathered into a smaller strip, their whole-strip pass runs on it with ``write_a`` (statistics and
a = log CX), and a is folded into the running column maximum with the interface's tie rule
(greater, or equal with a smaller global row: the order in which rows are processed does not
matter). The maths is in :mod:`contextual_loss.engine.kernels.base`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contextual_loss.engine.kernels.base import ColumnMax, Deferral, RowStats
from contextual_loss.engine.strips import block_max, column_max_first_index

__all__ = ["WholeStripForward", "merge_columns"]


def merge_columns(columns: ColumnMax, a: Tensor, global_rows: Tensor) -> None:
    """Fold the column maxima of a (R, M) and their first rows (global indices (R,)) into ``columns``.

    A column takes the strip's value if it is greater, or equal with a smaller row (never for -inf).
    """
    cols, col_max, first = column_max_first_index(a, columns.best, index=columns.index, global_rows=global_rows)
    columns.best[cols] = col_max
    columns.index[cols] = global_rows[first]


class WholeStripForward:
    """Base of the implementations whose forward pass runs over whole strips (eager, Triton).

    A subclass implements :meth:`_whole`; :meth:`forward` adds ``defer`` and ``only`` on top of it.
    """

    def _whole(
        self,
        u: Tensor,
        base: Tensor,
        rows: RowStats,
        *,
        clamp: bool,
        band_width: float,
        eps: float,
        columns: ColumnMax | None,
        row0: int,
        write_a: bool,
    ) -> None:
        """The forward pass over every row of the strip (``StripKernels.forward`` without defer and only)."""
        raise NotImplementedError

    def forward(
        self,
        u: Tensor,
        base: Tensor,
        rows: RowStats,
        *,
        clamp: bool,
        band_width: float,
        eps: float,
        columns: ColumnMax | None,
        row0: int,
        write_a: bool,
        defer: Deferral | None = None,
        only: Tensor | None = None,
    ) -> int:
        """See :meth:`StripKernels.forward <contextual_loss.engine.kernels.base.StripKernels.forward>`.

        With ``defer`` or ``only``, :meth:`_whole` runs on the rows concerned, gathered into a strip of their own.
        """

        def run(
            strip: Tensor, beta: Tensor, stats: RowStats, columns: ColumnMax | None, row0: int, write_a: bool
        ) -> None:
            self._whole(
                strip, beta, stats, clamp=clamp, band_width=band_width, eps=eps, columns=columns, row0=row0,
                write_a=write_a,
            )  # fmt: skip

        if defer is not None and only is not None:
            raise ValueError("give at most one of defer and only")
        count = 0
        if defer is not None:
            maxima = block_max(u)
            row_max = maxima.amax(dim=1)
            torch.gt(row_max, defer.floor, out=defer.deferred)
            count = int(defer.deferred.sum())
            if count == 0:
                run(u, base, rows, columns, row0, write_a)
                return 0
            defer.block_max.copy_(maxima)
            rows.umax.copy_(row_max)  # the deferred rows' maxima; the others are written again below
            only = ~defer.deferred
        if only is None:
            run(u, base, rows, columns, row0, write_a)
            return 0
        index = only.nonzero().squeeze(1)
        if index.numel() == 0:
            return count
        sub = u.index_select(0, index)
        size = index.numel()
        stats = RowStats(
            umax=sub.new_empty(size),
            argmin=torch.empty(size, dtype=torch.long, device=u.device),
            scale=sub.new_empty(size),
            log_norm=sub.new_empty(size),
            clamped=None if rows.clamped is None else torch.empty(size, dtype=torch.bool, device=u.device),
        )
        run(sub, base.index_select(0, index), stats, None, 0, True)
        for mine, theirs in zip(
            (stats.umax, stats.argmin, stats.scale, stats.log_norm, stats.clamped),
            (rows.umax, rows.argmin, rows.scale, rows.log_norm, rows.clamped),
            strict=True,
        ):
            if mine is not None and theirs is not None:
                theirs.index_copy_(0, index, mine)
        if write_a:
            u.index_copy_(0, index, sub)
        elif columns is not None:
            merge_columns(columns, sub, index + row0)
        return count
