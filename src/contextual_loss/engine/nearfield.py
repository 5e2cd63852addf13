r"""Accurate distances where the contextual similarity is sensitive to them: each row's *near field*.

Both engines compute the squared L2 and the cosine distance in *GEMM form*, one matrix product
per block of rows:

.. math::

    \tilde d_{ik} = |x'_i|^2 + |y'_k|^2 - 2 \langle x'_i, y'_k \rangle \ (\text{l2}), \qquad
    \tilde d_{ik} = 1 - \langle x_i, y_k \rangle \ (\text{cosine, unit or zero vectors}),

where, for l2, :math:`x' = x - c`, :math:`y' = y - c` with c the mean of the target vectors (d is
translation invariant; centring only shrinks the rounding). The rounding error of this form does
not shrink with d: with u the unit roundoff of the matrix product,

.. math::

    |\tilde d_{ik} - d_{ik}| \le E_i = \gamma \, (|x'_i|^2 + \max_k |y'_k|^2), \qquad
    \gamma = \lambda (\sqrt{C + 2} + 1) \, u, \quad \lambda = 4

(the usual probabilistic bound of a length-C dot product, with a measured safety factor of
about 2; cosine uses the unit vectors themselves as x', y'). The similarity only sees d through
:math:`t_{ik} = -(d_{ik} - m_i) s_i` with :math:`s_i = 1 / (h (m_i + \epsilon))`, so an error
E in d is an error of up to about :math:`E s_i` in t, which for a row whose minimum is 0 (exact
or near duplicates: flat or saturated regions, repeated patterns, quantised values) is
:math:`E / (h \epsilon)`: 2e6 E at h = 0.05. In float32 that turns rounding of 1e-7 into
exponents wrong by 0.1-10, different from one block of rows to the next (a matrix product's
rounding depends on the block shape), so the loss, the matches and above all the recomputed
backward pass are noise. The rule below finds the entries where this matters and evaluates them
in a form without cancellation; everywhere else the GEMM form is accurate enough.

**Sensitive rows.** Row i is sensitive when its GEMM-form exponents can be off by more than
tau (:func:`tolerance`: 1e-4 in float32, the same number of units in the last place, 1.9e-13,
in float64):

.. math::

    \kappa_i = E_i \, / \, (h (\max(\tilde m_i - E_i, 0) + \epsilon)) > \tau, \qquad
    \tilde m_i = \max(\min_k \tilde d_{ik}, 0).

Every exponent of a row that is not sensitive is within :math:`\kappa_i (2 + h |t|) \le
\tau (2 + h|t|)` of its exact value.

**Near field of a sensitive row.**

.. math::

    N_i = \{k : \tilde d_{ik} - \tilde m_i \le \omega_i\}, \quad
    \omega_i = 4 E_i + (T_i + 1) \, h \, (\tilde m_i + E_i + \epsilon), \quad
    T_i = \log(\kappa_i / \tau).

It holds the row's true minimum, and every entry outside it has an exact exponent
:math:`t_{ik} < -(T_i + 1)` (from :math:`d_{ik} - m_i \ge \tilde d_{ik} - \tilde m_i - 2E_i` and
:math:`m_i \le \tilde m_i + E_i`; the 4 E margin also covers a bound E exceeded twofold), so
its probability :math:`p_{ik} \le e^{t_{ik}}` times its exponent error is below
:math:`\tau (2 + h |t|) e^{-(|t| - T_i)} / e`.

**Direct evaluation.** On N_i the distance is computed without cancellation, from the vectors
themselves: :math:`\sum_c (x_{ic} - y_{kc})^2` for l2 (raw, uncentred vectors: exactly 0 for
equal vectors, relative error about C u otherwise) and :math:`\tfrac12 |x_i - y_k|^2` for cosine
(equal to :math:`1 - \langle x_i, y_k \rangle` for unit vectors; plus 1/2 for each zero vector,
so that a zero vector stays at distance 1 from everything). Its gradient is taken in the same
form: :math:`2 (x_i - y_k)` and :math:`x_i - y_k` (the latter differs from the GEMM form's
:math:`-y_k` by a multiple of :math:`x_i`, which the normalisation's backward pass removes), so
equal vectors get an exactly zero gradient however large the row scale.

**Where it runs.** The streaming engine's GEMM writes u = -d~ (base 0) for every row. The
sensitivity test is a threshold on the row maximum (:func:`sensitive_floor`), so the strip kernels
apply it while they read each row: a sensitive row is deferred, with its maximum and its maxima
over column blocks (which say which blocks can hold near-field entries); the direct values are
written over those entries of u (:meth:`~contextual_loss.engine.strips.StripDistance.refine`), and
a second kernel call processes the deferred rows, which so see exact row minima and exact near
fields. The forward pass records which rows were sensitive; the
backward pass refines the same rows of its recomputed strips (their exact m_i is known), so the
forward and backward passes see the same values whatever the strip shapes. The dense engine
writes the direct values into its distance matrix, and autograd differentiates them.

**Float64.** tau is 1.9e-13 (the same number of units in the last place as 1e-4 in float32), so
float64 results stay accurate to about 1e-12 even at extreme settings (eps = 1e-8, h = 0.02);
rows are refined there mostly when they have exact or near duplicates.

**What it cannot undo.** The near field makes the evaluation on the given float32 features
accurate. Cosine features are rounded to float32 once, after float64 centring and normalisation,
which moves each unit vector by up to u = 2^-24 and the exponents of a row by up to
:math:`K_i = 4\sqrt2\, u \sqrt{m_i} / (h (m_i + \epsilon)) \le 2\sqrt2\, u / (h\sqrt\epsilon)`:
the loss moves by at most about :math:`2K(e^L - 1)`, K the largest K_i. That is a property of the
float32 features, not of their evaluation (docs/engine.md, "What float32 cannot undo").

**Cosine gradients.** On the near field the gradient with respect to the prepared unit vectors
is x_i - y_k rather than -y_k: the two differ by a multiple of x_i (radial), which the
normalisation's backward pass removes, so gradients with respect to the features are the same;
only the tangential part of a gradient with respect to unit vectors is meaningful.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SAFETY",
    "TOLERANCE",
    "dense_distance",
    "direct_backward",
    "direct_cosine",
    "direct_l2",
    "gemm_unit_roundoff",
    "near_reach",
    "rounding_bound",
    "sensitive_floor",
    "sensitivity",
    "tolerance",
]

#: tau in float32: the largest error in the exponents t = -(d - m) s accepted from the GEMM form
#: (other dtypes: the same number of units in the last place, see :func:`tolerance`).
TOLERANCE = 1e-4


#: lambda: safety factor of the rounding bound E. Measured on this CPU's GEMMs (normal, uniform,
#: quantised, ReLU-like and nearly constant data, C = 1 to 2048, strips of 1 to 200 rows), the
#: errors reach at most about 0.4 E (at C <= 3) and 0.25 E (C >= 16).
SAFETY = 4.0

#: Default bound of the temporaries of one chunk of direct evaluations, in elements (pairs x channels).
_CHUNK_ELEMENTS = 4 * 2**20


def gemm_unit_roundoff(t: Tensor) -> float:
    """Unit roundoff of the matrix products on tensors like ``t``: 2^-24 in float32 (2^-11 with TF32)."""
    if t.dtype == torch.float32 and t.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return 2.0**-11
    return torch.finfo(t.dtype).eps / 2


def rounding_bound(norm_sq_x: Tensor, norm_sq_y_max: Tensor | float, channels: int, unit: float) -> Tensor:
    """E_i = lambda (sqrt(C + 2) + 1) u (|x'_i|^2 + max_k |y'_k|^2): the GEMM form's error bound per row."""
    gamma = SAFETY * (math.sqrt(channels + 2) + 1.0) * unit
    return (norm_sq_x + norm_sq_y_max) * gamma


