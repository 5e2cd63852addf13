"""A minimal single-image streaming pass over any StripKernels, for testing kernel implementations.

It follows the streaming engine's steps with nothing else: strips of ``rows`` rows; rows the kernels
defer as sensitive get their near field evaluated directly, then a second kernel call processes
them; the backward runs on the rows that are some target's best match, refined like the
forward's. So a kernel implementation can be checked against the dense engine's values and
autograd gradients directly. CX only (no CoBi term).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contextual_loss.engine.kernels.base import ColumnMax, Deferral, RowStats, StripKernels
from contextual_loss.engine.streaming._forward import row_stats, select_rows
from contextual_loss.engine.strips import NEAR_BLOCK, StripDistance, make_strip_distance


def forward_strip(
    kernels: StripKernels,
    dist: StripDistance,
    u: Tensor,
    sl: slice,
    stats: RowStats,
    columns: ColumnMax,
    floor: Tensor | None,
    band_width: float,
    eps: float,
) -> Tensor | None:
    """The engine's forward steps on one strip: defer sensitive rows, refine them, process them; the deferred rows."""
    size, m = u.shape
    defer = None
    if floor is not None:
        maxima = u.new_empty(size, -(-m // NEAR_BLOCK))
        defer = Deferral(floor[sl], torch.empty(size, dtype=torch.bool, device=u.device), maxima)
    options = {"clamp": dist.clamp, "band_width": band_width, "eps": eps, "columns": columns, "row0": sl.start}
    if not kernels.forward(u, dist.base[sl], stats, **options, write_a=False, defer=defer) or defer is None:
        return None
    row_min = stats.umax.neg().clamp_min_(0.0)
    dist.refine(sl, u, None, band_width, eps, defer.deferred, row_min, defer.block_max)
    kernels.forward(u, dist.base[sl], stats, **options, write_a=False, only=defer.deferred)
    return defer.deferred


def stream_image(
    kernels: StripKernels,
    x: Tensor,
    y: Tensor,
    *,
    loss_type: str,
    band_width: float,
    eps: float = 1e-5,
    rows: int = 7,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(log CX, best (M,), index (M,), dx (N, C), dy (M, C)) of prepared sets x (N, C), y (M, C)."""
    n, m = x.shape[0], y.shape[0]
    dist = make_strip_distance(x, y, loss_type)  # type: ignore[arg-type]
    stats = row_stats(n, x)
    sensitive = torch.zeros(n, dtype=torch.bool, device=x.device)
    columns = ColumnMax(best=x.new_full((m,), -math.inf), index=torch.zeros(m, dtype=torch.long, device=x.device))
    floor = dist.sensitive_floor(band_width, eps)
    for row0 in range(0, n, rows):
        sl = slice(row0, min(n, row0 + rows))
        u = dist.affinity(sl, x.new_empty(sl.stop - row0, m))
        found = forward_strip(kernels, dist, u, sl, select_rows(stats, sl), columns, floor, band_width, eps)
        if found is not None:
            sensitive[sl] = found
    best, index = columns.best, columns.index
    log_sim = torch.logsumexp(best, 0) - math.log(m)
    # Backward of log CX (grad 1): the engine's bookkeeping, as in streaming._backward._backward_image.
    g = torch.softmax(best, 0)
    r = x.new_zeros(n).index_add_(0, index, g)
    need = (r != 0).nonzero().squeeze(1)
    weighted = x.new_zeros(n).index_add_(0, index, g * best)
    dx, dy = torch.zeros_like(x), torch.zeros_like(y)
    lane = dist.y_gradient(dy)
    for q0 in range(0, need.numel(), rows):
        strip = need[q0 : q0 + rows]
        owners = index.unsqueeze(0) == strip.unsqueeze(1)  # (R, M): column j is owned by strip row q
        arg_rows, arg_cols = owners.nonzero(as_tuple=True)
        g_o, a_o, r_o = g[arg_cols], best[arg_cols], r[strip][arg_rows]
        values = (g_o * torch.expm1(a_o) + (r_o - g_o) * torch.exp(a_o)) / r_o
        u = dist.affinity(strip, x.new_empty(strip.numel(), m))
        row_min = stats.umax[strip].neg().clamp_min_(0.0)
        _, near = dist.refine(strip, u, None, band_width, eps, sensitive[strip], row_min)
        kernels.backward(
            u,
            select_rows(stats, strip),
            gamma_base=weighted[strip] / r[strip],
            band_width=band_width,
            argmax_rows=arg_rows,
            argmax_cols=arg_cols,
            argmax_values=values,
        )
        dist.backward(strip, u, stats.scale[strip] * r[strip], dx, lane, near)
    dist.finish([lane])
    return log_sim, best, index, dx, dy
