"""maths.prepare_features for cosine: the operator prepare_cosine against a frozen copy of the composite.

The operator (row chunks, hand-written backward) must give the composite's values bit for bit and
its float64 gradients to rounding; the copy below is the implementation it replaced, verbatim.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from contextual_loss import maths

# --- The implementation before the operator, frozen (do not edit: it is what the operator must reproduce)


def _frozen_tolerance(x: Tensor, y: Tensor, precision: torch.dtype) -> Tensor:
    with torch.no_grad():
        scale = torch.maximum(x.norm(dim=-1).amax(dim=-1), y.norm(dim=-1).amax(dim=-1))
        tiny = torch.finfo(precision).tiny
        return (64.0 * torch.finfo(precision).eps * scale).clamp_min(tiny).view(-1, 1, 1)


def _frozen_normalize(v: Tensor, tol: Tensor) -> Tensor:
    norm = v.norm(dim=-1, keepdim=True)
    scale = torch.where(norm > tol, norm.clamp_min(tol).reciprocal(), torch.zeros_like(norm))
    return v * scale


def _frozen_largest_magnitude(t: Tensor) -> Tensor:
    if t.shape[1] * t.shape[2] == 0:
        return t.new_zeros(t.shape[0])
    return torch.linalg.vector_norm(t.detach(), ord=math.inf, dim=(1, 2))


def frozen_prepare(x: Tensor, y: Tensor, center: str = "image") -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        peak = torch.maximum(_frozen_largest_magnitude(x), _frozen_largest_magnitude(y)).to(torch.float64)
        peak = peak if center == "image" else peak.amax().expand_as(peak)
        scale = torch.ldexp(torch.ones_like(peak), -torch.frexp(peak).exponent).view(-1, 1, 1)
    xw, yw = x * scale, y * scale
    mu = yw.mean(dim=1, keepdim=True) if center == "image" else yw.mean(dim=(0, 1), keepdim=True)
    tol = _frozen_tolerance(xw, yw, torch.float64)
    return _frozen_normalize(xw - mu, tol).to(x.dtype), _frozen_normalize(yw - mu, tol).to(y.dtype)


# --- Helpers ---------------------------------------------------------------------------------------

_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CENTERS = ("image", "batch")


def assert_same_bits(got: Tensor, want: Tensor) -> None:
    """Equal bit patterns (so -0.0 differs from 0.0, and NaN payloads count)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(_INT[got.dtype]), want.view(_INT[want.dtype])), (got - want).abs().max()


def _sets(
    seed: int, b: int, n: int, m: int, c: int, dtype: torch.dtype, magnitude: float = 1.0
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=g, dtype=torch.float64) * magnitude
    y = torch.randn(b, m, c, generator=g, dtype=torch.float64) * magnitude + 0.5 * magnitude
    return x.to(dtype), y.to(dtype)


