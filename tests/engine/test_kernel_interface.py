"""Each strip-kernel implementation, driven by the minimal streaming pass of kernel_harness, against dense."""

from __future__ import annotations

import math

import pytest
import torch
from tests.engine.kernel_harness import stream_image

from contextual_loss import maths
from contextual_loss.engine import kernels
from contextual_loss.engine.dense import dense_log_cx_matrix


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
    torch.testing.assert_close(got[3], want[3], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(got[4], want[4], rtol=1e-8, atol=1e-12)
