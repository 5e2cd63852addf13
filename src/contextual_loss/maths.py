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
from collections.abc import Iterator
from typing import Any, Literal

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
        return _tolerance(x.norm(dim=-1).amax(dim=-1), y.norm(dim=-1).amax(dim=-1), precision)


def _tolerance(x_largest: Tensor, y_largest: Tensor, precision: torch.dtype) -> Tensor:
    """The (B, 1, 1) tolerance of :func:`zero_norm_tolerance` from the (B,) largest vector norms of x and y."""
    scale = torch.maximum(x_largest, y_largest)
    tiny = torch.finfo(precision).tiny
    return (ZERO_NORM_RELATIVE * torch.finfo(precision).eps * scale).clamp_min(tiny).view(-1, 1, 1)


def _power_of_two_below(peak: Tensor) -> Tensor:
    """2^-e with peak = f 2^e, f in [1/2, 1) (1 where peak is 0): scaling by it is exact."""
    return torch.ldexp(torch.ones_like(peak), -torch.frexp(peak).exponent)


def _normalize(v: Tensor, tol: Tensor) -> Tensor:
    """Unit vectors along the last axis; vectors of norm <= tol become exactly 0 (no gradient)."""
    return v * _inverse_norm(v, tol)


def _inverse_norm(v: Tensor, tol: Tensor) -> Tensor:
    """1 / |v| along the last axis (keepdim), exactly 0 where |v| <= tol: a per-vector scale, no full-size temporary."""
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > tol, norm.clamp_min(tol).reciprocal(), torch.zeros_like(norm))


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
    # The operator prepare_cosine computes exactly this, bit for bit, in row chunks that stay in
    # cache, with a hand-written backward; the composite below is the definition, and what runs
    # where the operator does not apply (empty sets, for example). The operator reads contiguous
    # sets and the channels-first views of flattened maps; other layouts are copied first.
    x, y = (t if _set_layout(t) else t.contiguous() for t in (x, y))
    if _operator_applies(x, y):
        xn, yn, *_ = prepare_cosine(x, y, center != "image")
        return xn, yn if y.requires_grad else yn.detach()  # the prepared y depends on y only
    return _prepare_cosine_composite(x, y, center)


def _prepare_cosine_composite(x: Tensor, y: Tensor, center: Center) -> tuple[Tensor, Tensor]:
    """``prepare_features(x, y, "cosine", center)`` as plain differentiable operations (float64 inside)."""
    with torch.no_grad():
        scale = _prescale(x, y, center != "image")
    xw, yw = x * scale, y * scale  # (float64: the scale's dtype wins the type promotion; one pass each)
    mu = yw.mean(dim=1, keepdim=True) if center == "image" else yw.mean(dim=(0, 1), keepdim=True)
    # float64's eps whatever the input dtype: centring in float64 leaves noise of that order, and
    # float32 and float64 inputs then define the same zero vectors
    tol = zero_norm_tolerance(xw, yw, precision=torch.float64)
    return _normalize(xw - mu, tol).to(x.dtype), _normalize(yw - mu, tol).to(y.dtype)


def _prescale(x: Tensor, y: Tensor, batch: bool) -> Tensor:
    """(B, 1, 1) float64 power of two bringing each image pair (or the whole batch) to at most 1 in magnitude."""
    peak = torch.maximum(_largest_magnitude(x), _largest_magnitude(y)).to(torch.float64)
    return _power_of_two_below(peak.amax().expand_as(peak) if batch else peak).view(-1, 1, 1)


def _largest_magnitude(t: Tensor) -> Tensor:
    """(B,) max |t| per image of a set t (B, P, C), in one pass without a temporary (0 for an empty set)."""
    if t.shape[1] * t.shape[2] == 0:
        return t.new_zeros(t.shape[0])
    return torch.linalg.vector_norm(t.detach(), ord=math.inf, dim=(1, 2))


# --- prepare_cosine: the cosine preparation as an operator, in cache-sized chunks -----------------

#: Bytes of float64 per row chunk on the CPU: the chunk's temporaries stay in cache.
CHUNK_BYTES = 1 << 20
#: Up to this many channels the CPU works in row chunks. A row's norm is summed in the same order
#: in any chunk of at least two rows, whereas a single row of more than 32768 values (ATen's grain)
#: would be split across threads; above this bound the whole set is one chunk, as on GPUs.
_CHUNKED_CHANNELS = 8192


