"""Engine agreement on drawn inputs: dense vs streaming (any strip budget, either strip kernels),
and float32 against a float64 reference: values, gradients and matches.

The float64 dense engine is the reference (plain autograd through the definition), on the inputs
float32 sees: the float32 values, and for cosine the unit vectors rounded to float32 (see
``_unit_vectors_rounded_to``). Gradients are compared summed over groups of equal vectors, and
only where the reference has no tie between distinct vectors (a point where the loss is not
differentiable; see ``support.has_ties``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from unittest import mock

import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.property.strategies import BUDGETS, Case, cases
from tests.property.support import (
    KERNELS,
    assert_close_grouped,
    examples,
    group_ids,
    has_ties,
    using_kernels,
    value_and_grads,
)

from contextual_loss import maths

#: Float32 accuracy against the float64 reference (issue 13): loss to 1e-4 relative (1e-6 absolute
#: near 0), gradients to 1e-3 relative to max(1, largest reference gradient).
LOSS_RTOL, LOSS_ATOL, GRAD_TOL = 1e-4, 1e-6, 1e-3


@contextlib.contextmanager
def _unit_vectors_rounded_to(dtype: torch.dtype) -> Iterator[None]:
    """Within: cosine's prepared unit vectors take the values a ``dtype`` evaluation receives.

    ``maths.prepare_features`` centres and normalises in float64 and rounds the unit vectors once to
    the input's dtype; that rounding is the float32 features' own, which no evaluation can undo
    (docs/engine.md, "What float32 cannot undo"). Here the float64 reference's unit vectors are
    rounded to ``dtype`` and renormalised in float64 (so that they are unit to float64 precision),
    in value only: gradients flow through the exact preparation.
    """
    prepare = maths.prepare_features

    def rounded(p: torch.Tensor) -> torch.Tensor:
        q = p.detach().to(dtype).double()
        norm = q.norm(dim=-1, keepdim=True)
        return p + (torch.where(norm > 0, q / norm, q) - p.detach())

    def prepare_rounded(x, y, loss_type, center="image"):
        xp, yp = prepare(x, y, loss_type, center)
        return (rounded(xp), rounded(yp)) if loss_type == "cosine" else (xp, yp)

    with mock.patch.object(maths, "prepare_features", prepare_rounded):
        yield


def _run(case: Case, dtype: torch.dtype, engine: str, budget: int | None, kernels: str):
    with using_kernels(kernels):
        return value_and_grads(lambda a, b: case.loss(a, b, engine=engine, memory_budget=budget), case.x, case.y, dtype)


@examples(100)
@given(case=cases(), budget=BUDGETS, kernels=st.sampled_from(KERNELS))
def test_streaming_matches_dense_in_float64(case, budget, kernels):
    ref = _run(case, torch.float64, "dense", None, "native")
    got = _run(case, torch.float64, "streaming", budget, kernels)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-9, atol=1e-12)
    if not has_ties(case, rel=1e-9):
        assert_close_grouped(got[1:], ref[1:], case, grad_tol=1e-8, what="streaming vs dense, float64")


@examples(150)
@given(
    case=cases(),
    engine=st.sampled_from(["dense", "streaming"]),
    budget=BUDGETS,
    kernels=st.sampled_from(KERNELS),
)
def test_float32_matches_float64_reference(case, engine, budget, kernels):
    # the reference sees the same inputs: the float32 values (rounding the inputs is not the engine's error)
    case = dataclasses.replace(case, x=case.x.float().double(), y=case.y.float().double())
    with _unit_vectors_rounded_to(torch.float32):  # and cosine's unit vectors, rounded as float32 gets them
        ref = _run(case, torch.float64, "dense", None, "native")
    got = _run(case, torch.float32, engine, budget, kernels)
    torch.testing.assert_close(got[0].double(), ref[0], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    if not has_ties(case, rel=1e-4):
        assert_close_grouped(got[1:], ref[1:], case, grad_tol=GRAD_TOL, what=f"{engine} float32 vs float64")


@examples(75)
@given(
    case=cases(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    budget=BUDGETS,
    kernels=st.sampled_from(KERNELS),
)
def test_matches_agree_between_engines(case, dtype, budget, kernels):
    case = dataclasses.replace(case, x=case.x.to(dtype).double(), y=case.y.to(dtype).double())
    x, y = case.x.to(dtype), case.y.to(dtype)
    dense = case.match(x, y, engine="dense")
    with using_kernels(kernels):
        stream = case.match(x, y, engine="streaming", memory_budget=budget)
    # similarities are probabilities: absolute tolerances (a tiny CX_ij has a larger relative error)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(stream.similarity, dense.similarity, **tol)
    torch.testing.assert_close(stream.log_similarity, dense.log_similarity, **tol)
    if not has_ties(case, rel=tol["rtol"]):
        ids = group_ids(case.x)  # equal vectors are interchangeable matches
        for b, image_ids in enumerate(ids):
            assert torch.equal(image_ids[stream.prediction_index[b]], image_ids[dense.prediction_index[b]])
