r"""The mathematics of the Contextual Loss, in one place.

Implements the contextual similarity of Mechrez, Talmi and Zelnik-Manor, "The Contextual Loss
for Image Transformation with Non-Aligned Data" (ECCV 2018), and the spatial term of the
Contextual Bilateral loss of Zhang, Chen, Ng and Koltun, "Zoom to Learn, Learn to Zoom"
(CVPR 2019), as the project's definition (``docs/definition.md``) states them.

Everything here works on *sets*: ``x`` of shape (B, N, C) holds the prediction's N feature
vectors, ``y`` of shape (B, M, C) the target's M vectors. The dense functions build the full
(B, N, M) matrices; they are the readable reference that the streaming engine must agree with.

The similarity is evaluated in log space. With :math:`m_i = \min_k d_{ik}` and
:math:`s_i = 1 / (h (m_i + \epsilon))`, steps 3-5 of the definition are a softmax over the
target index,

.. math::

    \log CX_{ij} = -(d_{ij} - m_i) s_i - \log \sum_k \exp(-(d_{ik} - m_i) s_i),

so no exponent is ever positive, and :math:`\log CX = \operatorname{LSE}_j \max_i \log CX_{ij} - \log M`.

Vocabulary: ``cx`` names the entries CX_ij (``log_cx_matrix``), ``similarity`` the per-image
CX(X, Y) (``log_similarity_from_matrix``), as in the engine and the public API.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from contextual_loss._deprecation import moved

__all__ = [
    "Center",
    "CoBiForm",
    "Distance",
    "bilateral_distance",
    "bilateral_log_cx_matrix",
    "feature_distance",
    "grid_positions",
    "log_cx_matrix",
    "log_similarity_from_matrix",
    "mix_released",
    "prepare_features",
    "relative_distance",
    "spatial_distance",
    "zero_norm_tolerance",
]

Distance = Literal["cosine", "l1", "l2"]
Center = Literal["image", "batch"]
CoBiForm = Literal["paper", "released"]

#: Centred vectors shorter than this fraction of the image's largest raw feature norm count as
#: zero vectors: direction 0 (cosine 0 with everything) and zero gradient. See ``zero_norm_tolerance``.
ZERO_NORM_RELATIVE = 64.0


def zero_norm_tolerance(x: Tensor, y: Tensor, precision: torch.dtype | None = None) -> Tensor:
    """Per-image norm below which a centred vector is treated as the zero vector.

    Centring a constant image leaves rounding noise of about ``finfo.eps`` times the feature
    scale; normalising that noise would produce an arbitrary direction and gradients of order
    ``1 / noise``. The tolerance is ``64 * finfo(precision).eps`` times the largest raw feature
    norm of the image pair, so it scales with the features (cosine distance stays scale-invariant).

    Args:
        x: prediction set (B, N, C).
        y: target set (B, M, C).
        precision: the dtype whose ``eps`` sets the tolerance (default: that of ``x``);
            :func:`prepare_features` centres in float64 and passes float64 for every input dtype.

    Returns:
        A detached (B, 1, 1) tensor.

    """
    precision = x.dtype if precision is None else precision
    with torch.no_grad():
        scale = torch.maximum(x.norm(dim=-1).amax(dim=-1), y.norm(dim=-1).amax(dim=-1))
        tiny = torch.finfo(precision).tiny
        return (ZERO_NORM_RELATIVE * torch.finfo(precision).eps * scale).clamp_min(tiny).view(-1, 1, 1)


def _power_of_two_below(peak: Tensor) -> Tensor:
    """2^-e with peak = f 2^e, f in [1/2, 1) (1 where peak is 0): scaling by it is exact."""
    return torch.ldexp(torch.ones_like(peak), -torch.frexp(peak).exponent)


def _normalize(v: Tensor, tol: Tensor) -> Tensor:
    """Unit vectors along the last axis; vectors of norm <= tol become exactly 0 (no gradient)."""
    norm = v.norm(dim=-1, keepdim=True)
    # One per-vector scale and one product: no full-size temporaries besides the result.
    scale = torch.where(norm > tol, norm.clamp_min(tol).reciprocal(), torch.zeros_like(norm))
    return v * scale


def prepare_features(x: Tensor, y: Tensor, loss_type: Distance, center: Center = "image") -> tuple[Tensor, Tensor]:
    """Turn two feature sets into what the distance is computed on.

    For ``cosine`` both sets are centred on the mean of the target's vectors (per image, or over
    the whole batch with ``center="batch"``) and scaled to unit length. ``l1`` and ``l2`` use
    the raw vectors, as the authors' code does.

    Args:
        x: prediction set (B, N, C).
        y: target set (B, M, C).
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``.
        center: ``"image"`` or ``"batch"``; only used by ``cosine``.

    Returns:
        The prepared ``(x, y)``.

    """
    if loss_type != "cosine":
        return x, y
    # Centring subtracts nearly equal numbers for vectors near the mean: in float32 the mean's own
    # rounding (u |mu|) would turn their directions by u |mu| / |x - mu|, enough to separate
    # collinear or equal directions by more than eps. So centring and normalising run in float64
    # and the unit vectors are rounded once, to the input's precision; only these O((N + M) C)
    # operations run in float64. A power of two (exact, and without effect on directions) brings
    # the values to at most 1 before the mean (no overflow of its sum, nor of the squared norms;
    # what underflows lies far below the zero-norm tolerance): cosine is scale-invariant at any scale.
    with torch.no_grad():
        peak = torch.maximum(_largest_magnitude(x), _largest_magnitude(y)).to(torch.float64)
        scale = _power_of_two_below(peak if center == "image" else peak.amax().expand_as(peak)).view(-1, 1, 1)
    xw, yw = x * scale, y * scale  # (float64: the scale's dtype wins the type promotion; one pass each)
    mu = yw.mean(dim=1, keepdim=True) if center == "image" else yw.mean(dim=(0, 1), keepdim=True)
    # float64's eps whatever the input dtype: centring in float64 leaves noise of that order, and
    # float32 and float64 inputs then define the same zero vectors
    tol = zero_norm_tolerance(xw, yw, precision=torch.float64)
    return _normalize(xw - mu, tol).to(x.dtype), _normalize(yw - mu, tol).to(y.dtype)


def _largest_magnitude(t: Tensor) -> Tensor:
    """(B,) max |t| per image of a set t (B, P, C), in one pass without a temporary (0 for an empty set)."""
    if t.shape[1] * t.shape[2] == 0:
        return t.new_zeros(t.shape[0])
    return torch.linalg.vector_norm(t.detach(), ord=math.inf, dim=(1, 2))


def feature_distance(x: Tensor, y: Tensor, loss_type: Distance) -> Tensor:
    """Dense pairwise distance matrix d_ij between prepared sets.

    ``cosine``: ``1 - <x_i, y_j>`` clamped to [0, 2] (inputs are unit or zero vectors);
    ``l2``: squared Euclidean distance clamped at 0; ``l1``: sum of absolute differences.

    Args:
        x: (B, N, C).
        y: (B, M, C).
        loss_type: the distance.

    Returns:
        (B, N, M) distances.

    """
    if loss_type == "cosine":
        return (1.0 - x @ y.transpose(1, 2)).clamp(0.0, 2.0)
    if loss_type == "l2":
        sq = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(1) - 2.0 * (x @ y.transpose(1, 2))
        return sq.clamp_min(0.0)
    return torch.cdist(x, y, p=1.0)


def grid_positions(
    height: int,
    width: int,
    form: CoBiForm = "paper",
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Positions (row, col) of the H*W cells of a feature map, in row-major order.

    ``paper`` (our definition): pixel centres ((r + 0.5) / H, (c + 0.5) / W) scaled by
    (H, W) / max(H, W), i.e. ((r + 0.5), (c + 0.5)) / max(H, W): the aspect ratio is kept and maps
    of different sizes share the frame of the image. ``released``: (r / (H + 1), c / (W + 1)),
    the grid of the released CoBi code.

    Returns:
        (H * W, 2) tensor.

    """
    if form == "paper":
        scale = float(max(height, width))
        rows = (torch.arange(height, device=device, dtype=dtype) + 0.5) / scale
        cols = (torch.arange(width, device=device, dtype=dtype) + 0.5) / scale
    else:
        rows = torch.arange(height, device=device, dtype=dtype) / (height + 1)
        cols = torch.arange(width, device=device, dtype=dtype) / (width + 1)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack((grid_r.reshape(-1), grid_c.reshape(-1)), dim=-1)