def _special_rows(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Rows that centring makes (near-)zero: copies of the target's mean, -0.0 rows, a constant image."""
    x, y = x.clone(), y.clone()
    y[0] = y[0, :1]  # image 0: a constant target, every centred target vector is (near) zero
    x[0, 0] = y[0, 0]
    x[-1, -1] = y[-1].double().mean(0).to(x.dtype)  # (near) the mean of image -1
    x[0, -1] = -0.0
    return x, y


@pytest.fixture(params=["default", "tiny"])
def chunk_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The default chunks, and chunks of a few rows (many chunk boundaries, a two-row tail)."""
    if request.param == "tiny":
        monkeypatch.setattr(maths, "CHUNK_BYTES", 8 * 3)
    return request.param


# --- Values: bit for bit ---------------------------------------------------------------------------

SHAPES = [(1, 1, 1, 1), (1, 2, 1, 3), (2, 7, 5, 3), (3, 9, 11, 16), (2, 33, 17, 67), (1, 64, 70, 256)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_are_the_composite_bit_for_bit(shape, center, dtype, chunk_bytes):
    b, n, m, c = shape
    for seed in range(3):
        x, y = _sets(seed, b, n, m, c, dtype)
        if seed == 2:
            x, y = _special_rows(x, y)
        got = maths.prepare_features(x, y, "cosine", center)
        want = frozen_prepare(x, y, center)
        for g, w in zip(got, want, strict=True):
            assert_same_bits(g, w)


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [
        (torch.float32, 1e-30),
        (torch.float32, 1e30),
        (torch.float32, 1e-42),  # subnormal inputs
        (torch.float64, 1e-300),
        (torch.float64, 1e300),
        (torch.float64, 1e-310),
        (torch.float16, 1e-6),
        (torch.float16, 3e4),
        (torch.bfloat16, 1e-35),
        (torch.bfloat16, 1e35),
    ],
)
@pytest.mark.parametrize("center", CENTERS)
def test_values_at_extreme_magnitudes_are_the_composite_bit_for_bit(dtype, magnitude, center, chunk_bytes):
    x, y = _sets(5, 2, 13, 10, 6, dtype, magnitude)
    x[1] *= 1e-3  # two scales in one batch: the batch prescale differs from the per-image one
    x, y = torch.nan_to_num(x), torch.nan_to_num(y)
    for xs, ys in ((x, y), _special_rows(x, y)):
        for g, w in zip(maths.prepare_features(xs, ys, "cosine", center), frozen_prepare(xs, ys, center), strict=True):
            assert_same_bits(g, w)


def test_all_zero_and_constant_sets_are_the_composite_bit_for_bit():
    for x, y in [
        (torch.zeros(2, 4, 3), torch.zeros(2, 5, 3)),
        (torch.full((1, 4, 3), 2.5), torch.full((1, 6, 3), 2.5)),
        (-torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)),
    ]:
        for center in CENTERS:
            for g, w in zip(maths.prepare_features(x, y, "cosine", center), frozen_prepare(x, y, center), strict=True):
                assert_same_bits(g, w)


def test_mixed_dtypes_and_non_contiguous_sets_are_the_composite_bit_for_bit():
    x, y = _sets(6, 2, 9, 8, 5, torch.float32)
    cases = [(x.transpose(1, 2).contiguous().transpose(1, 2), y), (x, y.double()), (x[:, ::2], y[:, 1:])]
    for xs, ys in cases:
        for g, w in zip(maths.prepare_features(xs, ys, "cosine"), frozen_prepare(xs, ys), strict=True):
            assert_same_bits(g, w)


def _channels_first(t: Tensor) -> Tensor:
    """The same set as the view a flattened (B, C, H, W) feature map gives: (B, P, C) with strides (P C, 1, P)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("center", CENTERS)
def test_channels_first_views_are_read_in_place_with_the_same_bits_and_gradients(center, chunk_bytes):
    x, y = _special_rows(*_sets(14, 3, 20, 14, 9, torch.float32))
    xv, yv = _channels_first(x), _channels_first(y)
    assert maths._operator_applies(xv, yv)  # the operator takes the views: no contiguous copy first
    assert not maths._operator_applies(xv[:, ::2], yv)  # other strided layouts go to the composite
    got = maths.prepare_cosine(xv, yv, center == "batch")
    want = maths.prepare_cosine(x, y, center == "batch")
    for g, w in zip(got, want, strict=True):
        assert_same_bits(g, w)
        assert g.is_contiguous()
    g = torch.Generator().manual_seed(15)
    weights = torch.randn(x.shape, generator=g), torch.randn(y.shape, generator=g)
    grads = []
    for a, b in ((xv, yv), (x, y)):
        a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
        px, py = maths.prepare_features(a, b, "cosine", center)
        ((px * weights[0]).sum() + (py * weights[1]).sum()).backward()
        grads.append((a.grad, b.grad))
    for g_view, g_contiguous, t in zip(grads[0], grads[1], (xv, yv), strict=True):
        assert_same_bits(g_view, g_contiguous)
        assert g_view.stride() == t.stride()  # in the input's layout: the map's gradient needs no copy


def test_other_layouts_are_copied_and_take_the_operator(monkeypatch):
    x, y = _sets(16, 2, 9, 8, 5, torch.float32)
    want = maths.prepare_features(x[:, ::2].contiguous(), y, "cosine")

    def composite(*args):
        raise AssertionError("the composite ran")

    monkeypatch.setattr(maths, "_prepare_cosine_composite", composite)
    for got, w in zip(maths.prepare_features(x[:, ::2], y, "cosine"), want, strict=True):
        assert_same_bits(got, w)


@pytest.mark.parametrize("engine", ["streaming", "dense"])
def test_the_loss_copies_no_feature_map_for_cosine(engine):
    """Neither the sets nor the map's gradient is copied whole: the preparation reads and writes the maps' layout."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from contextual_loss.functional import contextual_loss

    b, c, h, w = 2, 8, 6, 5
    copies = []

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            whole = isinstance(out, Tensor) and out.dtype == torch.float32 and out.numel() == b * c * h * w
            if whole and func in (torch.ops.aten.clone.default, torch.ops.aten.copy_.default):
                copies.append(str(func))
            return out

    x = torch.randn(b, c, h, w, requires_grad=True)
    y = torch.randn(b, c, h, w)
    with Copies():
        contextual_loss(x, y, engine=engine).backward()
    assert copies == []
    assert x.grad is not None and x.grad.is_contiguous()


def test_empty_sets_behave_as_before():
    x, y = torch.randn(1, 0, 3), torch.randn(1, 4, 3)
    for xs, ys in ((x, y), (y, x)):
        with pytest.raises(Exception) as want:  # whatever the composite raised, the operator path raises too
            frozen_prepare(xs, ys)
        with pytest.raises(type(want.value)):
            maths.prepare_features(xs, ys, "cosine")


# --- Gradients -------------------------------------------------------------------------------------


def _gradients(fn, x: Tensor, y: Tensor, center: str, weights: tuple[Tensor | None, Tensor | None], y_grad: bool):
    xg, yg = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(y_grad)
    px, py = fn(xg, yg, center)
    loss = sum((p.double() * w).sum() for p, w in zip((px, py), weights, strict=True) if w is not None)
    wanted = (xg, yg) if y_grad else (xg,)
    found = torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True)
    return found


def _relative_error(got: Tensor, want: Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("used", ("both", "x", "y"))
def test_gradients_match_the_composite_in_float64(dtype, center, used, chunk_bytes):
    x, y = _special_rows(*_sets(7, 3, 20, 14, 9, dtype))
    g = torch.Generator().manual_seed(8)
    wx = torch.randn(x.shape, generator=g, dtype=torch.float64) if used != "y" else None
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64) if used != "x" else None
    for y_grad in (True, False):
        if used == "y" and not y_grad:  # nothing to differentiate: the prepared y depends on y only
            y_out = maths.prepare_features(x.requires_grad_(True), y, "cosine", center)[1]
            assert not y_out.requires_grad
            x = x.detach()
            continue
        got = _gradients(lambda a, b, c: maths.prepare_features(a, b, "cosine", c), x, y, center, (wx, wy), y_grad)
        want = _gradients(frozen_prepare, x, y, center, (wx, wy), y_grad)
        for gt, wt in zip(got, want, strict=True):
            assert gt.dtype == wt.dtype == dtype
            assert _relative_error(gt, wt) <= 1e-6
            torch.testing.assert_close(gt, wt, rtol=1e-6, atol=1e-6 * float(wt.abs().max()))


def test_gradients_of_a_float32_benchmark_size_set_match_to_1e6():
    x, y = _sets(9, 1, 2048, 2048, 256, torch.float32)
    g = torch.Generator().manual_seed(16)
    weights = (
        torch.randn(x.shape, generator=g, dtype=torch.float64),
        torch.randn(y.shape, generator=g, dtype=torch.float64),
    )
    fn = lambda a, b, c: maths.prepare_features(a, b, "cosine", c)  # noqa: E731
    for got, want in zip(
        _gradients(fn, x, y, "image", weights, True),
        _gradients(frozen_prepare, x, y, "image", weights, True),
        strict=True,
    ):
        assert _relative_error(got, want) <= 1e-6


@pytest.mark.parametrize("center", CENTERS)
def test_zero_vectors_get_exactly_zero_gradient(center):
    x, y = _sets(10, 2, 6, 5, 4, torch.float64)
    y[0] = y[0, :1]  # constant target image 0: all its centred target vectors are zero
    x[1, 2] = y[1].mean(0) if center == "image" else x[1, 2]
    xg, yg = x.requires_grad_(True), y.requires_grad_(True)
    px, py = maths.prepare_features(xg, yg, "cosine", center)
    (px.sum() + (py * torch.arange(5.0, dtype=torch.float64)[:, None]).sum()).backward()
    if center == "image":
        assert torch.equal(py[0].detach(), torch.zeros_like(py[0]))
    # a zero prepared vector passes no gradient to its own input (the mean's share aside, which
    # vanishes here: no kept vector of image 0 in y, and x's share is spread evenly)
    zero_x = px.detach().abs().sum(-1) == 0
    assert zero_x.any() or center == "batch"
    assert torch.isfinite(xg.grad).all() and torch.isfinite(yg.grad).all()
    assert torch.equal(xg.grad[zero_x], torch.zeros_like(xg.grad[zero_x]))


@pytest.mark.parametrize("center", CENTERS)
def test_gradcheck_and_gradgradcheck(center):
    x, y = _sets(11, 2, 5, 4, 3, torch.float64)
    x, y = x.requires_grad_(True), y.requires_grad_(True)
    fn = lambda a, b: maths.prepare_features(a, b, "cosine", center)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradgradcheck(fn, (x, y))


# --- The operator ----------------------------------------------------------------------------------


@pytest.mark.parametrize("center", CENTERS)
def test_the_operator_is_registered_properly(center):
    x, y = _sets(12, 2, 6, 5, 4, torch.float64)
    torch.library.opcheck(maths.prepare_cosine, (x.requires_grad_(True), y.requires_grad_(True), center == "batch"))
    views = (_channels_first(x.detach()).requires_grad_(True), _channels_first(y.detach()).requires_grad_(True))
    torch.library.opcheck(maths.prepare_cosine, (*views, center == "batch"))  # the fake's strides too


def test_meta_tensors_give_meta_tensors():
    x, y = torch.empty(2, 7, 5, device="meta"), torch.empty(2, 3, 5, device="meta", dtype=torch.float64)
    px, py = maths.prepare_features(x, y, "cosine", "batch")
    assert (px.device.type, px.shape, px.dtype) == ("meta", x.shape, x.dtype)
    assert (py.device.type, py.shape, py.dtype) == ("meta", y.shape, y.dtype)


def test_compiles_without_graph_breaks():
    x, y = _sets(13, 2, 6, 5, 4, torch.float32)
    compiled = torch.compile(lambda a, b: maths.prepare_features(a, b, "cosine"), fullgraph=True, backend="eager")
    for g, w in zip(compiled(x, y), frozen_prepare(x, y), strict=True):
        assert_same_bits(g, w)


@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("y_grad", (True, False))
def test_second_derivatives_match_the_composite(center, y_grad):
    # A gradient penalty: the first gradient taken with create_graph=True, then differentiated.
    x, y = _sets(14, 2, 7, 6, 5, torch.float64)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    results = []
    for fn in (lambda a, b: maths.prepare_features(a, b, "cosine", center), lambda a, b: frozen_prepare(a, b, center)):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(y_grad)
        px, _ = fn(xg, yg)
        (grad,) = torch.autograd.grad((px * weights).sum(), xg, create_graph=True)
        wanted = (xg, yg) if y_grad else (xg,)
        results.append(torch.autograd.grad(grad.square().sum(), wanted))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
