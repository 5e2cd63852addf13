r"""Streaming engine: exact CX and CoBi with memory that grows with N + M, not N x M.

The contextual similarity of Mechrez et al. (ECCV 2018) needs, per target vector j, the maximum
over the prediction index i of a row softmax over the target index. This engine visits the
prediction's rows in full-width strips (:mod:`contextual_loss.engine.strips`); per strip one GEMM
gives the affinities u, and with :math:`s_i = 1 / (h (m_i + \epsilon))`,

.. math::

    t_{ij} = (u_{ij} - \max_k u_{ik}) s_i \le 0, \quad
    L_i = \operatorname{log1p} \sum_{k \ne k(i)} e^{t_{ik}}, \quad
    a_{ij} = t_{ij} - L_i = \log CX_{ij}, \quad
    A_j = \max_i a_{ij}, \quad \log CX = \operatorname{LSE}_j A_j - \log M.

Only row statistics (max, argmin k(i), s_i, L_i) and the running column maximum A_j with its
argmax i*(j) are kept: about 4N + 2M numbers per image. The backward pass
(a custom :class:`torch.autograd.Function`) is exact, including the gradient through the row
minimum; it recomputes only the rows that are some target's argmax, since every other row has
zero gradient. See the project's streaming design note for the derivation; in short, with
g_j = dlogCX/dA_j and r_i = sum over {j : i*(j) = i} of g_j, the gradient on the distances is

.. math::

    \bar D_{ik} = s_i r_i CX_{ik} - s_i g_k [i = i^*(k)] + \gamma_i [k = k(i)], \quad
    \gamma_i = -h s_i \sum_{j: i^*(j) = i} g_j (A_j + H_i),

where H_i is the entropy of row i's softmax, computed from the recomputed strip (only rows in
the backward need it), and the two terms at each argmax entry are combined exactly before
accumulation, so a saturated (one-hot) softmax gives an exactly zero float32 gradient instead of
rounding noise.

On CPU (float32 and float64) the elementwise work of each strip after its GEMM runs in the fused
C kernels of :mod:`contextual_loss.engine.native`, which read the strip once instead of passing
over it about ten times; elsewhere, or when they cannot be built, the same steps run as eager
PyTorch operations (``_log_softmax_rows``, ``_update_columns``, ``_probabilities_and_entropy``).

CoBi (Zhang et al., CVPR 2019) in the paper form adds w_s times the spatial distance to the
distance inside each strip. The released form mixes two log-softmaxes per entry,
c = logaddexp(log(1 - w) + a, log w + b), takes the column maximum on c, and routes the
gradient through the feature share rho = (1 - w) e^{a - c} at the argmax entries.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from contextual_loss.engine import native
from contextual_loss.engine.strips import (
    DEFAULT_MEMORY_BUDGET,
    StripDistance,
    StripPlan,
    column_max_first_index,
    exp_without_underflow,
    make_strip_distance,
    plan_strips,
    row_max_first_index,
    spatial_tile,
    underflow_limit,
)
from contextual_loss.engine.types import ContextualMatch, SpatialTerm
from contextual_loss.maths import Distance

__all__ = [
    "DoubleBackwardError",
    "streaming_log_similarity",
    "streaming_match",
    "streaming_plan",
]


class DoubleBackwardError(RuntimeError):
    """Raised when a gradient computed by the streaming engine is differentiated again."""


_DOUBLE_BACKWARD_MESSAGE = (
    "the streaming contextual-loss engine computes first-order gradients only; differentiating its "
    "gradient again (double backward, e.g. a gradient penalty through create_graph=True) is not "
    "supported. Pass engine='dense' for higher-order gradients (memory grows with N x M)."
)


@dataclass(frozen=True)
class _Options:
    loss_type: Distance
    band_width: float
    eps: float
    spatial: SpatialTerm | None  # None when w_s = 0 (no effect, as in the dense engine)
    memory_budget: int

    @property
    def released(self) -> bool:
        return self.spatial is not None and self.spatial.form == "released"

    @property
    def paper_spatial(self) -> SpatialTerm | None:
        return self.spatial if self.spatial is not None and self.spatial.form == "paper" else None


@dataclass
class _Stats:
    """What the forward keeps: O(N + M) numbers per image (1-D), or a batch of them (stacked).

    Row fields (per prediction vector i) are only filled when a backward pass will follow.
    """

    best: Tensor  # A_j = max_i a_ij (max of the CoBi mixture c_ij for the released form)
    index: Tensor  # i*(j), the first row attaining it
    umax: Tensor | None = None  # max_k u_ik, i.e. beta_i - m_i
    argmin: Tensor | None = None  # k(i), the first column attaining the row minimum of d
    scale: Tensor | None = None  # s_i = 1 / (h (m_i + eps))
    log_norm: Tensor | None = None  # L_i = log1p(sum_{k != k(i)} exp(t_ik))
    clamped: Tensor | None = None  # m_i < 0 by rounding and clamped: no gradient through it (as dense)
    feature_best: Tensor | None = None  # released CoBi: a_{i*(j), j}
    feature_share: Tensor | None = None  # released CoBi: rho_j = (1 - w) exp(a - c) at (i*(j), j)

    def present(self) -> tuple[list[str], list[Tensor]]:
        names = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        return names, [getattr(self, name) for name in names]

    @classmethod
    def stack(cls, images: list[_Stats]) -> _Stats:
        names, _ = images[0].present()
        return cls(**{name: torch.stack([getattr(im, name) for im in images]) for name in names})

    def image(self, b: int) -> _Stats:
        names, values = self.present()
        return _Stats(**{name: value[b] for name, value in zip(names, values, strict=True)})


#: The per-row fields of :class:`_Stats`, kept only when a backward pass will follow.
_ROW_FIELDS = ("umax", "argmin", "scale", "log_norm", "clamped")


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device type without autocast
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _active_spatial(spatial: SpatialTerm | None) -> SpatialTerm | None:
    return None if spatial is None or spatial.weight == 0.0 else spatial


def streaming_plan(
    n: int,
    m: int,
    *,
    loss_type: Distance,
    spatial: SpatialTerm | None = None,
    dtype: torch.dtype = torch.float32,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> StripPlan:
    """The strips the streaming engine uses for an N x M problem (rows per strip, workspace bytes).

    Args:
        n: prediction vectors N. m: target vectors M.
        loss_type: the distance (L1 needs one more strip buffer).
        spatial: CoBi's spatial term, if any (one more strip buffer).
        dtype: dtype of the inputs (float16/bfloat16 are computed in float32).
        memory_budget: bytes of strip workspace.

    """
    tiles = 2 + (loss_type == "l1") + (_active_spatial(spatial) is not None)
    return plan_strips(n, m, dtype=_compute_dtype(dtype), memory_budget=memory_budget, tiles=tiles)


def _plan(x: Tensor, y: Tensor, opts: _Options) -> StripPlan:
    return streaming_plan(
        x.shape[1], y.shape[1], loss_type=opts.loss_type, spatial=opts.spatial, dtype=x.dtype,
        memory_budget=opts.memory_budget,
    )  # fmt: skip


def _image_positions(opts: _Options, image: int, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Positions (pos_x, pos_y) of one image for CoBi: (N, 2) and (M, 2), shared by the batch or per image."""
    if opts.spatial is None:
        return None, None
    pos = (opts.spatial.pos_x, opts.spatial.pos_y)
    return tuple((p[image] if p.ndim == 3 else p).to(dtype) for p in pos)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- forward


