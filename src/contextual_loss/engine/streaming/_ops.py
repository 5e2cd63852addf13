"""The streaming engine as two PyTorch custom operators, with their autograd formula and fake kernels.

``contextual_loss::streaming_forward`` returns the column maximum A_j = max_i log CX_ij (B, M),
differentiable with respect to x and y, its first row i*(j), and what the backward pass needs (the
row statistics and, for CoBi's released form, the feature part of the winning entries).
``contextual_loss::streaming_backward`` turns the gradient on A into the gradients on x and y;
differentiating it again raises :class:`DoubleBackwardError`. As operators, both are opaque to
``torch.compile`` and ``torch.export`` (no graph break inside the engine) and have fake kernels,
so meta and fake tensors give meta and fake results of the right shapes; ``torch.jit.trace``
records them as calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contextual_loss.engine.dense import dense_log_cx_matrix
from contextual_loss.engine.kernels import RowStats
from contextual_loss.engine.streaming import _backward, _forward
from contextual_loss.engine.streaming._problem import NO_SPATIAL, Problem, no_autocast
from contextual_loss.engine.types import SpatialTerm

__all__ = ["BACKWARD_SCHEMA", "FORWARD_SCHEMA", "DoubleBackwardError", "streaming_backward", "streaming_forward"]


class DoubleBackwardError(RuntimeError):
    """Raised when a gradient computed by the streaming engine is differentiated again."""


_DOUBLE_BACKWARD_MESSAGE = (
    "the streaming contextual-loss engine computes first-order gradients only; differentiating its "
    "gradient again (double backward, e.g. a gradient penalty through create_graph=True) is not "
    "supported with engine='streaming'. Pass engine='dense' (or the default engine='auto', which "
    "recomputes densely for a second differentiation) for higher-order gradients (memory grows with N x M)."
)


#: The operators' schemas, given explicitly (not inferred from the annotations, which older torch
#: versions could not read under ``from __future__ import annotations``).
FORWARD_SCHEMA = (
    "(Tensor x, Tensor y, Tensor? pos_x, Tensor? pos_y, str loss_type, float band_width, float eps, "
    "float spatial_weight, str spatial_form, int memory_budget, str kernels, bool keep_rows, "
    "bool dense_double_backward) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_best, Tensor x, Tensor y, Tensor? pos_x, Tensor? pos_y, Tensor best, Tensor index, "
    "Tensor umax, Tensor argmin, Tensor scale, Tensor log_norm, Tensor clamped, Tensor sensitive, Tensor feature_best, "
    "str loss_type, float band_width, float eps, float spatial_weight, str spatial_form, int memory_budget, "
    "str kernels) -> (Tensor, Tensor)"
)


@torch.library.custom_op("contextual_loss::streaming_forward", mutates_args=(), schema=FORWARD_SCHEMA)
def streaming_forward(
    x: Tensor,
    y: Tensor,
    pos_x: Tensor | None,
    pos_y: Tensor | None,
    loss_type: str,
    band_width: float,
    eps: float,
    spatial_weight: float,
    spatial_form: str,
    memory_budget: int,
    kernels: str,
    keep_rows: bool,
    dense_double_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The streaming forward pass (see :data:`~contextual_loss.engine.streaming._forward.ForwardOutputs`).

    Args:
        x: prepared prediction set (B, N, C), float32 or float64.
        y: prepared target set (B, M, C), same dtype.
        pos_x: CoBi positions of x, (N, 2) or (B, N, 2), or None.
        pos_y: CoBi positions of y, (M, 2) or (B, M, 2), or None.
        loss_type: ``"cosine"``, ``"l2"`` or ``"l1"``.
        band_width: h.
        eps: epsilon of the relative distance.
        spatial_weight: w_s (0.0 without a spatial term).
        spatial_form: ``"paper"``, ``"released"`` or ``"none"``.
        memory_budget: bytes of strip workspace.
        kernels: the requested strip kernels (``auto``, ``eager``, ``native``, ``triton``).
        keep_rows: keep the (B, N) row statistics for a backward pass.
        dense_double_backward: when the gradient is taken with ``create_graph=True``, compute it
            from a dense recomputation (N x M memory) so that it can be differentiated again,
            instead of raising :class:`DoubleBackwardError` on the second differentiation.

    """
    problem = Problem(loss_type, band_width, eps, spatial_weight, spatial_form, memory_budget, kernels)
    with torch.no_grad(), no_autocast(x.device):
        return _forward.forward(x, y, pos_x, pos_y, problem, keep_rows)


