"""The native C strip kernels against the eager reference, kernel by kernel.

The end-to-end comparisons with the dense engine run on every implementation in test_streaming.py
and test_kernel_interface.py; here each kernel is checked directly on strips with exact ties,
clamped rows, underflow, best-match entries and offsets, on 1 and 2 threads, and for bit-identical
results across thread counts.
"""

from __future__ import annotations

import math
import platform
import shutil

import pytest
import torch

from contextual_loss.engine.kernels import RowStats, native
from contextual_loss.engine.kernels.base import ColumnMax
from contextual_loss.engine.kernels.eager import EagerKernels
from contextual_loss.engine.streaming._forward import row_stats

HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))
EAGER = EagerKernels()


def _native() -> native.NativeKernels:
    why = native.availability(torch.device("cpu"), torch.float32)
    if why is not None:
        pytest.skip(f"native strip kernels unavailable: {why}")
    return native.NativeKernels()


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _strip(dtype: torch.dtype, rows: int = 150, m: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-like affinities with exact ties: duplicated columns (row maxima) and rows (column maxima).

    Large enough (90000 entries) for the kernels to use two threads (they use one per 32768 entries).
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(rows, m, generator=gen, dtype=dtype) * 2 - 1
    u[:, 200] = u[:, 17]  # every row's value at 17 repeats at 200
    u[3, 17] = u[3, 200] = 1.0  # row 3: its maximum twice, the first at 17
    u[rows - 2] = u[1]  # rows in different threads' halves tie in every column: the first must win
    u[5] = u[4]
    base = torch.ones(rows, dtype=dtype)
    base[7] = 0.5  # m_i = 0.5 - max u < 0: clamped to 0
    return u, base


def _rows(n: int, dtype: torch.dtype) -> RowStats:
    return row_stats(n, torch.empty(0, dtype=dtype))


def _columns(m: int, dtype: torch.dtype) -> ColumnMax:
    # Columns from earlier strips: some hold a larger best (kept), one an exactly equal value (kept:
    # strictly greater across strips).
    best = torch.full((m,), -math.inf, dtype=dtype)
    best[:10] = 0.0
    return ColumnMax(best=best, index=torch.full((m,), 5, dtype=torch.long))


def _forward(kernels, u, base, *, band_width=0.4, row0=100, write_a=False):
    """(u after the call, row statistics, column maximum) of one forward call on copies."""
    u = u.clone()
    rows = _rows(u.shape[0], u.dtype)
    columns = _columns(u.shape[1], u.dtype)
    kernels.forward(u, base, rows, clamp=True, band_width=band_width, eps=1e-5, columns=columns, row0=row0,
                    write_a=write_a)  # fmt: skip
    return u, rows, columns


def _tol(dtype):
    return 1e-6 if dtype == torch.float32 else 1e-14


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_eager(dtype, threads):
    u, base = _strip(dtype)
    _, want, want_cols = _forward(EAGER, u, base)
    _, got, got_cols = _forward(_native(), u, base)
    for name in ("umax", "argmin", "scale", "clamped"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.argmin[3] == 17
    assert bool(got.clamped[7]) and int(got.clamped.sum()) == 1
    torch.testing.assert_close(got.log_norm, want.log_norm, rtol=_tol(dtype), atol=_tol(dtype))
    torch.testing.assert_close(got_cols.best, want_cols.best, rtol=_tol(dtype), atol=_tol(dtype))
    assert torch.equal(got_cols.index, want_cols.index)
    assert int((got_cols.index == 100 + u.shape[0] - 2).sum()) == 0  # the duplicated later row never wins
    assert torch.equal(got_cols.best[:10] == 0.0, want_cols.best[:10] == 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_writes_log_cx_for_the_released_mixture(dtype, threads):
    u, base = _strip(dtype, seed=1)
    want, _, _ = _forward(EAGER, u, base, write_a=True)
    got, _, columns = _forward(_native(), u, base, write_a=True)
    torch.testing.assert_close(got, want, rtol=_tol(dtype), atol=_tol(dtype))
    assert torch.equal(columns.best, _columns(u.shape[1], dtype).best)  # write_a: no column update


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflowing_rows_match_eager(dtype, threads):
    # A small band width on well-separated affinities: most exp(t) underflow (t below the limit).
    u, base = _strip(dtype, seed=3)
    band_width = 1e-4 if dtype == torch.float32 else 1e-5
    _, want, want_cols = _forward(EAGER, u, base, band_width=band_width, row0=0)
    _, got, got_cols = _forward(_native(), u, base, band_width=band_width, row0=0)
    assert float(((u.max(dim=1, keepdim=True).values - u) * want.scale.unsqueeze(1)).max()) > 1e3
    torch.testing.assert_close(got.log_norm, want.log_norm, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(got_cols.best, want_cols.best, rtol=1e-6, atol=0.0)
    assert torch.equal(got_cols.index, want_cols.index)


def _backward_case(dtype: torch.dtype, seed: int = 4):
    """A recomputed strip (a subset of a forward strip's rows) with its statistics and best-match entries."""
    u, base = _strip(dtype, seed=seed)
    a, rows, _ = _forward(EAGER, u, base, row0=0, write_a=True)
    strip = torch.cat((torch.tensor([0, 3, 5, 7, 8, 20, 36]), torch.arange(40, 150)))  # any subset of rows
    stats = RowStats(*(t[strip] for t in (rows.umax, rows.argmin, rows.scale, rows.log_norm, rows.clamped)))
    gen = torch.Generator().manual_seed(seed)
    gamma_base = torch.rand(strip.numel(), generator=gen, dtype=dtype) - 2.0
    # Best-match entries, sorted by row: several in row 0, one at row 4's k(i) (value, then + gamma).
    entry_rows = torch.tensor([0, 0, 0, 2, 4, 6, 60, 116])
    entry_cols = torch.tensor([1, 50, 599, 9, int(stats.argmin[4]), 120, 7, 300])
    values = torch.rand(entry_rows.numel(), generator=gen, dtype=dtype) - 0.5
    kwargs = {"gamma_base": gamma_base, "band_width": 0.4, "argmax_rows": entry_rows, "argmax_cols": entry_cols,
              "argmax_values": values}  # fmt: skip
    return u[strip], a[strip], stats, kwargs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_matches_eager(dtype, threads):
    u, a, stats, kwargs = _backward_case(dtype)
    want, got = u.clone(), u.clone()
    EAGER.backward(want, stats, **kwargs)
    _native().backward(got, stats, **kwargs)
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * 1e-3)
    # Away from the best-match entries and k(i), G is the forward's CX (below the underflow limit: 0).
    local = torch.arange(u.shape[0])
    plain = torch.ones_like(u, dtype=torch.bool)
    plain[kwargs["argmax_rows"], kwargs["argmax_cols"]] = False
    plain[local, stats.argmin] = False
    torch.testing.assert_close(got[plain], a.exp()[plain], rtol=rtol, atol=2 * torch.finfo(dtype).tiny)
    assert torch.equal(got[kwargs["argmax_rows"][:4], kwargs["argmax_cols"][:4]], kwargs["argmax_values"][:4])
    # Row 3 of the strip is the clamped row 7: no gamma there, exp(-L) at k(i).
    assert bool(stats.clamped[3])
    torch.testing.assert_close(got[3, stats.argmin[3]], torch.exp(-stats.log_norm[3]), rtol=rtol, atol=0.0)
    # Strip row 1 (row 3) has two exact maxima with m = 0 (s = 1 / (h eps)): both CX are exactly 1/2.
    assert float(got[1, 200]) == 0.5


def test_backward_rejects_unsorted_entries():
    u, _, stats, kwargs = _backward_case(torch.float32)
    kwargs["argmax_rows"] = kwargs["argmax_rows"].flip(0)
    with pytest.raises(ValueError, match="non-decreasing"):
        _native().backward(u.clone(), stats, **kwargs)


def test_kernels_reject_buffers_of_another_dtype():
    u, base = _strip(torch.float32)
    rows = _rows(u.shape[0], torch.float64)
    with pytest.raises(ValueError, match="float32"):
        _native().forward(u, base, rows, clamp=True, band_width=0.4, eps=1e-5, columns=None, row0=0, write_a=True)
    with pytest.raises(ValueError, match="float32 or float64"):
        _native().forward(u.half(), base, rows, clamp=True, band_width=0.4, eps=1e-5, columns=None, row0=0,
                          write_a=True)  # fmt: skip


def _at_thread_counts(fn, counts=(1, 2, 3)):
    before = torch.get_num_threads()
    try:
        results = []
        for count in counts:
            torch.set_num_threads(count)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(before)


def test_kernels_are_bit_identical_across_thread_counts():
    # The kernels' own claim (docs/engine.md): each row by one thread, row sums in a fixed order,
    # column maxima merged with ties to the smallest row. Forward and backward.
    kernels = _native()
    u, base = _strip(torch.float32, rows=256, m=1000, seed=2)  # up to 7 threads' worth of work

    def forward():
        _, rows, columns = _forward(kernels, u, base, row0=0)
        return (columns.best, columns.index, rows.umax, rows.argmin, rows.scale, rows.log_norm, rows.clamped)

    def backward():
        v, _, stats, kwargs = _backward_case(torch.float32, seed=5)
        kernels.backward(v, stats, **kwargs)
        return (v,)

    for fn in (forward, backward):
        results = _at_thread_counts(fn)
        for other in results[1:]:
            for got, want in zip(other, results[0], strict=True):
                assert torch.equal(got, want)


@pytest.mark.skipif(platform.system() != "Linux" or not HAS_COMPILER, reason="needs Linux and a C compiler")
def test_kernels_build_where_a_compiler_exists(monkeypatch):
    # CI has a compiler: a broken build must fail here, not silently fall back to the slow path.
    monkeypatch.delenv("CONTEXTUAL_LOSS_NATIVE", raising=False)
    assert native.availability(torch.device("cpu"), torch.float32) is None, native.library_status()
    assert native.library_status().startswith("in use")


def test_native_kernels_only_for_cpu_float32_and_float64():
    assert "float32 or float64" in native.availability(torch.device("cpu"), torch.float16)
    assert "CPU tensors only" in native.availability(torch.device("meta"), torch.float32)
    assert "CPU tensors only" in native.availability(torch.device("cuda"), torch.float32)