def tolerance(dtype: torch.dtype) -> float:
    """Tau of a compute dtype: :data:`TOLERANCE` in float32, scaled by the unit roundoff (float64: 1.9e-13)."""
    return TOLERANCE * torch.finfo(dtype).eps / torch.finfo(torch.float32).eps


def sensitivity(row_min: Tensor, bound: Tensor, band_width: float, eps: float) -> Tensor:
    """kappa_i / tau with kappa_i = E_i / (h (max(m~_i - E_i, 0) + eps)): rows above 1 are sensitive."""
    scale = band_width * tolerance(bound.dtype)
    return bound / ((row_min - bound).clamp_min(0.0).add_(eps).mul_(scale))


def sensitive_floor(bound: Tensor, band_width: float, eps: float) -> Tensor:
    """The affinity above which a row is sensitive: kappa_i > tau iff max_k u_ik > floor_i, (N,).

    :func:`sensitivity` > 1 reads max(m~_i - E_i, 0) < E_i / (h tau) - eps. Where the right side is
    not positive no row minimum qualifies (floor = inf); elsewhere, with m~_i = max(-max_k u_ik, 0),
    it holds iff max_k u_ik > -(E_i + E_i / (h tau) - eps). A per-row threshold on the row maximum
    lets the strip kernels test rows while they read them (:class:`~contextual_loss.engine.kernels.base.Deferral`).
    """
    reach = bound / (band_width * tolerance(bound.dtype)) - eps
    return torch.where(reach > 0, -(bound + reach), math.inf)