def _operator_applies(x: Tensor, y: Tensor) -> bool:
    """Whether :func:`prepare_cosine` takes (x, y): same-shaped batches of non-empty float sets in a set layout."""
    return (
        x.dim() == 3
        and y.dim() == 3
        and x.shape[0] == y.shape[0]
        and x.shape[2] == y.shape[2]
        and x.device == y.device
        and x.is_floating_point()
        and y.is_floating_point()
        and _set_layout(x)
        and _set_layout(y)
        and x.numel() > 0
        and y.numel() > 0
    )


def _set_layout(t: Tensor) -> bool:
    """Whether a set t (B, P, C) is contiguous, or the channels-first view ``m.flatten(2).transpose(1, 2)``.

    :func:`prepare_cosine` reads either layout (the second is how a (B, C, H, W) feature map
    flattens, with no copy) and writes contiguous sets.
    """
    return t.is_contiguous() or t.transpose(1, 2).is_contiguous()


def _chunks(t: Tensor) -> Iterator[tuple[tuple[slice, slice], slice]]:
    """Row chunks of a set t (B, P, C): (index of the chunk in t, index of its image in per-image tensors)."""
    b, p, c = t.shape
    if t.device.type != "cpu" or c > _CHUNKED_CHANNELS:
        yield (slice(None), slice(None)), slice(None)
        return
    rows = _chunk_rows(c)
    for i in range(b):
        start = 0
        while start < p:
            stop = min(p, start + rows)
            stop = p if p - stop == 1 else stop  # no single-row chunk after the first (see _CHUNKED_CHANNELS)
            yield (slice(i, i + 1), slice(start, stop)), slice(i, i + 1)
            start = stop