def spatial_distance(pos_x: Tensor, pos_y: Tensor, form: CoBiForm = "paper") -> Tensor:
    """Distance D'_ij between positions: Euclidean (``paper``) or squared Euclidean (``released``).

    Args:
        pos_x: (N, 2) or (B, N, 2).
        pos_y: (M, 2) or (B, M, 2).
        form: ``"paper"`` or ``"released"``.

    Returns:
        (N, M) (or (B, N, M)) distances; no gradient flows to positions in practice.

    """
    diff = pos_x.unsqueeze(-2) - pos_y.unsqueeze(-3)
    sq = diff.pow(2).sum(-1)
    return sq if form == "released" else sq.sqrt()


def relative_distance(d: Tensor, eps: float) -> Tensor:
    """d~_ij = d_ij / (min_k d_ik + eps), the min over the target index (last axis)."""
    return d / (d.min(dim=-1, keepdim=True).values + eps)


def log_cx_matrix(d: Tensor, band_width: float, eps: float) -> Tensor:
    """Log CX_ij from a distance matrix, the softmax over the target index taken in log space.

    The row minimum is taken with ``min(dim)``, so ties resolve to the first index and its
    gradient flows to that entry, as in the references (see ``docs/streaming.md``).

    Args:
        d: (..., N, M) non-negative distances.
        band_width: h > 0.
        eps: epsilon of the relative distance.

    Returns:
        (..., N, M) tensor of log CX_ij <= 0.

    """
    m = d.min(dim=-1, keepdim=True).values
    s = 1.0 / (band_width * (m + eps))
    t = (m - d) * s
    return t - torch.logsumexp(t, dim=-1, keepdim=True)


