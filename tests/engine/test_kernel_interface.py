"""Each strip-kernel implementation, driven by the minimal streaming pass of kernel_harness, against dense."""

from __future__ import annotations

import math

import pytest
import torch
from tests.engine.kernel_harness import stream_image

from contextual_loss import maths
from contextual_loss.engine import kernels
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
