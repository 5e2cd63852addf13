"""Shared helpers of the property-based tests: example budgets, the kernel switch, comparisons.

Test data are tensors: drawing every element through Hypothesis would be slow and would shrink
poorly, so strategies (``strategies.py``) draw the *structure* (shapes, dtypes, distances,
options, how many distinct vectors, scales, offsets) and a seed, and build the tensors from the
seed with a ``torch.Generator``. Falsifying examples therefore shrink towards small, simple
structures, which is what a reader needs.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from hypothesis import settings

from contextual_loss.engine import kernels

#: The examples of a test scale with the profile: ``ci`` runs the given number, ``long`` 25 times more.
_SCALE = {"ci": 1, "long": 25}.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), 1)

#: Strip-kernel implementations the streaming engine is run with (the Triton path is left out:
#: its CPU interpreter is too slow for property tests).
KERNELS = ("native", "eager")


def examples(n: int) -> settings:
    """``@examples(n)``: n examples in the ``ci`` profile, 25 n in ``long``."""
    return settings(max_examples=n * _SCALE)


@contextlib.contextmanager
def using_kernels(name: str) -> Iterator[None]:
    """Run the streaming engine on the strip kernels ``name`` inside the block (this thread only).

    The one place that selects an implementation. "native" is requested as ``auto`` (native where
    the C kernels load, else eager, with the engine's warning), so that the suite also runs where
    no C compiler is available; ``tests/engine`` checks the native kernels themselves.
    """
    with kernels.use("auto" if name == "native" else name):
        yield


def group_ids(feature_map: torch.Tensor) -> list[torch.Tensor]:
    """Per image of a (B, C, H, W) map, the id of each position's vector among its distinct vectors."""
    flat = feature_map.detach().flatten(2).transpose(1, 2)
    return [torch.unique(image, dim=0, return_inverse=True)[1] for image in flat]


def grouped_grad(grad: torch.Tensor, ids: list[torch.Tensor]) -> torch.Tensor:
    """Gradients summed over groups of equal vectors (which of several equal vectors receives a max's
    or a min's gradient is a convention, not a value), concatenated over the batch."""
    flat = grad.detach().flatten(2).transpose(1, 2).double()
    parts = [flat.new_zeros(int(i.max()) + 1, flat.shape[-1]).index_add_(0, i, flat[b]) for b, i in enumerate(ids)]
    return torch.cat(parts)


def value_and_grads(fn, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``fn(x, y)`` (a (B,) tensor) on copies of x and y in ``dtype``, with the gradients of its weighted sum."""
    xg = x.detach().to(dtype).clone().requires_grad_(True)
    yg = y.detach().to(dtype).clone().requires_grad_(True)
    value = fn(xg, yg)
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype)
    gx, gy = torch.autograd.grad((value * weights).sum(), (xg, yg))
    return value.detach(), gx, gy


def log_m(y: torch.Tensor) -> float:
    """log M for a target map (B, C, H, W): the largest value of the contextual loss."""
    return math.log(y.shape[-2] * y.shape[-1])


def _prepared(case, dtype: torch.dtype = torch.float64):
    """The prepared sets and the spatial term of a case, as ``functional`` builds them (float64)."""
    from contextual_loss import maths
    from contextual_loss.engine.types import SpatialTerm

    xs = case.x.to(dtype).flatten(2).transpose(1, 2)
    ys = case.y.to(dtype).flatten(2).transpose(1, 2)
    xp, yp = maths.prepare_features(xs, ys, case.loss_type, case.center)
    spatial = None
    if case.cobi is not None and case.cobi[0] > 0:
        weight, form = case.cobi
        pos_x = maths.grid_positions(*case.x.shape[-2:], form, dtype=dtype)
        pos_y = maths.grid_positions(*case.y.shape[-2:], form, dtype=dtype)
        spatial = SpatialTerm(weight, form, pos_x, pos_y)
    return xp, yp, spatial


def has_ties(case, rel: float) -> bool:
    """Whether the float64 reference has a tie between *distinct* vectors where gradients are routed.

    Ties in a row minimum of the distances (the gradient through min_k d_ik goes to one entry) or
    in a column maximum of log CX_ij (the gradient of max_i goes to one row) between different
    vectors are points where the loss is not differentiable: engines may route the gradient to
    either side. Values within ``rel`` (relative) count as tied. Ties between equal vectors are
    harmless (compare :func:`grouped_grad`).
    """
    from contextual_loss import maths
    from contextual_loss.engine.dense import dense_log_cx_matrix

    xp, yp, spatial = _prepared(case)
    d = maths.feature_distance(xp, yp, case.loss_type)
    if spatial is not None and spatial.form == "paper":
        d = d + spatial.weight * maths.spatial_distance(spatial.pos_x, spatial.pos_y, "paper")
    with torch.no_grad():
        a = dense_log_cx_matrix(
            xp, yp, loss_type=case.loss_type, band_width=case.band_width, eps=case.eps, spatial=spatial
        )
    gx, gy = group_ids(case.x), group_ids(case.y)
    for b in range(d.shape[0]):
        low = d[b].amin(dim=1, keepdim=True)
        near = d[b] <= low + rel * (low + case.eps)
        if any(gy[b][row].unique().numel() > 1 for row in near):
            return True
        best = a[b].amax(dim=0, keepdim=True)
        top = (a[b] >= best - rel * (1.0 + best.abs())) & (best > -30.0)
        if any(gx[b][col].unique().numel() > 1 for col in top.T):
            return True
    return False


def spread(case) -> float:
    """R = max |v - c| over the entries of x and y, c the mean target vector of each image.

    The scale of the features that the losses see (l1, l2 and cosine are translation invariant;
    cosine is also scale invariant): x dL/dx is dimensionless, so gradients are compared as g R.
    """
    centre = case.y.mean(dim=(2, 3), keepdim=True)
    return max(float((case.x - centre).abs().max()), float((case.y - centre).abs().max()), 1e-300)


def assert_close_grouped(got: tuple, ref: tuple, case, *, grad_tol: float, what: str) -> None:
    """Gradients (dx, dy) summed over groups of equal vectors agree within grad_tol * max(1, |ref|).

    Gradients are compared in the units of the features, as g R (see :func:`spread`): a loss of
    features of scale 1e-3 has gradients of order 1e3, and float32 rounding scales with them.
    """
    r = spread(case)
    ids = (group_ids(case.x), group_ids(case.y))
    for name, g, ref_g, i in zip(("dx", "dy"), got, ref, ids, strict=True):
        gg, rr = grouped_grad(g, i) * r, grouped_grad(ref_g, i) * r
        scale = max(1.0, float(rr.abs().max()))
        err = float((gg - rr).abs().max()) / scale
        assert err <= grad_tol, f"{what}: {name} * R differs by {err:.3g} (relative to {scale:.3g}) > {grad_tol}"
