r"""The streaming backward pass: the exact gradient of sum_j g_j A_j, recomputing only the rows that need it.

With g_j the gradient on the column maximum A_j (for log CX, g = softmax(A) times the incoming
gradient) and r_i = sum over {j : i*(j) = i} of g_j, the gradient on the distances is

.. math::

    \bar D_{ik} = s_i r_i CX_{ik} - s_i g_k [i = i^*(k)] + \gamma_i [k = k(i)], \quad
    \gamma_i = -h s_i \sum_{j: i^*(j) = i} g_j (A_j + H_i),

with H_i the entropy of row i's softmax. Rows that are nobody's best match (r_i = 0) have no
gradient and are skipped; the others are recomputed strip by strip (one GEMM) and the strip kernels
turn the affinities into the gradient per unit of c_i = s_i r_i
(:meth:`~contextual_loss.engine.kernels.base.StripKernels.backward`), which the distance's GEMMs
apply on the way back to x and y. The two terms at each best-match entry are combined here in
closed form, s r p - s g = c (g expm1(a) + (r - g) e^a) / r, so a saturated (one-hot) softmax gives
an exactly zero float32 gradient instead of rounding noise. For CoBi's released form only the
feature share rho_j = (1 - w) e^{a_{i*(j) j} - A_j} of the mixture depends on x and y: g_j rho_j
and a_{i*(j) j} take the place of g_j and A_j.

Rows the forward pass found sensitive (their near field evaluated directly, see
:mod:`contextual_loss.engine.nearfield`) are refined again in the recomputed strips, from their
stored exact minima, so both passes see the same values whatever the strip shapes; the gradient on
those entries is taken in the direct form (:meth:`~contextual_loss.engine.strips.StripDistance.backward`).

On the CPU the recomputed strips are shared among worker threads; strip k adds its share of dy
into accumulator k mod L (L = workers + 1), in order within each accumulator, so dy does not
depend on which worker ran which strip (:mod:`~contextual_loss.engine.streaming._pool`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contextual_loss.engine.kernels import RowStats, StripKernels
from contextual_loss.engine.streaming import _pool
from contextual_loss.engine.streaming._forward import choose_strips, select_rows, strip_affinity
from contextual_loss.engine.streaming._problem import Positions, Problem, image_positions, log_complement
from contextual_loss.engine.strips import StripPlan, make_strip_distance

__all__ = ["backward"]


def backward(
    grad_best: Tensor,
    x: Tensor,
    y: Tensor,
    pos: tuple[Tensor | None, Tensor | None],
    saved: tuple[Tensor, Tensor, RowStats, Tensor, Tensor],
    problem: Problem,
) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dy) of sum_j grad_best_j A_j, from the forward's (best, index, rows, sensitive, feature_best)."""
    rows = saved[2]
    if rows.umax.shape[-1] != x.shape[1]:
        raise RuntimeError(
            "the streaming engine's forward pass kept no row statistics (it ran without gradients, e.g. "
            "traced with inputs that did not require grad), so it cannot be differentiated; evaluate it "
            "again with gradients enabled"
        )
    kernels, plan = choose_strips(x, y, problem)
    # With workers, the whole pass runs single-threaded in a worker thread (see _pool.call).
    dx, dy = _pool.call(plan.workers, _backward_batch, grad_best, x, y, pos, saved, problem, kernels, plan)
    return _like(dx, x), _like(dy, y)  # the gradients are returned in the inputs' memory layout


def _backward_batch(
    grad_best: Tensor,
    x: Tensor,
    y: Tensor,
    pos: tuple[Tensor | None, Tensor | None],
    saved: tuple[Tensor, Tensor, RowStats, Tensor, Tensor],
    problem: Problem,
    kernels: StripKernels,
    plan: StripPlan,
) -> tuple[Tensor, Tensor]:
    """:func:`backward` once its strip kernels and strips are chosen: (dx, dy), contiguous."""
    best, index, rows, sensitive, feature_best = saved
    b = x.shape[0]
    x, y = x.contiguous(), y.contiguous()  # rows are gathered and scattered strip by strip
    dx, dy = torch.zeros_like(x), torch.zeros_like(y)
    # each worker's strip buffer, for every image (an image's strips are never taller than plan.rows)
    buffers = [x.new_empty(plan.rows, y.shape[1]) for _ in range(plan.workers)]
    for image in range(b):
        g, a_star = grad_best[image], best[image]
        if problem.released:  # only the feature share depends on x and y (exactly 0 at w = 1)
            share = torch.exp(feature_best[image] + log_complement(problem.spatial_weight) - best[image])
            g, a_star = g * share, feature_best[image]
        image_pos = image_positions(problem, pos[0], pos[1], image)
        _backward_image(
            x[image], y[image], image_pos, g, a_star, index[image], select_rows(rows, image), sensitive[image],
            problem, kernels, plan, buffers, dx[image], dy[image],
        )  # fmt: skip
    return dx, dy


