"""The streaming engine against the dense reference: values, gradients, precision and autograd behaviour.

Reference values come from the dense engine (``engine="dense"``), plain autograd through the
definition in ``maths.py``; tolerances: float64 1e-8, float32 loss 1e-6 relative (docs/engine.md, Exactness).
Small memory budgets force many strips, so the strip bookkeeping is exercised at tiny sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from contextual_loss import functional as CF
from contextual_loss import maths
from contextual_loss.engine import (
    DoubleBackwardError,
    SpatialTerm,
    dense_evaluate,
    streaming_evaluate,
    streaming_plan,
    strips,
)

# Every test runs on the fused native strip kernels and on the eager passes (tests/engine/conftest.py).
pytestmark = pytest.mark.usefixtures("strip_kernels")


def dense_log_similarity(x, y, **kwargs):
    return dense_evaluate(x, y, **kwargs).log_similarity


def streaming_log_similarity(x, y, **kwargs):
    return streaming_evaluate(x, y, **kwargs).log_similarity


TINY_BUDGET = 512  # bytes: a few rows per strip at these sizes, so every test crosses many strips
LOSS_TYPES = ("cosine", "l2", "l1")
COBI = (None, "paper", "released")


def _maps(b: int, c: int, hw_x: tuple[int, int], hw_y: tuple[int, int], dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, *hw_x, generator=gen, dtype=dtype)
    y = torch.rand(b, c, *hw_y, generator=gen, dtype=dtype)
    return x, y


def _loss(x, y, loss_type, cobi, engine, **kw):
    if cobi is None:
        return CF.contextual_loss(x, y, 0.4, loss_type, reduction="none", engine=engine, **kw)
    # l1/l2 distances grow with C; a larger w_s keeps the spatial term relevant for them.
    weight = 0.3 if cobi == "released" else (0.2 if loss_type == "cosine" else 1.5)
    return CF.contextual_bilateral_loss(
        x, y, weight, 0.4, loss_type, form=cobi, reduction="none", engine=engine, **kw
    )  # fmt: skip


def _value_and_grads(x, y, fn):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = fn(x, y)
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype)
    gx, gy = torch.autograd.grad((value * weights).sum(), (x, y))
    return value.detach(), gx, gy


def _both_engines(x, y, kwargs, memory_budget):
    """(value, dx, dy) of the summed log similarity on the dense and on the streaming engine."""
    results = []
    for fn, extra in ((dense_log_similarity, {}), (streaming_log_similarity, {"memory_budget": memory_budget})):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        value = fn(xg, yg, **kwargs, **extra)
        results.append((value.detach(), *torch.autograd.grad(value.sum(), (xg, yg))))
    return results


@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("center", ["image", "batch"])
def test_matches_dense_float64(loss_type, cobi, center):
    # batch 2, N = 5 x 6 = 30 prediction vectors, M = 4 x 5 = 20 target vectors
    x, y = _maps(2, 6, (5, 6), (4, 5), seed=1)
    dense = _value_and_grads(x, y, lambda a, b: _loss(a, b, loss_type, cobi, "dense", center=center))
    stream = _value_and_grads(
        x, y, lambda a, b: _loss(a, b, loss_type, cobi, "streaming", center=center, memory_budget=TINY_BUDGET)
    )
    for got, want in zip(stream, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("max_rows", [3, 16])
@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_capped_strips_match_dense(loss_type, cobi, max_rows, monkeypatch):
    # Strips of 16 rows take the blocked column maximum, 3-row strips and the 12-row remainder of
    # N = 60 the plain one; duplicated prediction rows in different strips: the first must win.
    monkeypatch.setattr(strips, "MAX_STRIP_ROWS", max_rows)
    x, y = _maps(2, 5, (6, 10), (4, 5), seed=11)
    x[:, :, 3] = x[:, :, 0]
    plan = streaming_plan(60, 20, loss_type=loss_type, dtype=torch.float64)
    assert plan.rows == max_rows
    dense = _value_and_grads(x, y, lambda a, b: _loss(a, b, loss_type, cobi, "dense"))
    stream = _value_and_grads(x, y, lambda a, b: _loss(a, b, loss_type, cobi, "streaming"))
    for got, want in zip(stream, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    want_match = CF.contextual_match(x, y, 0.4, loss_type, engine="dense")
    got_match = CF.contextual_match(x, y, 0.4, loss_type, engine="streaming")
    assert want_match.prediction_index.unique().numel() > 10
    assert torch.equal(got_match.prediction_index, want_match.prediction_index)


@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_dense_float32(loss_type, cobi):
    x, y = _maps(2, 8, (6, 6), (5, 7), dtype=torch.float32, seed=2)
    dense = _value_and_grads(x, y, lambda a, b: _loss(a, b, loss_type, cobi, "dense"))
    stream = _value_and_grads(x, y, lambda a, b: _loss(a, b, loss_type, cobi, "streaming", memory_budget=2048))
    torch.testing.assert_close(stream[0], dense[0], rtol=1e-6, atol=0.0)
    # Gradients: both are float32 evaluations of the same formula; differences are rounding.
    for got, want in zip(stream[1:], dense[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck(loss_type, cobi):
    # fast_mode checks a random projection of the Jacobian (full mode: the test below).
    x, y = _maps(2, 3, (3, 4), (4, 3), seed=3)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def fn(a, b):
        return _loss(a, b, loss_type, cobi, "streaming", memory_budget=64)

    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_full_jacobian():
    x, y = _maps(2, 2, (2, 3), (3, 2), seed=3)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def fn(a, b):
        return CF.contextual_bilateral_loss(a, b, 0.2, 0.4, reduction="none", engine="streaming", memory_budget=32)

    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_inputs_give_zero_loss_and_gradient(loss_type, dtype):
    # h = 0.005 makes every row softmax one-hot: the case where naive float32 gives NaN or noise.
    x, _ = _maps(2, 5, (6, 7), (6, 7), dtype=dtype, seed=4)
    x.requires_grad_(True)
    for cobi in COBI:
        if cobi is None:
            loss = CF.contextual_loss(x, x.detach(), 0.005, loss_type, engine="streaming", memory_budget=TINY_BUDGET)
        else:
            loss = CF.contextual_bilateral_loss(
                x, x.detach(), 0.1, 0.005, loss_type, form=cobi, engine="streaming", memory_budget=TINY_BUDGET
            )
        (grad,) = torch.autograd.grad(loss, x)
        assert float(loss.detach()) == 0.0
        assert torch.count_nonzero(grad) == 0, (cobi, grad.abs().max())


def test_saturated_rows_have_exact_float32_gradient():
    # Design note, section 4.5: X close to a shuffled Y at h = 0.1 is nearly one-hot; the float64
    # gradient is ~1e-20 and a float32 engine that accumulates s r p and -s g apart gives ~1e-6.
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(1, 16, 12, 12, generator=gen, dtype=torch.float64)
    perm = torch.randperm(144, generator=gen)
    x = y.flatten(2)[:, :, perm].reshape_as(y) + 1e-3 * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        xi = x.to(dtype).requires_grad_(True)
        loss = CF.contextual_loss(xi, y.to(dtype), 0.1, engine="streaming", memory_budget=4096)
        grads[dtype] = torch.autograd.grad(loss, xi)[0]
    assert float(grads[torch.float64].abs().max()) < 1e-15
    assert float(grads[torch.float32].abs().max()) < 1e-12


@pytest.mark.parametrize("memory_budget", [None, 1])
@pytest.mark.parametrize("loss_type", ["l2", "cosine"])
def test_float32_exact_duplicates_on_any_strips(loss_type, memory_budget):
    # Issue 13 item 1, on every strip-kernel implementation: two distinct vectors tiled into x and
    # y, so every row's minimum distance is 0 and its softmax scale 1 / (h eps) = 2e6 amplifies the
    # GEMM's rounding. CX = 2 / M exactly and the gradient is 0; before the near field was evaluated
    # directly, the backward pass (strips of other shapes) gave gradients of 1e6 and more.
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(2, 64, generator=gen)
    pick_x = torch.cat([torch.tensor([0, 1]), torch.randint(0, 2, (62,), generator=gen)])
    pick_y = torch.cat([torch.tensor([0, 1]), torch.randint(0, 2, (47,), generator=gen)])
    x = vectors[pick_x].T.reshape(1, 64, 8, 8).requires_grad_(True)
    y = vectors[pick_y].T.reshape(1, 64, 7, 7).requires_grad_(True)
    loss = CF.contextual_loss(x, y, 0.05, loss_type, engine="streaming", memory_budget=memory_budget)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(49 / 2), rel=1e-6)
    assert float(x.grad.abs().max()) <= 1e-5 and float(y.grad.abs().max()) <= 1e-5


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_dense_in_the_saturated_regime(loss_type):
    # Well-matched features at a small band width: most exp(t) underflow, the regime where the
    # engine clamps before exp (the CPU's slow path) and must still agree with the reference.
    gen = torch.Generator().manual_seed(19)
    y = torch.rand(2, 6, 6, 5, generator=gen, dtype=torch.float64)
    x = y.flip(-1) + 1e-3 * torch.rand(y.shape, generator=gen, dtype=torch.float64)
    dense = _value_and_grads(x, y, lambda a, b: CF.contextual_loss(a, b, 0.05, loss_type, reduction="none"))
    stream = _value_and_grads(
        x,
        y,
        lambda a, b: CF.contextual_loss(
            a, b, 0.05, loss_type, reduction="none", engine="streaming", memory_budget=TINY_BUDGET
        ),
    )
    torch.testing.assert_close(stream[0], dense[0], rtol=1e-8, atol=1e-12)
    for got, want in zip(stream[1:], dense[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_finite_and_close(dtype):
    x, y = _maps(2, 8, (6, 6), (6, 6), dtype=torch.float32, seed=6)
    xh, yh = x.to(dtype).requires_grad_(True), y.to(dtype)
    loss = CF.contextual_loss(xh, yh, 0.1, reduction="none", engine="streaming", memory_budget=TINY_BUDGET)
    (grad,) = torch.autograd.grad(loss.sum(), xh)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype
    assert torch.isfinite(loss).all()
    assert torch.isfinite(grad.float()).all()
    # The reference is the float32 loss of the same rounded inputs: only the input rounding differs.
    reference = CF.contextual_loss(xh.detach().float(), yh.float(), 0.1, reduction="none", engine="dense")
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-6)
    # Identical half inputs at a small band width: exactly 0 (naive float16 code gives NaN here).
    same = CF.contextual_loss(xh, xh.detach(), 0.01, engine="streaming", memory_budget=TINY_BUDGET)
    assert float(same.detach()) == 0.0


def test_autocast_runs_in_float32():
    x, y = _maps(1, 8, (6, 6), (6, 6), dtype=torch.float32, seed=7)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CF.contextual_loss(x, y, 0.2, engine="streaming", memory_budget=TINY_BUDGET)
    (grad,) = torch.autograd.grad(loss, x)
    reference = CF.contextual_loss(x.detach(), y, 0.2, engine="dense")
    assert loss.dtype == torch.float32
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-6, atol=0.0)


def test_no_grad_keeps_no_state_and_grad_keeps_linear_state():
    x, y = _maps(2, 4, (10, 10), (10, 10), dtype=torch.float32, seed=8)
    xs, ys = x.flatten(2).mT, y.flatten(2).mT
    packed: list[torch.Tensor] = []

    def pack(t):
        packed.append(t)
        return t

    kwargs = {"loss_type": "l2", "band_width": 0.5, "eps": 1e-5, "memory_budget": TINY_BUDGET}
    xg = xs.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.no_grad():
            value = streaming_log_similarity(xg, ys, **kwargs)
        assert value.grad_fn is None
        assert packed == []
        value = streaming_log_similarity(xg, ys, **kwargs)
    assert value.grad_fn is not None
    # What backward keeps: the inputs plus O(N + M) statistics per image, never N x M.
    b, n, c = xs.shape
    m = ys.shape[1]
    saved = sum(t.numel() for t in packed)
    assert saved <= b * (n + m) * (c + 8), saved
    assert max(t.numel() for t in packed) <= b * max(n, m) * c


def test_double_backward_raises_clearly():
    x, y = _maps(1, 4, (5, 5), (5, 5), seed=9)
    x.requires_grad_(True)
    loss = CF.contextual_loss(x, y, engine="streaming")
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)  # first order still works
    with pytest.raises(DoubleBackwardError, match=r"double backward.*engine='dense'"):
        grad.pow(2).sum().backward()
    # The dense engine supports it.
    loss = CF.contextual_loss(x, y, engine="dense")
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    grad.pow(2).sum().backward()


@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_auto_engine_differentiates_twice_through_a_dense_recomputation(loss_type, cobi):
    # Above the dense threshold engine="auto" streams; create_graph=True then recomputes the
    # gradient densely so that a gradient penalty can be differentiated: same as engine="dense".
    x, y = _maps(1, 3, (20, 20), (18, 18), seed=21)
    results = []
    for name in ("auto", "dense"):
        xg = x.clone().requires_grad_(True)
        loss = _loss(xg, y, loss_type, cobi, name).sum()
        (grad,) = torch.autograd.grad(loss, xg, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), xg)
        results.append((loss.detach(), grad.detach(), second))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_first_order_gradients_of_the_auto_engine_stay_streamed():
    # Without create_graph the streaming backward runs (no dense matrices): same gradient as before.
    x, y = _maps(1, 3, (20, 20), (18, 18), seed=22)
    grads = []
    for name in ("auto", "streaming"):
        xg = x.clone().requires_grad_(True)
        CF.contextual_loss(xg, y, engine=name).backward()
        grads.append(xg.grad)
    assert torch.equal(*grads)


def test_thread_counts_change_gradients_by_rounding_only():
    # The strip kernels are bit-identical for any number of threads (test_native.py); the GEMMs
    # are not (MKL splits them differently), so values and gradients agree to rounding only.
    x, y = _maps(1, 32, (16, 16), (15, 17), dtype=torch.float32, seed=21)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(_value_and_grads(x, y, lambda a, b: _loss(a, b, "cosine", None, "streaming")))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-6, atol=0.0)
    for got, want in zip(runs[1][1:], runs[0][1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5 * float(want.abs().max()))


def test_bit_identical_run_to_run():
    x, y = _maps(2, 16, (12, 12), (11, 13), dtype=torch.float32, seed=10)
    runs = [
        _value_and_grads(x, y, lambda a, b: _loss(a, b, "cosine", None, "streaming", memory_budget=4096))
        for _ in range(2)
    ]
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


def _prepared(b, n, m, c, dtype=torch.float64, seed=11):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=gen, dtype=dtype)
    y = torch.randn(b, m, c, generator=gen, dtype=dtype)
    return x, y


def _spatial_term(form, n, m, dtype=torch.float64, seed=12):
    if form is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    return SpatialTerm(
        0.4, form, torch.rand(n, 2, generator=gen, dtype=dtype), torch.rand(m, 2, generator=gen, dtype=dtype)
    )


@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_duplicated_rows_resolve_ties_like_dense(loss_type, cobi):
    # Exact ties (docs/streaming.md, section 2: first index wins): duplicated y rows tie the row
    # minimum, duplicated x rows tie the column maximum; both engines take the first index. Only
    # exact duplicates tie: the features are random otherwise (no near-ties), prepared as the
    # functional API would.
    n, m, c = 24, 20, 6
    x, y = maths.prepare_features(*_prepared(2, n, m, c, seed=13), loss_type)
    y[:, 7] = y[:, 3]
    y[:, 15] = y[:, 3]
    x[:, 9] = x[:, 2]
    x[:, 20] = x[:, 11]
    spatial = _spatial_term(cobi, n, m)
    kwargs = {"loss_type": loss_type, "band_width": 0.3, "eps": 1e-5, "spatial": spatial}
    dense, stream = _both_engines(x, y, kwargs, memory_budget=300)
    for got, want in zip(stream, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cobi", COBI)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_match_agrees_with_dense(loss_type, cobi):
    x, y = maths.prepare_features(*_prepared(2, 40, 33, 5), loss_type)
    spatial = _spatial_term(cobi, 40, 33)
    kwargs = {"loss_type": loss_type, "band_width": 0.3, "eps": 1e-5, "spatial": spatial}
    want = dense_evaluate(x, y, **kwargs)
    got = streaming_evaluate(x, y, memory_budget=TINY_BUDGET, **kwargs)
    assert torch.equal(got.prediction_index, want.prediction_index)
    torch.testing.assert_close(got.best, want.best, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got.log_similarity, want.log_similarity, rtol=1e-10, atol=1e-14)


def test_functional_match_and_batch_centre_with_streaming():
    x, y = _maps(2, 4, (6, 5), (5, 6), seed=14)
    want = CF.contextual_match(x, y, 0.3, center="batch", weight_sp=0.1, engine="dense")
    got = CF.contextual_match(x, y, 0.3, center="batch", weight_sp=0.1, engine="streaming", memory_budget=TINY_BUDGET)
    assert torch.equal(got.prediction_index, want.prediction_index)
    torch.testing.assert_close(got.similarity, want.similarity, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("hw_y", [(5, 5), (4, 6)], ids=["N=M", "N!=M"])
def test_released_weight_extremes(hw_y):
    # w_s = 0 is plain CX; w_s = 1 is the spatial term alone, so no gradient reaches the features:
    # finite and exactly zero on both engines, and backward() works (issue: NaN when N != M on the
    # streaming engine, no grad_fn on the dense one).
    x, y = _maps(1, 4, (5, 5), hw_y, seed=15)
    x.requires_grad_(True)
    values = {}
    for weight in (0.0, 1.0):
        for engine in ("dense", "streaming"):
            values[weight, engine] = CF.contextual_bilateral_loss(
                x, y, weight, form="released", engine=engine, memory_budget=TINY_BUDGET
            )
        torch.testing.assert_close(values[weight, "streaming"], values[weight, "dense"], rtol=1e-10, atol=1e-12)
    grads = [torch.autograd.grad(values[0.0, engine], x)[0] for engine in ("dense", "streaming")]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-12)
    for engine in ("dense", "streaming"):
        x.grad = None
        values[1.0, engine].backward()
        assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) == 0, engine


def test_zero_norm_vectors_are_finite():
    # A constant target: every centred target vector is zero, d = 1 everywhere, loss = log M exactly.
    x, _ = _maps(1, 3, (4, 4), (4, 4), seed=16)
    y = torch.full((1, 3, 4, 4), 0.25, dtype=torch.float64)
    x.requires_grad_(True)
    loss = CF.contextual_loss(x, y, engine="streaming", memory_budget=TINY_BUDGET)
    (grad,) = torch.autograd.grad(loss, x)
    assert float(loss.detach()) == pytest.approx(math.log(16), rel=1e-12)
    assert torch.isfinite(grad).all()


def test_module_passes_engine_options():
    from contextual_loss import ContextualBilateralLoss, ContextualLoss

    x, y = _maps(2, 3, (8, 8), (8, 8), seed=17)
    criterion = ContextualLoss(band_width=0.3, engine="streaming", memory_budget=TINY_BUDGET)
    want = CF.contextual_loss(x, y, 0.3, engine="dense")
    torch.testing.assert_close(criterion(x, y), want, rtol=1e-10, atol=1e-12)
    cobi = ContextualBilateralLoss(0.2, band_width=0.3, engine="streaming", memory_budget=TINY_BUDGET)
    want = CF.contextual_bilateral_loss(x, y, 0.2, 0.3, engine="dense")
    torch.testing.assert_close(cobi(x, y), want, rtol=1e-10, atol=1e-12)
    assert (criterion.engine, criterion.memory_budget) == ("streaming", TINY_BUDGET)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, y = _maps(2, 8, (6, 6), (5, 7), dtype=torch.float64, seed=18)
    cpu = _value_and_grads(x, y, lambda a, b: _loss(a, b, "cosine", "paper", "streaming", memory_budget=2048))
    gpu = _value_and_grads(
        x.cuda(), y.cuda(), lambda a, b: _loss(a, b, "cosine", "paper", "streaming", memory_budget=2048)
    )
    for got, want in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-8, atol=1e-12)


def test_prepared_sets_of_reduced_precision_are_upcast():
    x, y = _prepared(1, 30, 20, 4, dtype=torch.float32)
    x, y = maths.prepare_features(x, y, "cosine")
    half = streaming_log_similarity(
        x.half(), y.half(), loss_type="cosine", band_width=0.5, eps=1e-5, memory_budget=TINY_BUDGET
    )
    ref = dense_log_similarity(x.half().float(), y.half().float(), loss_type="cosine", band_width=0.5, eps=1e-5)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("n", "m"), [(1, 7), (9, 1), (1, 1)])
def test_single_vector_sets(n, m):
    x, y = maths.prepare_features(*_prepared(2, n, m, 3, seed=20), "cosine")
    kwargs = {"loss_type": "cosine", "band_width": 0.5, "eps": 1e-5}
    dense, stream = _both_engines(x, y, kwargs, memory_budget=1)
    for got, want in zip(stream, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("loss_type", ["cosine", "l2"])
def test_transposed_inputs_give_the_same_values_and_gradients_in_their_own_layout(loss_type):
    # A direct caller may pass transposed (B, N, C) views of (B, C, N) features; the engine works on
    # contiguous copies (row gathers) and returns each gradient in its input's layout.
    gen = torch.Generator().manual_seed(21)
    feats = torch.randn(2, 6, 40, generator=gen, dtype=torch.float64)  # (B, C, N)
    target = torch.randn(2, 6, 33, generator=gen, dtype=torch.float64)
    results = []
    for make in (lambda t: t.transpose(1, 2), lambda t: t.transpose(1, 2).contiguous()):
        x, y = make(feats.clone()).requires_grad_(True), make(target.clone()).requires_grad_(True)
        value = streaming_log_similarity(
            x, y, loss_type=loss_type, band_width=0.3, eps=1e-5, memory_budget=TINY_BUDGET * 4
        ).sum()
        dx, dy = torch.autograd.grad(value, (x, y))
        assert dx.stride() == x.stride() and dy.stride() == y.stride()
        results.append((value, dx, dy))
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
