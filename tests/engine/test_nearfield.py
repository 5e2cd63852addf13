"""The near-field rule (engine/nearfield.py) and its use by the strip distances (strips.StripDistance.refine).

What the rule relies on, checked directly: the rounding bound E covers the GEMM form's errors;
every entry left in GEMM form where a row is sensitive has a negligible exponent; refined values
do not depend on how rows are cut into strips (the backward pass recomputes other strips); and
the direct gradient of equal vectors is exactly zero.
"""

from __future__ import annotations

import pytest
import torch

from contextual_loss import maths
from contextual_loss.engine import nearfield, strips

_GEN = torch.Generator().manual_seed(0)


def _data(kind: str, n: int, c: int) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, c, generator=_GEN)
    if kind == "quantised":
        return torch.randint(0, 256, (n, c), generator=_GEN).float() / 255
    if kind == "relu":
        return torch.relu(torch.randn(n, c, generator=_GEN)) ** 2
    return torch.full((n, c), 0.1) + 1e-3 * torch.randint(0, 3, (n, c), generator=_GEN)  # nearly constant


def _prepared(kind: str, n: int, m: int, c: int, loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    y = _data(kind, m, c)
    x = torch.cat([y[: n // 2], _data(kind, n - n // 2, c)])  # half of x duplicates y
    if loss_type == "cosine":
        xp, yp = maths.prepare_features(x[None], y[None], "cosine")
        return xp[0], yp[0]
    return x, y


def _exact(x: torch.Tensor, y: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The distances in float64, of the float32 values (direct forms)."""
    diff = x.double()[:, None] - y.double()[None]
    d = diff.square().sum(-1)
    return d if loss_type == "l2" else 0.5 * d


@pytest.mark.parametrize("loss_type", ["l2", "cosine"])
@pytest.mark.parametrize("kind", ["normal", "quantised", "relu", "constant"])
@pytest.mark.parametrize("channels", [1, 3, 16, 64, 256])
def test_the_rounding_bound_covers_the_gemm_form(loss_type, kind, channels):
    x, y = _prepared(kind, 60, 50, channels, loss_type)
    if loss_type == "cosine" and kind == "constant" and channels == 1:
        pytest.skip("every centred vector is (numerically) zero")
    dist = strips.make_strip_distance(x, y, loss_type)
    exact = _exact(x, y, loss_type)
    for rows in (1, 7, 60):  # strips of different shapes round differently
        starts = range(0, 60, rows)
        u = torch.cat([dist.affinity(slice(r, min(60, r + rows)), torch.empty(min(rows, 60 - r), 50)) for r in starts])
        error = (-u.double() - exact).abs()
        ratio = float((error / dist.bound.double()[:, None]).max())
        assert ratio <= 1.0, f"GEMM error reaches {ratio:.2f} E (strips of {rows} rows)"  # measured: <= 0.4


@pytest.mark.parametrize("loss_type", ["l2", "cosine"])
@pytest.mark.parametrize("band_width", [0.01, 0.1, 1.0])
def test_entries_outside_the_near_field_have_negligible_exponents(loss_type, band_width):
    eps = 1e-5
    tiles = torch.randn(4, 16, generator=_GEN)
    y = tiles[torch.randint(0, 4, (50,), generator=_GEN)] + 1e-4 * torch.randn(50, 16, generator=_GEN)
    x = y[torch.randint(0, 50, (40,), generator=_GEN)] + 1e-4 * torch.randn(40, 16, generator=_GEN)
    if loss_type == "cosine":
        xp, yp = maths.prepare_features(x[None], y[None], "cosine")
        x, y = xp[0], yp[0]
    dist = strips.make_strip_distance(x, y, loss_type)
    u = dist.affinity(slice(0, 40), torch.empty(40, 50))
    gemm = u.clone()
    sensitive, near = dist.refine(slice(0, 40), u, None, band_width, eps)
    assert sensitive is not None and bool(sensitive.any()), "these rows are sensitive"
    exact = _exact(x, y, loss_type)
    m = exact.amin(dim=1, keepdim=True)
    t = -(exact - m) / (band_width * (m + eps))  # exact exponents
    refined = torch.zeros_like(u, dtype=torch.bool)
    refined[near.rows, near.cols] = True
    rows = sensitive.nonzero().squeeze(1)
    # the true row minimum is in the near field, and its refined value is exact to rounding
    assert bool(refined[rows, exact[rows].argmin(dim=1)].all())
    torch.testing.assert_close(-u[refined].double(), exact[refined], rtol=1e-6, atol=1e-12)
    # outside it, exponents are below -(T_i + 1) <= -1 (both exactly and in the GEMM form used)
    outside = ~refined & sensitive.unsqueeze(1)
    assert bool(outside.any()) and float(t[outside].max()) < -1.0
    row_min = (-gemm.double()).amin(dim=1, keepdim=True)
    assert bool((gemm.double()[outside] <= -row_min.expand_as(gemm)[outside]).all())  # never above the max


@pytest.mark.parametrize("loss_type", ["l2", "cosine"])
def test_refined_values_do_not_depend_on_the_strips(loss_type):
    # two distinct vectors tiled: every row's minimum is 0 (exact duplicates), all rows sensitive
    vectors = torch.randn(2, 64, generator=_GEN)
    x = vectors[torch.randint(0, 2, (64,), generator=_GEN)]
    y = vectors[torch.randint(0, 2, (49,), generator=_GEN)]
    if loss_type == "cosine":
        xp, yp = maths.prepare_features(x[None], y[None], "cosine")
        x, y = xp[0], yp[0]
    dist = strips.make_strip_distance(x, y, loss_type)
    results = []
    for rows in (64, 7, 2, 1):
        parts = []
        for r in range(0, 64, rows):
            sl = slice(r, min(64, r + rows))
            u = dist.affinity(sl, torch.empty(sl.stop - r, 49))
            dist.refine(sl, u, None, 0.05, 1e-5)
            parts.append(u)
        results.append(torch.cat(parts))
    near = results[0] >= -1e-3  # the duplicates: distance 0
    for other in results[1:]:
        assert torch.equal(other[near], results[0][near])
    assert bool((results[0][near] == 0).all())  # exactly 0 for equal vectors


def test_float64_refines_to_float64_accuracy():
    # tau scales with the unit roundoff (1.9e-13 in float64), so float64 flags the rows float32 would:
    # rows with exact duplicates, refined to exact minima; not rows far from their targets.
    y = torch.randn(30, 64, generator=_GEN, dtype=torch.float64) * 10.0
    x = torch.cat([y[:20], torch.randn(20, 64, generator=_GEN, dtype=torch.float64) * 10.0])
    dist = strips.make_strip_distance(x, y, "l2")
    u = dist.affinity(slice(0, 40), torch.empty(40, 30, dtype=torch.float64))
    sensitive, _ = dist.refine(slice(0, 40), u, None, 0.5, 1e-8)
    assert bool(sensitive[:20].all()) and not bool(sensitive[20:].any())  # (kappa / tau = 0.07 there)
    assert nearfield.tolerance(torch.float64) == pytest.approx(1e-4 * 2.0**-29)
    assert torch.equal(u[torch.arange(20), torch.arange(20)], torch.zeros(20, dtype=torch.float64))


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_direct_gradient_of_equal_vectors_is_exactly_zero(factor):
    x = torch.randn(5, 8, generator=_GEN)
    y = torch.cat([x[:3], torch.randn(2, 8, generator=_GEN)])
    dx, dy = torch.zeros_like(x), torch.zeros_like(y)
    rows, cols = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 4])
    weight = torch.tensor([1e12, -3e11, 5e10, 1.0])  # row scales reach 1 / (h eps) and beyond
    nearfield.direct_backward(x, y, rows, cols, weight, factor, dx, dy)
    assert torch.equal(dx[:2], torch.zeros(2, 8)) and torch.equal(dy[:2], torch.zeros(2, 8))
    torch.testing.assert_close(dx[2], factor * (x[2] - y[4]))
    torch.testing.assert_close(dy[4], -factor * (x[2] - y[4]))