def near_reach(row_min: Tensor, bound: Tensor, ratio: Tensor, band_width: float, eps: float) -> Tensor:
    """m~_i + omega_i: the largest GEMM-form distance in the near field N_i of each row, (R,).

    Args:
        row_min: (R,) the rows' minima m~_i of the GEMM-form distances, clamped at 0.
        bound: (R,) E_i.
        ratio: (R,) kappa_i / tau (:func:`sensitivity`).
        band_width: h.
        eps: epsilon of the relative distance.

    """
    depth = torch.log(ratio).clamp_min_(0.0).add_(1.0)  # T_i + 1
    omega = (row_min + bound + eps).mul_(band_width).mul_(depth).add_(bound, alpha=4.0)
    return omega.add_(row_min)


def _pair_slices(count: int, channels: int, max_elements: int | None) -> list[slice]:
    """Slices of the pairs whose (pairs x channels) temporaries hold at most ``max_elements``."""
    step = max(1, (max_elements or _CHUNK_ELEMENTS) // max(1, channels))
    return [slice(q0, q0 + step) for q0 in range(0, count, step)]


def direct_l2(x: Tensor, y: Tensor, rows: Tensor, cols: Tensor, max_elements: int | None = None) -> Tensor:
    """sum_c (x_ic - y_kc)^2 for the pairs (rows[q], cols[q]) of x (N, C) and y (M, C); (Q,), differentiable.

    Temporaries hold at most ``max_elements`` elements (default 4M).
    """
    differentiable = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    parts = []
    for q in _pair_slices(rows.numel(), x.shape[1], max_elements):
        if differentiable:
            parts.append((x[rows[q]] - y[cols[q]]).square().sum(dim=1))
        else:  # (row gathers with index_select, then in place: the streaming engine's path)
            diff = x.index_select(0, rows[q]).sub_(y.index_select(0, cols[q]))
            parts.append(diff.square_().sum(dim=1))
    if not parts:
        return x.new_zeros(0)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def direct_cosine(x: Tensor, y: Tensor, rows: Tensor, cols: Tensor, max_elements: int | None = None) -> Tensor:
    """1/2 |x_i - y_k|^2 (+ 1/2 per zero vector) for the pairs (rows[q], cols[q]) of unit or zero vectors; (Q,)."""
    half = direct_l2(x, y, rows, cols, max_elements) * 0.5
    return half + 0.5 * (_zero_vectors(x)[rows] + _zero_vectors(y)[cols])


def direct_backward(
    x: Tensor,
    y: Tensor,
    rows: Tensor,
    cols: Tensor,
    weight: Tensor,
    factor: float,
    dx: Tensor,
    dy: Tensor,
    max_elements: int | None = None,
) -> None:
    """Add the gradient of sum_q weight_q * d(x_rows[q], y_cols[q]) into ``dx`` and ``dy``.

    For the direct forms, dd/dx_i = factor (x_i - y_k) = -dd/dy_k, with factor 2 (l2) or 1 (cosine);
    no cancellation: equal vectors get exactly 0, however large the weight.
    """
    for q in _pair_slices(rows.numel(), x.shape[1], max_elements):
        g = x.index_select(0, rows[q]).sub_(y.index_select(0, cols[q])).mul_((weight[q] * factor).unsqueeze(1))
        dx.index_add_(0, rows[q], g)
        dy.index_add_(0, cols[q], g, alpha=-1.0)


def _zero_vectors(t: Tensor) -> Tensor:
    """(..., P) 1.0 where a prepared vector of t (..., P, C) is the zero vector, else 0.0; no gradient."""
    return (t.detach().abs().amax(dim=-1) == 0).to(t.dtype)


def dense_distance(
    x: Tensor, y: Tensor, loss_type: str, band_width: float, eps: float, extra: Tensor | None = None
) -> Tensor:
    """The (B, N, M) feature distances of prepared sets x (B, N, C), y (B, M, C), exact on every near field.

    The GEMM form (centred for l2) everywhere, then the direct form on the near field of each
    sensitive row of d + ``extra`` (CoBi's paper-form spatial term w_s D', or ``None``); the
    result is differentiable (twice, in eager mode) through both forms. ``l1`` is computed
    directly everywhere.

    Eager, the near-field entries are gathered and evaluated in chunks (temporaries of at most 4M
    elements). Under ``torch.compile`` and ``torch.export`` (no data-dependent shapes) and on
    meta tensors, the direct distances of all pairs come from ``torch.cdist`` without its GEMM
    form and are kept on the near fields (the same values, at O(N M C) cost; compiled code is
    differentiated once).
    """
    if loss_type == "l1":
        return torch.cdist(x, y, p=1.0)
    if loss_type == "l2":
        centre = y.detach().mean(dim=1, keepdim=True)  # d does not depend on it: no gradient needed
        xc, yc = x - centre, y - centre
        norm_x, norm_y = xc.pow(2).sum(-1), yc.pow(2).sum(-1)
        d = (norm_x.unsqueeze(2) + norm_y.unsqueeze(1) - 2.0 * (xc @ yc.transpose(1, 2))).clamp_min(0.0)
    else:
        norm_x, norm_y = x.pow(2).sum(-1), y.pow(2).sum(-1)
        d = (1.0 - x @ y.transpose(1, 2)).clamp(0.0, 2.0)
    with torch.no_grad():
        unit = gemm_unit_roundoff(x)
        bound = rounding_bound(norm_x, norm_y.amax(dim=1, keepdim=True), x.shape[-1], unit)  # (B, N)
        total = d if extra is None else d + extra
        row_min = total.amin(dim=2).clamp_min_(0.0)
        kappa = sensitivity(row_min, bound, band_width, eps)
        reach = near_reach(row_min, bound, kappa, band_width, eps)
        near = (kappa > 1.0).unsqueeze(2) & (total <= reach.unsqueeze(2))  # (B, N, M): the near fields
    if torch.compiler.is_compiling() or x.device.type == "meta":
        direct = torch.cdist(x, y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").square()
        if loss_type == "cosine":
            direct = (direct + _zero_vectors(x).unsqueeze(2) + _zero_vectors(y).unsqueeze(1)) * 0.5
        return torch.where(near, direct, d)
    b, i, k = near.nonzero(as_tuple=True)
    if b.numel() == 0:
        return d
    n, m = x.shape[1], y.shape[1]
    flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    direct_form = direct_l2 if loss_type == "l2" else direct_cosine
    values = direct_form(flat_x, flat_y, b * n + i, b * m + k)
    return d.index_put((b, i, k), values)
