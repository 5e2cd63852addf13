"""The reference strip kernels: eager PyTorch operations, on any device and dtype.

Readable rather than fast: each step below is one or two PyTorch operations over the whole strip
(about ten passes through memory per strip). The native CPU kernels and the Triton kernels do the
same arithmetic in one or two passes and are tested against this class. The maths is in
:mod:`contextual_loss.engine.kernels.base`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contextual_loss.engine.kernels._rows import WholeStripForward
from contextual_loss.engine.kernels.base import ColumnMax, RowStats
from contextual_loss.engine.strips import (
    column_max_first_index,
    exp_without_underflow,
    row_max_first_index,
)

__all__ = ["EagerKernels"]


def _exp(t: Tensor, out: Tensor | None = None) -> Tensor:
    """exp(t) for t <= 0 with underflowing entries exactly 0 (fast on CPU: see exp_without_underflow)."""
    return exp_without_underflow(t, t.amin(dim=1), out=out)


class EagerKernels(WholeStripForward):
    """:class:`~contextual_loss.engine.kernels.base.StripKernels` as eager PyTorch operations."""

    name = "eager"

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
        """The forward pass over every row of the strip."""
        umax, argmin = row_max_first_index(u)
        m_raw = base - umax
        m = m_raw.clamp_min(0.0) if clamp else m_raw
        scale = (m + eps).mul_(band_width).reciprocal_()
        u.sub_(umax.unsqueeze(1)).mul_(scale.unsqueeze(1))  # t <= 0, exactly 0 at the row maximum
        e = _exp(u, out=torch.empty_like(u)).scatter_(1, argmin.unsqueeze(1), 0.0)
        log_norm = torch.log1p(e.sum(dim=1))  # the exact 1 at k(i) is kept out of the sum: one-hot rows stay exact
        del e
        u.sub_(log_norm.unsqueeze(1))  # a = log CX
        rows.umax.copy_(umax)
        rows.argmin.copy_(argmin)
        rows.scale.copy_(scale)
        rows.log_norm.copy_(log_norm)
        if rows.clamped is not None:
            rows.clamped.copy_(m_raw < 0 if clamp else torch.zeros_like(m_raw, dtype=torch.bool))
        if write_a or columns is None:
            return
        cols, col_max, local = column_max_first_index(u, columns.best, index=columns.index, row0=row0)
        columns.best[cols] = col_max
        columns.index[cols] = local + row0

    def backward(
        self,
        u: Tensor,
        rows: RowStats,
        *,
        gamma_base: Tensor,
        band_width: float,
        argmax_rows: Tensor,
        argmax_cols: Tensor,
        argmax_values: Tensor,
    ) -> None:
        """See :meth:`StripKernels.backward <contextual_loss.engine.kernels.base.StripKernels.backward>`."""
        local = torch.arange(u.shape[0], device=u.device)
        a = u.sub_(rows.umax.unsqueeze(1)).mul_(rows.scale.unsqueeze(1)).sub_(rows.log_norm.unsqueeze(1))
        a[local, rows.argmin] = -rows.log_norm  # t = 0 exactly at k(i), as in the forward pass
        p = _exp(a, out=torch.empty_like(a))
        entropy = torch.where(p > 0, a * p, 0.0).sum(dim=1).neg_()
        gamma = (gamma_base + entropy).mul_(-band_width)
        if rows.clamped is not None:
            gamma.masked_fill_(rows.clamped, 0.0)
        p[argmax_rows, argmax_cols] = argmax_values
        p.index_put_((local, rows.argmin), gamma, accumulate=True)
        u.copy_(p)
