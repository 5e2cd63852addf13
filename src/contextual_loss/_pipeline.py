"""The one path between the public API and the engine.

The losses, the similarity and the match (:mod:`contextual_loss.functional`), the modules
(:mod:`contextual_loss.modules`) and the explanation (:mod:`contextual_loss.explain`) all run
:func:`prepare`: check the two feature maps, flatten them into sets of vectors, sample positions
(``max_points``), centre and normalise (:func:`contextual_loss.maths.prepare_features`) and place
the positions of CoBi's spatial term. :func:`evaluate` hands the prepared sets to the one engine
entry point, :func:`contextual_loss.engine.evaluate`; :func:`per_image_loss` and
:func:`reduce_batch` turn its result into the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contextual_loss import engine as _engine
from contextual_loss import maths
from contextual_loss._validation import (
    check_feature_pair,
    check_finite_values,
    check_generator,
    check_supported_range,
    larger_magnitude,
)
from contextual_loss.engine.types import EngineResult, SpatialTerm
from contextual_loss.options import ContextualOptions, Reduction
from contextual_loss.sampling import sample_positions

__all__ = [
    "PreparedSets",
    "evaluate",
    "evaluate_prepared",
    "full_precision",
    "per_image_loss",
    "prepare",
    "reduce_batch",
]


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast, so that distances and reductions run in float32 (or float64)."""
    ctx: contextlib.AbstractContextManager[Any]
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def compute_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    """float64 if either input is float64, else float32 (half precision is computed in float32)."""
    return torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32


def flatten(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C), positions in row-major order: a strided view, no copy.

    :func:`prepare` makes each vector contiguous only after sampling, so that a sampled set copies
    its ``max_points`` vectors, not the whole map: the transposing copy of a (B, C, H, W) map is
    its slowest step (at 96 x 96 px 5 x 5 patches, 9216 positions of which 512 are kept, it took
    longer than the engine's forward). Unsampled cosine sets are never copied: the preparation
    reads this view directly (:func:`contextual_loss.maths.prepare_features`).
    """
    return feature_map.flatten(2).transpose(1, 2)


def contiguous_sets(*sets: Tensor) -> tuple[Tensor, ...]:
    """Each (B, N, C) set with each vector contiguous (no copy for a set that already is).

    Every per-vector operation after it (the engines' row gathers and GEMMs) then reads
    contiguous memory, which at C = 256 is several times faster than the strided view.
    """
    return tuple(s.contiguous() for s in sets)


@dataclass(frozen=True)
class PreparedSets:
    """Two feature maps as the engine takes them.

    Attributes:
        x: (B, N, C) prediction set, sampled and prepared (centred and normalised for cosine).
        y: (B, M, C) target set, likewise.
        spatial: CoBi's spatial term with the (N, 2) and (M, 2) positions of the kept vectors,
            or ``None`` for the plain contextual similarity.
        index_x: (N,) row-major positions in the prediction map of the kept vectors, or ``None``
            when every position is kept (no sampling).
        index_y: (M,) the same for the target map.

    """

    x: Tensor
    y: Tensor
    spatial: SpatialTerm | None
    index_x: Tensor | None = None
    index_y: Tensor | None = None


def prepare(
    x: Tensor,
    y: Tensor,
    options: ContextualOptions,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> PreparedSets:
    """Check, flatten, sample and prepare two feature maps (B, C, H, W) and (B, C, H', W').

    Args:
        x: prediction features.
        y: target features.
        options: the comparison's options (distance, centring, CoBi's form and weight, sampling).
        generator: ``torch.Generator`` for the sampling draws (``options.max_points``).
        dtype: the dtype to compute in; by default float32, or float64 if an input is float64.

    Raises:
        TypeError, ValueError: the maps are not comparable, hold NaN or infinity, lie outside the
            range the compute dtype supports with these options
            (:func:`~contextual_loss._validation.check_supported_range`), or ``generator`` is not
            a ``torch.Generator``.

    """
    check_feature_pair(x, y)
    check_generator(generator)
    magnitude = larger_magnitude(check_finite_values("x", x), check_finite_values("y", y))
    dtype = compute_dtype(x, y) if dtype is None else dtype
    check_supported_range(
        band_width=options.band_width, eps=options.eps, loss_type=options.loss_type, dtype=dtype, channels=x.shape[1],
        magnitude=magnitude, spatial_weight=(options.weight_sp or 0.0) if options.form == "paper" else 0.0,
    )  # fmt: skip
    with full_precision(x.device):
        xs, ys = flatten(x.to(dtype)), flatten(y.to(dtype))
        pos_x, pos_y = (
            maths.grid_positions(m.shape[2], m.shape[3], options.form, device=m.device, dtype=dtype) for m in (x, y)
        )
        shared = x.shape[-2:] == y.shape[-2:]  # the same positions for both maps, as the authors do
        idx_x, idx_y = sample_positions(
            xs.shape[1],
            ys.shape[1],
            options.max_points,
            shared=shared,
            generator=generator,
            device=xs.device,
            sample=options.sample,
        )
        if idx_x is not None:
            xs, pos_x = xs[:, idx_x], pos_x[idx_x]
        if idx_y is not None:
            ys, pos_y = ys[:, idx_y], pos_y[idx_y]
        # cosine: the preparation reads the channels-first views and writes contiguous sets, so
        # the copies below cost nothing; l1 and l2 use the raw vectors, made contiguous here.
        xs, ys = maths.prepare_features(xs, ys, options.loss_type, options.center)
        xs, ys = contiguous_sets(xs, ys)
    spatial = None if options.weight_sp is None else SpatialTerm(options.weight_sp, options.form, pos_x, pos_y)
    return PreparedSets(xs, ys, spatial, idx_x, idx_y)


def evaluate_prepared(
    sets: PreparedSets, options: ContextualOptions, *, progress: _engine.ProgressCallback | None = None
) -> EngineResult:
    """Evaluate prepared sets on the engine ``options.engine`` selects, in full precision."""
    with full_precision(sets.x.device):
        return _engine.evaluate(sets.x, sets.y, options, sets.spatial, progress=progress)


def evaluate(
    x: Tensor,
    y: Tensor,
    options: ContextualOptions,
    *,
    generator: torch.Generator | None = None,
    progress: _engine.ProgressCallback | None = None,
) -> EngineResult:
    """:func:`prepare` the maps and evaluate them on the engine ``options.engine`` selects.

    Returns:
        The engine's result: log CX per image (B,), and per target vector the best log CX_ij
        and the index of its match in the prediction (B, M).

    """
    return evaluate_prepared(prepare(x, y, options, generator=generator), options, progress=progress)


def per_image_loss(
    x: Tensor, y: Tensor, options: ContextualOptions, *, generator: torch.Generator | None = None
) -> Tensor:
    """The (B,) losses -log CX(X, Y) (CoBi's when ``options.weight_sp`` is set)."""
    log_similarity = evaluate(x, y, options, generator=generator).log_similarity
    # -log CX >= 0 by construction; the clamp only removes rounding of order 1e-16.
    return (-log_similarity).clamp_min(0.0)


def reduce_batch(losses: Tensor, reduction: Reduction) -> Tensor:
    """Reduce (B,) per-image losses: their ``"mean"``, their ``"sum"``, or ``"none"`` (unchanged)."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