def _strip_affinity(
    dist: StripDistance, rows: Tensor | slice, out: Tensor, opts: _Options, pos: tuple[Tensor | None, Tensor | None]
) -> Tensor:
    """Affinities of a strip; CoBi's paper form adds w_s D' to the distance d (subtracts it from u)."""
    u = dist.affinity(rows, out)
    spatial = opts.paper_spatial
    if spatial is not None:  # (the distance's floor of u is lowered by w_s * reach in _floor)
        u.sub_(spatial_tile(pos[0][rows], pos[1], "paper").mul_(spatial.weight))
    return u


def _log_softmax_rows(
    u: Tensor,
    work: Tensor,
    base: Tensor,
    floor: Tensor,
    clamp: bool,
    band_width: float,
    eps: float,
    need_clamped: bool,
) -> dict[str, Tensor]:
    """Turn a strip of affinities into a_ij = log CX_ij in place; return the row statistics.

    ``base`` and ``floor`` are the rows' beta_i and lower bounds of u; ``work`` is scratch of the
    strip's shape.
    """
    umax, argmin = row_max_first_index(u)
    m_raw = base - umax
    m = m_raw.clamp_min(0.0) if clamp else m_raw
    scale = (m + eps).mul_(band_width).reciprocal_()
    u.sub_(umax.unsqueeze(1)).mul_(scale.unsqueeze(1))  # t <= 0, exactly 0 at the row maximum
    exp_without_underflow(u, (floor - umax) * scale, out=work).scatter_(1, argmin.unsqueeze(1), 0.0)
    z = work.sum(dim=1)
    log_norm = torch.log1p(z)  # the exact 1 at k(i) is kept out of the sum: accurate for one-hot rows
    stats = {"umax": umax, "argmin": argmin, "scale": scale, "log_norm": log_norm}
    if need_clamped:
        stats["clamped"] = m_raw < 0 if clamp else torch.zeros_like(umax, dtype=torch.bool)
    u.sub_(log_norm.unsqueeze(1))
    return stats