@streaming_forward.register_fake
def _streaming_forward_fake(x, y, pos_x, pos_y, loss_type, band_width, eps, spatial_weight, spatial_form,
                            memory_budget, kernels, keep_rows, dense_double_backward):  # fmt: skip
    (b, n, _), m = x.shape, y.shape[1]
    rows = n if keep_rows else 0
    return (
        x.new_empty(b, m),
        x.new_empty(b, m, dtype=torch.long),
        x.new_empty(b, rows),
        x.new_empty(b, rows, dtype=torch.long),
        x.new_empty(b, rows),
        x.new_empty(b, rows),
        x.new_empty(b, rows, dtype=torch.bool),
        x.new_empty(b, rows, dtype=torch.bool),
        x.new_empty(b, m if spatial_form == "released" else 0),
    )


@torch.library.custom_op("contextual_loss::streaming_backward", mutates_args=(), schema=BACKWARD_SCHEMA)
def streaming_backward(
    grad_best: Tensor,
    x: Tensor,
    y: Tensor,
    pos_x: Tensor | None,
    pos_y: Tensor | None,
    best: Tensor,
    index: Tensor,
    umax: Tensor,
    argmin: Tensor,
    scale: Tensor,
    log_norm: Tensor,
    clamped: Tensor,
    sensitive: Tensor,
    feature_best: Tensor,
    loss_type: str,
    band_width: float,
    eps: float,
    spatial_weight: float,
    spatial_form: str,
    memory_budget: int,
    kernels: str,
) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dy) of sum_j grad_best_j A_j, from the outputs of :func:`streaming_forward`."""
    problem = Problem(loss_type, band_width, eps, spatial_weight, spatial_form, memory_budget, kernels)
    saved = (best, index, RowStats(umax, argmin, scale, log_norm, clamped), sensitive, feature_best)
    with torch.no_grad(), no_autocast(x.device):
        return _backward.backward(grad_best, x, y, (pos_x, pos_y), saved, problem)


@streaming_backward.register_fake
def _streaming_backward_fake(grad_best, x, y, *args):
    return torch.empty_like(x), torch.empty_like(y)


_SCALARS = ("loss_type", "band_width", "eps", "spatial_weight", "spatial_form", "memory_budget", "kernels")


def _setup_forward(ctx, inputs, output) -> None:
    x, y, pos_x, pos_y, *scalars, _keep_rows, dense_double_backward = inputs
    ctx.scalars = tuple(scalars)
    ctx.dense_double_backward = dense_double_backward
    ctx.save_for_backward(x, y, pos_x, pos_y, *output)
    ctx.mark_non_differentiable(*output[1:])  # only best (the first) carries a gradient


def _backward_forward(ctx, grad_best: Tensor, *_unused: Tensor):
    x, y, pos_x, pos_y, *outputs = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if ctx.dense_double_backward and torch.is_grad_enabled():  # create_graph=True: a second differentiation follows
        dx, dy = _dense_gradients(grad_best, x, y, pos_x, pos_y, ctx.scalars, needs[:2])
    else:
        dx, dy = streaming_backward(grad_best, x, y, pos_x, pos_y, *outputs, *ctx.scalars)
    return (dx if needs[0] else None, dy if needs[1] else None) + (None,) * (2 + len(_SCALARS) + 2)


def _dense_gradients(
    grad_best: Tensor, x: Tensor, y: Tensor, pos_x: Tensor | None, pos_y: Tensor | None, scalars: tuple, needs: tuple
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of sum_j grad_best_j A_j as a differentiable graph: A recomputed by the dense engine.

    Only for ``create_graph=True`` (a gradient penalty, say): the dense matrices (N x M per image)
    live while this graph does, which is what a second differentiation needs anyway.
    """
    loss_type, band_width, eps, weight, form, *_ = scalars
    spatial = None if form == NO_SPATIAL or pos_x is None or pos_y is None else SpatialTerm(weight, form, pos_x, pos_y)
    best = dense_log_cx_matrix(x, y, loss_type=loss_type, band_width=band_width, eps=eps, spatial=spatial)
    best = best.max(dim=1).values  # the first row on ties, as the streaming engine
    wanted = [t for t, need in zip((x, y), needs, strict=True) if need]
    grads = iter(torch.autograd.grad(best, wanted, grad_best, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)  # type: ignore[return-value]


def _setup_backward(ctx, inputs, output) -> None:
    pass


def _double_backward(ctx, *grads: Tensor):
    raise DoubleBackwardError(_DOUBLE_BACKWARD_MESSAGE)


streaming_forward.register_autograd(_backward_forward, setup_context=_setup_forward)
streaming_backward.register_autograd(_double_backward, setup_context=_setup_backward)