def _like(grad: Tensor, t: Tensor) -> Tensor:
    """``grad`` in the memory layout of ``t`` (the fake implementation's ``empty_like(t)``)."""
    return grad if grad.stride() == t.stride() else torch.empty_like(t).copy_(grad)


def _backward_image(
    x: Tensor,
    y: Tensor,
    pos: Positions,
    g: Tensor,
    a_star: Tensor,
    index: Tensor,
    rows: RowStats,
    sensitive: Tensor,
    problem: Problem,
    kernels: StripKernels,
    plan: StripPlan,
    buffers: list[Tensor],
    dx: Tensor,
    dy: Tensor,
) -> None:
    """Add the gradient of sum_j g_j a_{i*(j) j} for one image into ``dx`` (N, C) and ``dy`` (M, C).

    ``buffers`` holds a (plan.rows, M) strip buffer for each of ``plan.workers`` workers.
    """
    n = x.shape[0]
    r = x.new_zeros(n).index_add_(0, index, g)
    need = (r != 0).nonzero().squeeze(1)  # rows that are nobody's best match have zero gradient
    count = need.numel()
    if count == 0:
        return
    weighted = x.new_zeros(n).index_add_(0, index, g * a_star)
    r_need = r[need]
    scale_c = rows.scale[need] * r_need  # c_i = s_i r_i, applied by the distance's GEMMs
    gamma_base = weighted[need] / r_need  # gamma_i / c_i without the entropy (added by the kernels)
    # Best-match entries (i*(j), j), sorted by row: s r p - s g per unit of c_i, in closed form.
    order = torch.argsort(index, stable=True)
    owners = index[order]
    order, owners = order[r[owners] != 0], owners[r[owners] != 0]
    g_o, a_o, r_o = g[order], a_star[order], r[owners]
    values = (g_o * torch.expm1(a_o) + (r_o - g_o) * torch.exp(a_o)) / r_o
    position = torch.full((n,), -1, dtype=torch.long, device=x.device)
    position[need] = torch.arange(count, device=x.device)
    entry_row = position[owners]  # row of each entry among ``need``: non-decreasing
    rows_per_strip = plan.strip_rows(count)
    starts = torch.arange(0, count, rows_per_strip, device=x.device)[1:]
    bounds = [0, *torch.searchsorted(entry_row, starts).tolist(), entry_row.numel()]
    dist = make_strip_distance(x, y, problem.loss_type)  # type: ignore[arg-type]
    strips = len(bounds) - 1
    workers = min(plan.workers, strips)
    lanes = [dist.y_gradient(dy if lane == 0 else None) for lane in range(_pool.lanes_for(workers))]

    def strip(w: int, k: int) -> None:
        q0 = k * rows_per_strip
        part = need[q0 : q0 + rows_per_strip]
        size, lo, hi = part.numel(), bounds[k], bounds[k + 1]
        u, extra = strip_affinity(dist, part, buffers[w][:size], problem, pos)
        row_min = rows.umax[part].neg().clamp_min_(0.0)  # exact where the forward pass refined the row
        _, near = dist.refine(part, u, extra, problem.band_width, problem.eps, sensitive[part], row_min)
        kernels.backward(
            u, select_rows(rows, part), gamma_base=gamma_base[q0 : q0 + size], band_width=problem.band_width,
            argmax_rows=entry_row[lo:hi] - q0, argmax_cols=order[lo:hi], argmax_values=values[lo:hi],
        )  # fmt: skip
        dist.backward(part, u, scale_c[q0 : q0 + size], dx, lanes[k % len(lanes)], near)

    # Strip k adds into lane k mod lanes, in order within a lane: dy does not depend on the scheduling.
    _pool.run(strips, workers, strip, lanes=len(lanes))
    dist.finish(lanes)