def _released_mixture(
    a: Tensor, out: Tensor, rows: slice, opts: _Options, pos: tuple[Tensor, Tensor], reach: float
) -> Tensor:
    """log((1 - w) CX_feat + w CX_spatial) of a strip, into ``out``: the released CoBi code's mixture."""
    weight = opts.spatial.weight
    b = spatial_tile(pos[0][rows], pos[1], "released").neg_()  # affinity -D' (base 0, no clamp)
    base = torch.zeros_like(b[:, 0])
    _log_softmax_rows(b, out, base, base - reach**2, False, opts.band_width, opts.eps, False)
    b.add_(math.log(weight))
    torch.add(a, math.log1p(-weight) if weight < 1.0 else -math.inf, out=out)
    return torch.logaddexp(out, b, out=out)


def _spatial_reach(pos: tuple[Tensor, Tensor]) -> float:
    """An upper bound of the distance between any two positions: the diagonal of their bounding box."""
    both = torch.cat(pos)
    return float((both.amax(dim=0) - both.amin(dim=0)).norm()) * (1.0 + 1e-3) + 1e-6


def _update_columns(tile: Tensor, row0: int, best: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Running column max and argmax; the first row wins ties (strict ``>`` across strips).

    Returns the improved columns and their rows within ``tile``.
    """
    cols, col_max, local = column_max_first_index(tile, best)
    best[cols] = col_max
    index[cols] = local + row0
    return cols, local


def _floor(dist: StripDistance, opts: _Options, pos: tuple[Tensor | None, Tensor | None]) -> Tensor:
    """Per-row lower bound of the affinities, including CoBi's paper-form spatial term."""
    if opts.paper_spatial is None:
        return dist.floor
    return dist.floor - opts.paper_spatial.weight * _spatial_reach(pos)


def _forward_image(x: Tensor, y: Tensor, opts: _Options, plan: StripPlan, pos, need_grad: bool) -> _Stats:
    """Stream one image's N x M problem strip by strip."""
    n, m = x.shape[0], y.shape[0]
    dist = make_strip_distance(x, y, opts.loss_type)
    kernels = native.kernels_for(x)
    floor = _floor(dist, opts, pos) if kernels is None else None  # only the eager exp needs it
    buf_u = x.new_empty(plan.rows, m)
    buf_w = x.new_empty(plan.rows, m) if kernels is None or opts.released else None
    best = x.new_full((m,), -math.inf)
    index = torch.zeros(m, dtype=torch.long, device=x.device)
    feature_best = x.new_zeros(m) if opts.released else None
    reach = _spatial_reach(pos) if opts.released else 0.0
    result = _Stats(best=best, index=index)
    # Row statistics are written into (N,) tensors strip by strip: no per-strip tensors outlive
    # their strip (heap fragmentation). Without a backward they are scratch for the native kernels.
    row_out = _row_outputs(x, n, need_grad or kernels is not None, need_grad)
    if need_grad:
        for name in _ROW_FIELDS:
            setattr(result, name, row_out[name])
    for row0 in range(0, n, plan.rows):
        rows = slice(row0, min(n, row0 + plan.rows))
        size = rows.stop - row0
        a = _strip_affinity(dist, rows, buf_u[:size], opts, pos)
        if kernels is not None:  # one fused pass; a becomes log CX only when the mixture needs it
            strip_out = {name: None if t is None else t[rows] for name, t in row_out.items()}
            kernels.forward(
                a, dist.base[rows], dist.clamp, opts.band_width, opts.eps, underflow_limit(a.dtype), strip_out,
                write_a=opts.released, best=None if opts.released else best, index=index, row0=row0,
            )  # fmt: skip
            if not opts.released:
                continue
        else:
            stats = _log_softmax_rows(
                a, buf_w[:size], dist.base[rows], floor[rows], dist.clamp, opts.band_width, opts.eps, need_grad
            )
            if need_grad:
                for name in _ROW_FIELDS:
                    row_out[name][rows] = stats[name]
        if opts.released:
            mixture = _released_mixture(a, buf_w[:size], rows, opts, pos, reach)
            cols, local = _update_columns(mixture, row0, best, index)
            feature_best[cols] = a[local, cols]
        else:
            _update_columns(a, row0, best, index)
    if opts.released:
        result.feature_best = feature_best
        result.feature_share = (feature_best - best).exp_().mul_(1.0 - opts.spatial.weight)
    return result


def _row_outputs(x: Tensor, n: int, wanted: bool, with_clamped: bool) -> dict[str, Tensor | None]:
    """(N,) tensors for the row statistics of :data:`_ROW_FIELDS` (empty dict if not ``wanted``)."""
    if not wanted:
        return {}
    dtypes = {"argmin": torch.long, "clamped": torch.bool}
    out: dict[str, Tensor | None] = {
        name: torch.empty(n, dtype=dtypes.get(name, x.dtype), device=x.device) for name in _ROW_FIELDS
    }
    if not with_clamped:
        out["clamped"] = None
    return out


# ----------------------------------------------------------------------------- backward


def _probabilities_and_entropy(
    u: Tensor, out: Tensor, row: tuple[Tensor, Tensor, Tensor, Tensor], local: Tensor, floor: Tensor
) -> tuple[Tensor, Tensor]:
    """The CX p of a recomputed strip into ``out``, and the row entropies H_i = -sum_k p_ik log p_ik.

    ``row`` holds the strip's (umax, scale, argmin, log_norm); a = (u - umax) s - L is formed
    exactly as in the forward pass, with a = -L at k(i).
    """
    umax, s, k, log_norm = row
    a = u.sub_(umax.unsqueeze(1)).mul_(s.unsqueeze(1)).sub_(log_norm.unsqueeze(1))
    a[local, k] = -log_norm
    p = exp_without_underflow(a, (floor - umax) * s - log_norm, out=out)
    entropy = a.mul_(p).sum(dim=1).neg_()  # (a is not needed after)
    return p, entropy


def _backward_image(
    x: Tensor, y: Tensor, st: _Stats, grad: Tensor, opts: _Options, plan: StripPlan, pos, dx: Tensor, dy: Tensor
) -> None:
    """Gradient of ``grad * log CX`` for one image, added into ``dx`` and ``dy``.

    Works per unit of the row scale c_i = s_i r_i, which the distance's GEMMs apply.
    """
    n = x.shape[0]
    g = torch.softmax(st.best, dim=0).mul_(grad)  # d log CX / d A_j
    a_star = st.best
    if opts.released:  # only the feature share of the mixture depends on x and y
        g, a_star = g * st.feature_share, st.feature_best
    r = x.new_zeros(n).index_add_(0, st.index, g)
    rows = (r != 0).nonzero().squeeze(1)  # rows that are nobody's argmax have zero gradient
    dist = make_strip_distance(x, y, opts.loss_type)
    if rows.numel() == 0:
        return
    weighted = x.new_zeros(n).index_add_(0, st.index, g * a_star)
    r_rows = r[rows]
    scale_c = st.scale[rows] * r_rows
    # gamma_i / c_i = -h (sum_{J(i)} g_j A_j / r_i + H_i): the gradient through the row minimum m_i,
    # sent to (i, k(i)); the row entropy H_i is computed below, strip by strip.
    gamma_base = weighted[rows] / r_rows
    # Argmax entries (i*(j), j): s r p - s g written as one exact value (0 for saturated rows).
    order = torch.argsort(st.index, stable=True)
    owners = st.index[order]
    keep = r[owners] != 0
    order, owners = order[keep], owners[keep]
    g_o, a_o, r_o = g[order], a_star[order], r[owners]
    argmax_value = (g_o * torch.expm1(a_o) + (r_o - g_o) * torch.exp(a_o)) / r_o
    position = torch.full((n,), -1, dtype=torch.long, device=x.device)
    position[rows] = torch.arange(rows.numel(), device=x.device)
    kernels = native.kernels_for(x)
    buf_a = x.new_empty(plan.backward_rows, y.shape[0])
    if kernels is None:  # the eager passes need a second buffer and the rows' lower bounds of u
        buf_p, floor = x.new_empty(plan.backward_rows, y.shape[0]), _floor(dist, opts, pos)
    for q0 in range(0, rows.numel(), plan.backward_rows):
        strip = rows[q0 : q0 + plan.backward_rows]
        size = strip.numel()
        local = torch.arange(size, device=x.device)
        row = (st.umax[strip], st.scale[strip], st.argmin[strip], st.log_norm[strip])
        k = row[2]
        u = _strip_affinity(dist, strip, buf_a[:size], opts, pos)
        if kernels is not None:  # one fused pass: p over u, and the row entropies
            entropy = kernels.backward(u, *row, underflow_limit(u.dtype))
            p = u
        else:
            p, entropy = _probabilities_and_entropy(u, buf_p[:size], row, local, floor[strip])
        gamma_c = (gamma_base[q0 : q0 + size] + entropy).mul_(-opts.band_width)
        gamma_c.masked_fill_(st.clamped[strip], 0.0)
        lo = int(torch.searchsorted(owners, strip[0]))
        hi = int(torch.searchsorted(owners, strip[-1], right=True))
        p[position[owners[lo:hi]] - q0, order[lo:hi]] = argmax_value[lo:hi]
        p.index_put_((local, k), gamma_c, accumulate=True)
        dist.backward(strip, p, scale_c[q0 : q0 + size], dx, dy)
    dist.finish(dy)


# ----------------------------------------------------------------------------- autograd


def _forward(x: Tensor, y: Tensor, opts: _Options, need_grad: bool) -> _Stats:
    plan = _plan(x, y, opts)
    images = [
        _forward_image(x[b], y[b], opts, plan, _image_positions(opts, b, x.dtype), need_grad) for b in range(x.shape[0])
    ]
    return _Stats.stack(images)


def _log_similarity(best: Tensor) -> Tensor:
    return torch.logsumexp(best, dim=1) - math.log(best.shape[1])


class _FirstOrderOnly(torch.autograd.Function):
    """Passes gradients through; raises :class:`DoubleBackwardError` if they are differentiated."""

    @staticmethod
    def forward(ctx, dx: Tensor, dy: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return dx.view_as(dx), dy.view_as(dy)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> None:
        raise DoubleBackwardError(_DOUBLE_BACKWARD_MESSAGE)


class _StreamingLogCX(torch.autograd.Function):
    """log CX(X, Y) per image from prepared sets, with the exact streaming backward."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, opts: _Options) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad(), _no_autocast(x.device):
            stats = _forward(x, y, opts, need_grad=True)
        names, tensors = stats.present()
        ctx.save_for_backward(x, y, *tensors)
        ctx.names, ctx.opts = names, opts
        ctx.mark_non_differentiable(stats.best, stats.index)
        return _log_similarity(stats.best), stats.best, stats.index

    @staticmethod
    def backward(ctx, grad_log: Tensor, _grad_best: Tensor, _grad_index: Tensor):
        x, y, *tensors = ctx.saved_tensors
        stats = _Stats(**dict(zip(ctx.names, tensors, strict=True)))
        opts: _Options = ctx.opts
        plan = _plan(x, y, opts)
        # Gradients in the layout of x and y (often transposed views of feature maps): no copies downstream.
        dx, dy = torch.zeros_like(x), torch.zeros_like(y)
        with torch.no_grad(), _no_autocast(x.device):
            for b in range(x.shape[0]):
                pos = _image_positions(opts, b, x.dtype)
                _backward_image(x[b], y[b], stats.image(b), grad_log[b], opts, plan, pos, dx[b], dy[b])
        if torch.is_grad_enabled():  # create_graph=True: a second differentiation must fail loudly
            dx, dy = _FirstOrderOnly.apply(dx, dy, x, y)
        return dx, dy, None


# ----------------------------------------------------------------------------- public entry points


def _stream(
    x: Tensor,
    y: Tensor,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None,
    memory_budget: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    # Reduced-precision inputs are computed (and accumulated) in float32.
    dtype = _compute_dtype(torch.promote_types(x.dtype, y.dtype))
    x, y = x.to(dtype), y.to(dtype)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    opts = _Options(loss_type, float(band_width), float(eps), _active_spatial(spatial), budget)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return _StreamingLogCX.apply(x, y, opts)
    # No gradient wanted: bypass the autograd Function, so no statistics are kept at all.
    with torch.no_grad(), _no_autocast(x.device):
        stats = _forward(x, y, opts, need_grad=False)
    return _log_similarity(stats.best), stats.best, stats.index


def streaming_log_similarity(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    memory_budget: int | None = None,
) -> Tensor:
    """Log CX(X, Y) per image, (B,), streamed over row strips of at most ``memory_budget`` bytes.

    Args:
        x: prepared prediction set (B, N, C).
        y: prepared target set (B, M, C).
        loss_type: ``"cosine"``, ``"l2"`` or ``"l1"``.
        band_width: h > 0.
        eps: epsilon of the relative distance.
        spatial: CoBi's spatial term, or ``None`` for CX.
        memory_budget: bytes of strip workspace (default 64 MiB); see :func:`streaming_plan`.

    Returns:
        (B,) log CX, float32 (float64 for float64 inputs), differentiable once.

    """
    return _stream(x, y, loss_type, band_width, eps, spatial, memory_budget)[0]


def streaming_match(
    x: Tensor,
    y: Tensor,
    *,
    loss_type: Distance,
    band_width: float,
    eps: float,
    spatial: SpatialTerm | None = None,
    memory_budget: int | None = None,
) -> ContextualMatch:
    """Per-target matches i*(j) and max_i CX_ij from the streaming forward, with no N x M matrix.

    Arguments as in :func:`streaming_log_similarity`; ``log_similarity`` is differentiable.
    """
    log_sim, best, index = _stream(x, y, loss_type, band_width, eps, spatial, memory_budget)
    return ContextualMatch(log_similarity=log_sim, prediction_index=index, similarity=best.exp())
