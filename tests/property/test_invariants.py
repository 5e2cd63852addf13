"""Invariants of the contextual losses on drawn inputs, on every engine and strip-kernel implementation.

- permutation: CX is a function of two *sets*; permuting the positions of either map leaves it unchanged;
- identity: CX(Y, Y) = 1 (loss 0) when the target's vectors are distinct and far apart compared
  with eps (issue 13 item 4: with duplicates it is < 1, by definition);
- bounds: 0 <= loss <= log M (CX in [1/M, 1]), for CX and both CoBi forms;
- scale: cosine is scale-invariant (exactly, for powers of two); l1 and l2 translation-invariant;
- the modules (pixel or patch features) agree between engines and stay within the bounds.
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from tests.property.strategies import BUDGETS, Case, cases, feature_maps
from tests.property.support import KERNELS, examples, using_kernels

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss._validation import supported_limits
from contextual_loss.functional import contextual_similarity

ENGINES = ("dense", "streaming")
DTYPES = (torch.float32, torch.float64)


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}


def _permute_positions(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    b, c, h, w = t.shape
    return t.flatten(2)[:, :, perm].reshape(b, c, h, w)


@examples(75)
@given(
    case=cases(cobi=False),
    dtype=st.sampled_from(DTYPES),
    engine=st.sampled_from(ENGINES),
    budget=BUDGETS,
    kernels=st.sampled_from(KERNELS),
    seed=st.integers(0, 2**16),
)
def test_loss_is_invariant_under_permutations_of_either_set(case, dtype, engine, budget, kernels, seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = case.x.to(dtype), case.y.to(dtype)
    px = _permute_positions(x, torch.randperm(x.shape[-2] * x.shape[-1], generator=gen))
    py = _permute_positions(y, torch.randperm(y.shape[-2] * y.shape[-1], generator=gen))
    with using_kernels(kernels):
        ref = case.loss(x, y, engine=engine, memory_budget=budget)
        got = case.loss(px, py, engine=engine, memory_budget=budget)
    torch.testing.assert_close(got, ref, **_tolerance(dtype))


@st.composite
def _separated_targets(draw) -> Case:
    """A case whose target vectors are random, hence distinct and far apart compared with eps (x = y)."""
    b, c = draw(st.integers(1, 2)), draw(st.integers(3, 12))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 1e3]))
    y = torch.randn(b, c, draw(st.integers(1, 4)), draw(st.integers(1, 4)), generator=gen, dtype=torch.float64)
    form = draw(st.sampled_from([None, "paper", "released"]))
    return Case(
        x=y * scale, y=y * scale, structure="identity", loss_type=draw(st.sampled_from(["cosine", "l1", "l2"])),
        band_width=draw(st.sampled_from([0.02, 0.1, 0.5, 1.0])), eps=draw(st.sampled_from([1e-5, 1e-8])),
        center=draw(st.sampled_from(["image", "batch"])), cobi=None if form is None else (0.1, form),
    )  # fmt: skip


def _min_gap(case: Case) -> float:
    """min over images and k != j of d(y_j, y_k) / (h eps): how one-hot the rows of CX(Y, Y) are."""
    from tests.property.support import _prepared

    from contextual_loss import maths

    _, yp, _ = _prepared(case)
    d = maths.feature_distance(yp, yp, case.loss_type)
    d = d.masked_fill(torch.eye(d.shape[-1], dtype=torch.bool), math.inf)
    return float(d.amin()) / (case.band_width * case.eps)


@examples(75)
@given(
    case=_separated_targets(),
    dtype=st.sampled_from(DTYPES),
    engine=st.sampled_from(ENGINES),
    budget=BUDGETS,
    kernels=st.sampled_from(KERNELS),
)
def test_identical_sets_of_distinct_vectors_give_zero(case, dtype, engine, budget, kernels):
    # exp(-gap) per neighbour, at most M of them: negligible in the dtype from gap >= 100.
    assume(case.m == 1 or _min_gap(case) >= 100.0)
    y = case.y.to(dtype).requires_grad_(True)
    with using_kernels(kernels):
        loss = case.loss(y.detach(), y, engine=engine, memory_budget=budget)
        loss.sum().backward()
    assert float(loss.detach().abs().max()) <= (1e-6 if dtype == torch.float32 else 1e-12)
    assert float(y.grad.abs().max()) <= (1e-5 if dtype == torch.float32 else 1e-10)


@examples(100)
@given(
    case=cases(),
    dtype=st.sampled_from((torch.float16, torch.bfloat16, *DTYPES)),
    engine=st.sampled_from(ENGINES),
    budget=BUDGETS,
    kernels=st.sampled_from(KERNELS),
)
def test_loss_lies_between_zero_and_log_m_and_is_finite(case, dtype, engine, budget, kernels):
    x = case.x.to(dtype).requires_grad_(True)
    y = case.y.to(dtype).requires_grad_(True)
    assume(bool(torch.isfinite(x).all() and torch.isfinite(y).all()))  # float16 overflows above 65504
    with using_kernels(kernels):
        loss = case.loss(x, y, engine=engine, memory_budget=budget)
        loss.sum().backward()
    loss = loss.detach()
    assert bool(torch.isfinite(loss).all()), loss
    assert float(loss.min()) >= 0.0
    assert float(loss.max()) <= math.log(case.m) * (1 + 1e-6) + 1e-6
    if dtype != torch.float16:
        assert bool(torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all())
        return
    # float16 inputs get the float32 gradient cast to float16: entries beyond 65504 become inf (the
    # signal GradScaler expects; e.g. l1 near duplicates reach 1 / (h eps)). All others are finite.
    x32 = x.detach().float().requires_grad_(True)
    y32 = y.detach().float().requires_grad_(True)
    with using_kernels(kernels):
        case.loss(x32, y32, engine=engine, memory_budget=budget).sum().backward()
    for g16, g32 in ((x.grad, x32.grad), (y.grad, y32.grad)):
        representable = g32.abs() < torch.finfo(torch.float16).max
        assert bool(torch.isfinite(g16[representable]).all())


@examples(50)
@given(
    case=cases(cobi=False),
    dtype=st.sampled_from(DTYPES),
    engine=st.sampled_from(ENGINES),
    kernels=st.sampled_from(KERNELS),
)
def test_similarity_is_exp_of_minus_loss_and_a_mean_over_targets(case, dtype, engine, kernels):
    x, y = case.x.to(dtype), case.y.to(dtype)
    kw = {"band_width": case.band_width, "loss_type": case.loss_type, "eps": case.eps, "center": case.center}
    with using_kernels(kernels):
        sim = contextual_similarity(x, y, engine=engine, **kw)
        loss = case.loss(x, y, engine=engine)
        matched = case.match(x, y, engine=engine)
    torch.testing.assert_close(sim, torch.exp(-loss), **_tolerance(dtype))
    torch.testing.assert_close(matched.similarity.mean(dim=1), sim, **_tolerance(dtype))
    assert float(sim.max()) <= 1.0 + 1e-6 and float(sim.min()) >= (1.0 / case.m) * (1 - 1e-5)


@examples(75)
@given(
    maps=feature_maps(),
    power=st.integers(-60, 60),
    dtype=st.sampled_from(DTYPES),
    engine=st.sampled_from(ENGINES),
    band_width=st.sampled_from([0.05, 0.5]),
)
def test_cosine_is_exactly_scale_invariant_for_powers_of_two(maps, power, dtype, engine, band_width):
    x, y, _ = maps
    peak = float(torch.maximum(x.abs().max(), y.abs().max()))
    _, t_max = supported_limits(dtype)
    floor = 1.0 / (band_width * 1e-5) / (32.0 * torch.finfo(torch.float64).eps * t_max)  # the supported range
    assume(peak == 0.0 or min(peak, peak * 2.0**power) >= 2 * floor)
    ref = Case(x=x, y=y, structure="", loss_type="cosine", band_width=band_width)
    scaled = Case(x=x * 2.0**power, y=y * 2.0**power, structure="", loss_type="cosine", band_width=band_width)
    got = scaled.loss(scaled.x.to(dtype), scaled.y.to(dtype), engine=engine)
    assert torch.equal(got, ref.loss(x.to(dtype), y.to(dtype), engine=engine))


@examples(50)
@given(
    case=cases(loss_types=("l1", "l2"), cobi=False),
    shift=st.floats(-5.0, 5.0),
    engine=st.sampled_from(ENGINES),
)
def test_l1_and_l2_are_translation_invariant(case, shift, engine):
    offset = shift * float(case.y.abs().max() + 1.0)
    ref = case.loss(case.x, case.y, engine=engine)
    got = case.loss(case.x + offset, case.y + offset, engine=engine)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)  # float64; x + offset itself rounds


@st.composite
def _images(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Two small RGB-like images in [0, 1] (B, 3, H, W), quantised: duplicates and flat regions are common."""
    b, size, levels = draw(st.integers(1, 2)), draw(st.integers(4, 7)), draw(st.sampled_from([2, 4, 256]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    make = lambda: (torch.randint(0, levels, (b, 3, size, size), generator=gen) / (levels - 1)).double()  # noqa: E731
    return make(), make()


@examples(50)
@given(
    images=_images(),
    bilateral=st.booleans(),
    patch_size=st.sampled_from([None, 2, 3]),
    loss_type=st.sampled_from(["cosine", "l1", "l2"]),
    budget=BUDGETS,
    kernels=st.sampled_from(KERNELS),
)
def test_modules_agree_between_engines_and_respect_the_bounds(
    images, bilateral, patch_size, loss_type, budget, kernels
):
    x, y = images
    kind = ContextualBilateralLoss if bilateral else ContextualLoss
    common = {"loss_type": loss_type, "patch_size": patch_size, "reduction": "none"}
    dense = kind(engine="dense", **common).double()
    stream = kind(engine="streaming", memory_budget=budget, **common).double()
    ref = dense(x, y)
    with using_kernels(kernels):
        got = stream(x, y)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    # (patches are padded: one per pixel, M = H W)
    assert float(ref.min()) >= 0.0 and float(ref.max()) <= math.log(y.shape[-2] * y.shape[-1]) + 1e-9