def _chunk_rows(c: int) -> int:
    return max(2, CHUNK_BYTES // (8 * c))


def _workspace(t: Tensor) -> Tensor:
    """A float64 buffer for the largest chunk of t (see :func:`_chunks`); ``_part`` cuts a chunk's view from it."""
    _, p, c = t.shape
    if t.device.type != "cpu" or c > _CHUNKED_CHANNELS:
        return torch.empty(t.shape, dtype=torch.float64, device=t.device)
    return torch.empty((1, min(p, _chunk_rows(c) + 1), c), dtype=torch.float64, device=t.device)


def _part(work: Tensor, chunk: Tensor) -> Tensor:
    return work[:, : chunk.shape[1]]


def _scaled_norms(t: Tensor, scale: Tensor, scaled: Tensor) -> Tensor:
    """(B, P) norms of the vectors of t * scale, which it writes into ``scaled`` (B, P, C) float64."""
    norms = torch.empty(t.shape[:2], dtype=torch.float64, device=t.device)
    for rows, image in _chunks(t):
        # t * scale as type promotion computes it (t converted, then multiplied), without temporaries
        w = scaled[rows].copy_(t[rows]).mul_(scale[image])
        torch.linalg.vector_norm(w, dim=-1, out=norms[rows])
    return norms


def _divide_by_norms(
    t: Tensor, scaled: Tensor | None, scale: Tensor, mu: Tensor, raw_norms: Tensor
) -> tuple[Tensor, Tensor]:
    """Unit vectors v / |v| for v = t * scale - mu, in t's dtype (B, P, C), and |v| (B, P, 1) in float64.

    Every vector is divided by its norm here; the zero vectors (which need the tolerance, known
    only once both sets were read) are set afterwards by :func:`_zero_short_vectors`. ``scaled``
    (t * scale, if given) is overwritten; without it, the norms of t * scale go into ``raw_norms`` (B, P).
    """
    unit = torch.empty(t.shape, dtype=t.dtype, device=t.device)  # contiguous, whatever the layout of t
    norms = torch.empty((*t.shape[:2], 1), dtype=torch.float64, device=t.device)
    work = _workspace(t) if scaled is None else None
    for rows, image in _chunks(t):
        if work is not None:
            v = _part(work, t[rows]).copy_(t[rows]).mul_(scale[image])
            torch.linalg.vector_norm(v, dim=-1, out=raw_norms[rows])
        else:
            v = scaled[rows]  # type: ignore[index]
        v.sub_(mu[image])
        # |v| > tol on every vector that is kept, where the definition's clamp_min(tol) does nothing
        unit[rows] = v.mul_(torch.linalg.vector_norm(v, dim=-1, keepdim=True, out=norms[rows]).reciprocal())
    return unit, norms


def _zero_short_vectors(unit: Tensor, norms: Tensor, tol: Tensor, t: Tensor, scale: Tensor, mu: Tensor) -> Tensor:
    """Set the vectors of norm <= tol to v * 0 (as the definition) in place; return the inverse norms (B, P, 1).

    v = t * scale - mu is recomputed for those vectors only; mu is (B, 1, C).
    """
    short = norms[..., 0] <= tol[..., 0]
    if bool(short.any()):
        images, rows = short.nonzero(as_tuple=True)
        unit[images, rows] = ((t[images, rows] * scale[images, 0] - mu[images, 0]) * 0.0).to(unit.dtype)
    return torch.where(norms > tol, norms.clamp_min(tol).reciprocal(), torch.zeros_like(norms))


_PREPARE_SCHEMA = "(Tensor x, Tensor y, bool batch) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"


@torch.library.custom_op("contextual_loss::prepare_cosine", mutates_args=(), schema=_PREPARE_SCHEMA)
def prepare_cosine(x: Tensor, y: Tensor, batch: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""The cosine preparation of :func:`prepare_features` as an operator with its own backward.

    With the exact power of two :math:`s` (per image, or one for the batch), :math:`\mu` the mean of
    the :math:`s y_j` (per image, or over the batch) and :math:`v = s t - \mu` for each vector
    :math:`t` of x and y, the prepared vector is :math:`n = v / \lVert v \rVert` (0 where
    :math:`\lVert v \rVert \le \tau`), computed in float64 and rounded once to the input's dtype,
    bit for bit as :func:`_prepare_cosine_composite`, in row chunks that stay in cache: x is read
    once (twice for its largest magnitude), y twice. The sets may be channels-first views of
    feature maps (:func:`_set_layout`): each chunk is then transposed as it is read, so the caller
    makes no contiguous copy, and the gradients come back in the inputs' layouts. The outputs are
    contiguous. The backward pass is :func:`_cosine_gradients`.

    Args:
        x: prediction set (B, N, C), contiguous or channels-first (:func:`_set_layout`), not empty.
        y: target set (B, M, C), likewise.
        batch: centre on the mean over the batch instead of per image.

    Returns:
        The prepared x (B, N, C) and y (B, M, C) in their input dtypes, then what the backward
        needs, in float64: :math:`s` (B, 1, 1), :math:`\mu` (B or 1, 1, C) and the inverse norms
        :math:`1 / \lVert v \rVert` of x (B, N, 1) and y (B, M, 1), 0 for the zero vectors.

    """
    with torch.no_grad():
        scale = _prescale(x, y, batch)
        centred_y = torch.empty(y.shape, dtype=torch.float64, device=y.device)  # s y, then s y - mu
        raw_y = _scaled_norms(y, scale, centred_y)
        mu = centred_y.mean(dim=(0, 1), keepdim=True) if batch else centred_y.mean(dim=1, keepdim=True)
        each_mu = mu.expand(x.shape[0], 1, x.shape[2])
        raw_x = torch.empty(x.shape[:2], dtype=torch.float64, device=x.device)
        unit_x, norms_x = _divide_by_norms(x, None, scale, each_mu, raw_x)
        unit_y, norms_y = _divide_by_norms(y, centred_y, scale, each_mu, raw_y)
        # float64's eps whatever the input dtype (see _prepare_cosine_composite)
        tol = _tolerance(raw_x.amax(dim=-1), raw_y.amax(dim=-1), torch.float64)
        inverse_x = _zero_short_vectors(unit_x, norms_x, tol, x, scale, each_mu)
        inverse_y = _zero_short_vectors(unit_y, norms_y, tol, y, scale, each_mu)
    return unit_x, unit_y, scale, mu, inverse_x, inverse_y


@prepare_cosine.register_fake
def _prepare_cosine_fake(x: Tensor, y: Tensor, batch: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    (b, n, c), m = x.shape, y.shape[1]
    wide = torch.float64
    return (
        x.new_empty(x.shape),  # contiguous, as the real implementation writes them
        y.new_empty(y.shape),
        x.new_empty((b, 1, 1), dtype=wide),
        x.new_empty((1 if batch else b, 1, c), dtype=wide),
        x.new_empty((b, n, 1), dtype=wide),
        x.new_empty((b, m, 1), dtype=wide),
    )


def _scaled_unit_gradient(
    t: Tensor, grad: Tensor, scale: Tensor, mu: Tensor, inverse: Tensor, work: Tensor, out: Tensor
) -> Tensor:
    r"""Write s J = s (g - n (n . g)) / |v| for a chunk of vectors t into ``out`` (float64) and return it.

    With v = s t - mu (in ``work``), n = v / |v| and a = s / |v|: s J = a g - (a (v . g) / |v|^2) v.
    """
    v = work.copy_(t).mul_(scale).sub_(mu)
    g = out.copy_(grad)
    factor = inverse * scale
    along = torch.einsum("...c,...c->...", v, g).unsqueeze(-1).mul_(inverse.square()).mul_(factor)
    return g.mul_(factor).addcmul_(v, along, value=-1)


def _cosine_gradients(
    grads: tuple[Tensor | None, Tensor | None], saved: tuple[Tensor, ...], batch: bool, needs: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    r"""(dx, dy) of :func:`prepare_cosine` in float64, rounded to the inputs' dtypes; None where not needed.

    With :math:`J = (g - n (n \cdot g)) / \lVert v \rVert` the gradient on each centred vector
    :math:`v = s t - \mu` (0 for the zero vectors, whose inverse norm is 0), :math:`dx_i = s J_i`
    and, as :math:`\mu` is the mean of the M scaled target vectors (of the B M over the batch),
    :math:`dy_j = s J_j - s \bar J` with :math:`\bar J = (\sum_i J^x_i + \sum_j J^y_j) / M`, the
    sums per image (over the batch, where s is one number).
    """
    grad_x, grad_y = grads
    x, y, scale, mu, inverse_x, inverse_y = saved
    each_mu = mu.expand(x.shape[0], 1, x.shape[2])
    total = torch.zeros(each_mu.shape, dtype=torch.float64, device=x.device)  # sum of s J per image
    dx = torch.empty_like(x) if needs[0] and grad_x is not None else None
    if grad_x is not None and (needs[0] or needs[1]):
        work, sj_x = _workspace(x), _workspace(x)
        for rows, image in _chunks(x):
            part = x[rows]
            sj = _scaled_unit_gradient(
                part, grad_x[rows], scale[image], each_mu[image], inverse_x[rows], _part(work, part), _part(sj_x, part)
            )
            if needs[1]:
                total[image] += sj.sum(dim=1, keepdim=True)
            if dx is not None:
                dx[rows] = sj
    if not needs[1]:
        return dx, None
    dy = torch.empty_like(y)
    sj_y = None if grad_y is None else torch.empty(y.shape, dtype=torch.float64, device=y.device)
    if grad_y is not None and sj_y is not None:
        work = _workspace(y)
        for rows, image in _chunks(y):
            part = y[rows]
            sj = _scaled_unit_gradient(
                part, grad_y[rows], scale[image], each_mu[image], inverse_y[rows], _part(work, part), sj_y[rows]
            )
            total[image] += sj.sum(dim=1, keepdim=True)
    mean = total.sum(dim=0, keepdim=True).div_(y.shape[0] * y.shape[1]) if batch else total.div_(y.shape[1])
    mean = mean.expand_as(each_mu)
    for rows, image in _chunks(y):
        dy[rows] = -mean[image] if sj_y is None else sj_y[rows].sub_(mean[image])
    return dx, dy


def _setup_prepare_cosine(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, y, batch = inputs
    ctx.batch = batch
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no pass over zeros
    ctx.save_for_backward(x, y, *output[2:])
    ctx.mark_non_differentiable(*output[2:])


def _prepare_cosine_backward(ctx: Any, grad_x: Tensor | None, grad_y: Tensor | None, *_unused: Tensor) -> tuple:
    needs = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
    x, y, *rest = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient as a graph that can be differentiated again
        return (*_composite_gradients(x, y, ctx.batch, (grad_x, grad_y), needs), None)
    with torch.no_grad():
        return (*_cosine_gradients((grad_x, grad_y), (x, y, *rest), ctx.batch, needs), None)


def _composite_gradients(
    x: Tensor, y: Tensor, batch: bool, grads: tuple[Tensor | None, Tensor | None], needs: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients through :func:`_prepare_cosine_composite`, differentiable (for double backward)."""
    outputs = _prepare_cosine_composite(x, y, "batch" if batch else "image")
    pairs = [(out, g) for out, g in zip(outputs, grads, strict=True) if g is not None and out.requires_grad]
    wanted = [t for t, need in zip((x, y), needs, strict=True) if need]
    if not pairs or not wanted:
        return None, None
    found = iter(
        torch.autograd.grad([p[0] for p in pairs], wanted, [p[1] for p in pairs], create_graph=True, allow_unused=True)
    )
    return tuple(next(found) if need else None for need in needs)  # type: ignore[return-value]


prepare_cosine.register_autograd(_prepare_cosine_backward, setup_context=_setup_prepare_cosine)


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