def mix_released(log_feat: Tensor, log_spatial: Tensor, weight_sp: float) -> Tensor:
    """log((1 - w) CX_feat + w CX_spatial), the released CoBi code's mixture, in log space.

    No case is special: at w = 0 (or 1) the log-weight log w (or log(1 - w)) is -inf, so that
    share is exactly 0 and passes an exactly zero gradient. Written as a log-sum-exp over the two
    shares, whose derivatives are the shares' weights exp(share - result) <= 1 at every order:
    ``torch.logaddexp``'s second derivative evaluates exp(b - a) and overflows to NaN where the
    spatial share dominates by more than ~700 (the near-identity spatial CX of the released form).
    """
    log_w = math.log(weight_sp) if weight_sp > 0.0 else -math.inf
    log_1mw = math.log1p(-weight_sp) if weight_sp < 1.0 else -math.inf
    shares = torch.broadcast_tensors(log_feat + log_1mw, log_spatial + log_w)
    return torch.logsumexp(torch.stack(shares), dim=0)


def bilateral_distance(d_feat: Tensor, d_spatial: Tensor, weight_sp: float) -> Tensor:
    """CoBi's combined distance d_ij + w_s D'_ij (``form="paper"``), broadcasting D' over the batch."""
    return d_feat + weight_sp * d_spatial


def bilateral_log_cx_matrix(
    d_feat: Tensor, d_spatial: Tensor, weight_sp: float, form: CoBiForm, band_width: float, eps: float
) -> Tensor:
    """Log CX_ij of CoBi from the feature and the spatial distances.

    ``paper``: :func:`log_cx_matrix` of :func:`bilateral_distance`. ``released``: the released
    code's mixture log((1 - w) CX_feat + w CX_spatial), each CX a softmax of its own distance.

    Args:
        d_feat: (B, N, M) feature distances d_ij.
        d_spatial: (N, M) spatial distances D'_ij (:func:`spatial_distance` in ``form``).
        weight_sp: w_s.
        form: ``"paper"`` or ``"released"``.
        band_width: h > 0.
        eps: epsilon of the relative distance.

    Returns:
        (B, N, M) tensor of log CX_ij.

    """
    if form == "paper":
        return log_cx_matrix(bilateral_distance(d_feat, d_spatial, weight_sp), band_width, eps)
    log_spatial = log_cx_matrix(d_spatial, band_width, eps)
    return mix_released(log_cx_matrix(d_feat, band_width, eps), log_spatial, weight_sp)


def log_similarity_from_matrix(log_cx: Tensor) -> Tensor:
    """Log CX(X, Y) = log((1/M) sum_j max_i CX_ij) from a (B, N, M) matrix of log CX_ij.

    The max runs over the prediction index (axis 1), the mean over the target index.
    """
    best = log_cx.max(dim=1).values
    return torch.logsumexp(best, dim=-1) - math.log(best.shape[-1])


__getattr__ = moved(__name__, {"log_cx_from_matrix": f"{__name__}:log_similarity_from_matrix"})
