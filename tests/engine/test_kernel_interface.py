"""Each strip-kernel implementation, driven by the minimal streaming pass of kernel_harness, against dense."""

from __future__ import annotations

import math

import pytest
import torch
from tests.engine.kernel_harness import stream_image

from contextual_loss import maths
from contextual_loss.engine import kernels, strips
from contextual_loss.engine.dense import dense_log_cx_matrix
from contextual_loss.engine.kernels import ColumnMax, RowStats


def _dense(x, y, loss_type, band_width):
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    best, index = dense_log_cx_matrix(xr, yr, loss_type=loss_type, band_width=band_width, eps=1e-5).max(dim=1)
    log_sim = torch.logsumexp(best, dim=-1) - math.log(best.shape[-1])
    dx, dy = torch.autograd.grad(log_sim.sum(), (xr, yr))
    return log_sim[0], best[0].detach(), index[0], dx[0], dy[0]


def _implementation(name: str, dtype: torch.dtype = torch.float64):
    why = kernels.availability(name, torch.device("cpu"), dtype)
    if why is not None:
        pytest.skip(f"{name} strip kernels unavailable: {why}")
    return kernels.select(torch.device("cpu"), dtype, name)


@pytest.mark.parametrize("name", kernels.IMPLEMENTATIONS)
@pytest.mark.parametrize("loss_type", ["cosine", "l2", "l1"])
@pytest.mark.parametrize(("n", "m"), [(30, 23), (1, 9), (9, 1), (16, 16)])
def test_kernels_match_dense_engine(name, loss_type, n, m):
    gen = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(1, n, 5, dtype=torch.float64, generator=gen)
    y = torch.randn(1, m, 5, dtype=torch.float64, generator=gen)
    x[0, 3 % n] = y[0, 0]  # an exact duplicate: a row whose minimum distance is 0
    x, y = maths.prepare_features(x, y, loss_type)
    got = stream_image(_implementation(name), x[0], y[0], loss_type=loss_type, band_width=0.3, rows=4)
    want = _dense(x, y, loss_type, 0.3)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    assert torch.equal(got[2], want[2])
    dx, dy, want_dx, want_dy = got[3], got[4], want[3], want[4]
    if loss_type == "cosine":  # only the tangential part is defined (see engine/nearfield.py, "Cosine gradients")
        dx, want_dx = _tangential(dx, x[0]), _tangential(want_dx, x[0])
        dy, want_dy = _tangential(dy, y[0]), _tangential(want_dy, y[0])
    torch.testing.assert_close(dx, want_dx, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(dy, want_dy, rtol=1e-8, atol=1e-12)


def _tangential(grad, unit):
    """The gradient with its component along each (unit or zero) vector removed."""
    return grad - (grad * unit).sum(-1, keepdim=True) * unit


@pytest.mark.parametrize("name", kernels.IMPLEMENTATIONS)
def test_kernels_are_bit_identical_across_thread_counts(name):
    # The interface's determinism claim, per implementation: a strip large enough for several
    # threads (150 x 600 entries), forward then backward, on 1, 2 and 3 threads.
    impl = _implementation(name, torch.float32)
    gen = torch.Generator().manual_seed(7)
    u0 = torch.rand(150, 600, generator=gen) * 2 - 1
    u0[:, 300] = u0[:, 10]  # exact ties in every row
    base = torch.ones(150)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            u = u0.clone()
            rows = RowStats(torch.empty(150), torch.empty(150, dtype=torch.long), torch.empty(150), torch.empty(150),
                            torch.empty(150, dtype=torch.bool))  # fmt: skip
            columns = ColumnMax(torch.full((600,), -math.inf), torch.zeros(600, dtype=torch.long))
            impl.forward(u, base, rows, clamp=True, band_width=0.2, eps=1e-5, columns=columns, row0=0, write_a=False)
            g = u0.clone()
            entry_rows = torch.arange(0, 150, 3)
            impl.backward(
                g, rows, gamma_base=torch.linspace(-1, 1, 150), band_width=0.2, argmax_rows=entry_rows,
                argmax_cols=entry_rows * 4, argmax_values=torch.linspace(-0.5, 0.5, entry_rows.numel()),
            )  # fmt: skip
            results.append((columns.best, columns.index, rows.umax, rows.argmin, rows.scale, rows.log_norm, g))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def _stats(rows: int, dtype: torch.dtype) -> RowStats:
    return RowStats(torch.empty(rows, dtype=dtype), torch.empty(rows, dtype=torch.long), torch.empty(rows, dtype=dtype),
                    torch.empty(rows, dtype=dtype), torch.empty(rows, dtype=torch.bool))  # fmt: skip


def _columns(m: int, dtype: torch.dtype) -> ColumnMax:
    return ColumnMax(torch.full((m,), -math.inf, dtype=dtype), torch.zeros(m, dtype=torch.long))


@pytest.mark.parametrize("name", kernels.IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("write_a", [False, True])
def test_deferred_rows_then_only_them_give_the_whole_strip(name, dtype, write_a):
    # StripKernels.forward's defer/only contract: a first call defers the rows whose maximum exceeds
    # the floor (writing only their umax and block maxima), a second call with only=deferred
    # processes them; together they give exactly what one call over the whole strip gives.
    impl = _implementation(name, dtype)
    gen = torch.Generator().manual_seed(11)
    r, m = 37, 150  # 150 columns: two full blocks of NEAR_BLOCK and a shorter one
    u0 = (torch.rand(r, m, generator=gen, dtype=dtype) - 1.0) * 0.5
    u0[:, 77] = u0[:, 3]  # ties within rows
    u0[20] = u0[5]  # a duplicate row: ties between rows
    base = torch.zeros(r, dtype=dtype)
    options = {"clamp": True, "band_width": 0.2, "eps": 1e-5, "row0": 40, "write_a": write_a}
    whole_u, whole_rows, whole_cols = u0.clone(), _stats(r, dtype), _columns(m, dtype)
    impl.forward(whole_u, base, whole_rows, columns=whole_cols, **options)

    row_max = u0.amax(dim=1)
    floor = row_max.median().expand(r).contiguous()  # about half the rows are deferred
    floor[5] = -math.inf  # ... and one row of the duplicate pair for sure
    defer = kernels.Deferral(floor, torch.empty(r, dtype=torch.bool), torch.full((r, 3), math.nan, dtype=dtype))
    u, rows, cols = u0.clone(), _stats(r, dtype), _columns(m, dtype)
    count = impl.forward(u, base, rows, columns=cols, defer=defer, **options)
    expected = row_max > floor
    assert torch.equal(defer.deferred, expected) and count == int(expected.sum()) and 0 < count < r
    assert torch.equal(rows.umax[expected], row_max[expected])
    assert torch.equal(defer.block_max[expected], strips.block_max(u0)[expected])
    kept = ~expected
    for got, want in zip(_fields(rows), _fields(whole_rows), strict=True):
        assert torch.equal(got[kept], want[kept])
    assert torch.equal(u[expected], u0[expected])  # deferred rows untouched (they are refined next)
    assert impl.forward(u, base, rows, columns=cols, only=defer.deferred, **options) == 0
    for got, want in zip(_fields(rows), _fields(whole_rows), strict=True):
        assert torch.equal(got, want)
    if write_a:
        assert torch.equal(u, whole_u)
    else:
        assert torch.equal(cols.best, whole_cols.best) and torch.equal(cols.index, whole_cols.index)
        assert not bool((cols.index == 20 + 40).any())  # the duplicate row 20 never beats row 5


def _fields(rows: RowStats) -> tuple[torch.Tensor, ...]:
    return rows.umax, rows.argmin, rows.scale, rows.log_norm, rows.clamped


@pytest.mark.parametrize("name", kernels.IMPLEMENTATIONS)
def test_column_ties_go_to_the_first_row_whatever_the_strip_order(name):
    # Ties between strips (duplicate rows) go to the smaller global row even when the later strip is
    # processed first, as the deferred rows of a strip are: the rule is order-independent.
    impl = _implementation(name, torch.float32)
    gen = torch.Generator().manual_seed(5)
    u0 = torch.rand(24, 90, generator=gen) - 1.0
    u0[17] = u0[2]
    u0[23] = u0[9]
    base = torch.zeros(24)
    results = []
    for order in ([0, 8, 16], [16, 8, 0]):
        cols, rows = _columns(90, torch.float32), _stats(24, torch.float32)
        for row0 in order:
            sl = slice(row0, row0 + 8)
            impl.forward(u0[sl].clone(), base[sl], RowStats(*(f[sl] for f in _fields(rows))), clamp=True,
                         band_width=0.1, eps=1e-5, columns=cols, row0=row0, write_a=False)  # fmt: skip
        results.append(cols)
    assert torch.equal(results[0].best, results[1].best) and torch.equal(results[0].index, results[1].index)
    assert not bool(torch.isin(results[0].index, torch.tensor([17, 23])).any())
    assert bool(torch.isin(results[0].index, torch.tensor([2, 9])).any())
