"""The fused C strip kernels against the eager passes they replace, and their build and fallback.

The end-to-end comparisons with the dense reference run on both paths in test_streaming.py; here
each kernel is checked directly on strips with exact ties, clamped rows, underflow and offsets.
"""

from __future__ import annotations

import math
import platform
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from contextual_loss.engine import native, streaming
from contextual_loss.engine.strips import underflow_limit

FIELDS = ("umax", "argmin", "scale", "log_norm", "clamped")
HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))


def _kernels(dtype: torch.dtype) -> native.StripKernels:
    kernels = native.kernels_for(torch.zeros(1, dtype=dtype))
    if kernels is None:
        pytest.skip(f"native strip kernels unavailable: {native.status()}")
    return kernels


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _strip(dtype: torch.dtype, rows: int = 37, m: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-like affinities with exact ties: duplicated columns (row maxima) and rows (column maxima)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(rows, m, generator=gen, dtype=dtype) * 2 - 1
    u[:, 200] = u[:, 17]  # every row's value at 17 repeats at 200
    u[3, 17] = u[3, 200] = 1.0  # row 3: its maximum twice, the first at 17
    u[rows - 2] = u[1]  # rows in different threads' halves tie in every column: the first must win
    u[5] = u[4]
    base = torch.ones(rows, dtype=dtype)
    base[7] = 0.5  # m_i = 0.5 - max u < 0: clamped to 0
    return u, base


def _eager_forward(u, base, best, index, row0, band_width=0.4):
    work = torch.empty_like(u)
    floor = torch.full_like(base, -1.0 - 1e-3)
    stats = streaming._log_softmax_rows(u, work, base, floor, True, band_width, 1e-5, True)
    streaming._update_columns(u, row0, best, index)
    return stats


def _native_forward(kernels, u, base, best, index, row0, band_width=0.4, write_a=False):
    n = u.shape[0]
    out = {name: torch.empty(n, dtype=torch.long if name == "argmin" else torch.bool if name == "clamped" else u.dtype)
           for name in FIELDS}  # fmt: skip
    kernels.forward(u, base, True, band_width, 1e-5, underflow_limit(u.dtype), out, write_a=write_a, best=best,
                    index=index, row0=row0)  # fmt: skip
    return out


def _start_columns(m: int, dtype: torch.dtype):
    # Columns from earlier strips: some hold a larger best (kept), one an exactly equal value (kept:
    # strictly greater across strips).
    best = torch.full((m,), -math.inf, dtype=dtype)
    best[:10] = 0.0
    index = torch.full((m,), 5, dtype=torch.long)
    return best, index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_kernel_matches_eager_passes(dtype, threads):
    kernels = _kernels(dtype)
    u, base = _strip(dtype)
    want_best, want_index = _start_columns(u.shape[1], dtype)
    got_best, got_index = want_best.clone(), want_index.clone()
    u_eager = u.clone()
    want = _eager_forward(u_eager, base, want_best, want_index, row0=100)
    got = _native_forward(kernels, u.clone(), base, got_best, got_index, row0=100)
    for name in ("umax", "argmin", "scale", "clamped"):
        assert torch.equal(got[name], want[name]), name
    assert got["argmin"][3] == 17
    assert bool(got["clamped"][7]) and int(got["clamped"].sum()) == 1
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(got["log_norm"], want["log_norm"], rtol=rtol, atol=rtol)
    torch.testing.assert_close(got_best, want_best, rtol=rtol, atol=rtol)
    assert torch.equal(got_index, want_index)
    assert int((got_index == 100 + u.shape[0] - 2).sum()) == 0  # the duplicated later row never wins
    assert torch.equal(got_best[:10] == 0.0, want_best[:10] == 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_kernel_writes_log_cx_for_the_released_mixture(dtype, threads):
    kernels = _kernels(dtype)
    u, base = _strip(dtype, seed=1)
    a_eager = u.clone()
    _eager_forward(a_eager, base, *_start_columns(u.shape[1], dtype), row0=0)
    a_native = u.clone()
    best, index = _start_columns(u.shape[1], dtype)
    _native_forward(kernels, a_native, base, best, index, row0=0, write_a=True)
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(a_native, a_eager, rtol=rtol, atol=rtol)
    assert torch.equal(best, _start_columns(u.shape[1], dtype)[0])  # write_a: no column update


def test_forward_kernel_is_bit_identical_across_thread_counts():
    kernels = _kernels(torch.float32)
    u, base = _strip(torch.float32, rows=64, m=1000, seed=2)
    results = []
    before = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            best, index = _start_columns(u.shape[1], torch.float32)
            stats = _native_forward(kernels, u.clone(), base, best, index, row0=0)
            results.append((best, index, *stats.values()))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflowing_rows_match_eager(dtype, threads):
    # A small band width on well-separated affinities: most exp(t) underflow (t below the limit).
    kernels = _kernels(dtype)
    u, base = _strip(dtype, seed=3)
    band_width = 1e-4 if dtype == torch.float32 else 1e-5
    want_best, want_index = _start_columns(u.shape[1], dtype)
    got_best, got_index = want_best.clone(), want_index.clone()
    want = _eager_forward(u.clone(), base, want_best, want_index, 0, band_width)
    got = _native_forward(kernels, u.clone(), base, got_best, got_index, 0, band_width)
    assert float(((u.max(dim=1, keepdim=True).values - u) * want["scale"].unsqueeze(1)).max()) > 1e3
    torch.testing.assert_close(got["log_norm"], want["log_norm"], rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(got_best, want_best, rtol=1e-6, atol=0.0)
    assert torch.equal(got_index, want_index)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_kernel_matches_eager_passes(dtype, threads):
    kernels = _kernels(dtype)
    u, base = _strip(dtype, seed=4)
    forward = u.clone()
    row = streaming._Stats(best=torch.zeros(0), index=torch.zeros(0, dtype=torch.long))
    for name, value in _eager_forward(forward, base, *_start_columns(u.shape[1], dtype), row0=0).items():
        setattr(row, name, value)
    strip = torch.tensor([0, 3, 5, 7, 8, 20, 36])  # rows recomputed in the backward: any subset
    local = torch.arange(strip.numel())
    floor = torch.full((strip.numel(),), -1.0 - 1e-3, dtype=dtype)
    stats = (row.umax[strip], row.scale[strip], row.argmin[strip], row.log_norm[strip])
    p_eager, h_eager = streaming._probabilities_and_entropy(
        u[strip], torch.empty(strip.numel(), u.shape[1], dtype=dtype), stats, local, floor
    )
    p_native = u[strip]
    h_native = kernels.backward(p_native, *stats, underflow_limit(dtype))
    rtol = 2e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(p_native, p_eager, rtol=rtol, atol=rtol * 1e-3)
    torch.testing.assert_close(h_native, h_eager, rtol=rtol, atol=rtol)
    # p is the forward's CX (below the underflow limit: 0), exp(-L) at k(i).
    torch.testing.assert_close(p_native, forward[strip].exp(), rtol=rtol, atol=2 * torch.finfo(dtype).tiny)
    at_k = p_native[local, row.argmin[strip]]
    torch.testing.assert_close(at_k, torch.exp(-row.log_norm[strip]), rtol=rtol, atol=0.0)
    # Row 3 has two exact maxima with m = 0 (s = 1 / (h eps)): both entries are exactly 1/2.
    assert float(p_native[1, 17]) == float(p_native[1, 200]) == 0.5


def test_kernels_only_for_cpu_float32_and_float64():
    assert native.kernels_for(torch.zeros(1, dtype=torch.float16)) is None
    assert native.kernels_for(torch.zeros(1, dtype=torch.bfloat16)) is None
    assert native.kernels_for(torch.zeros(1, device="meta")) is None


def test_disabled_block_uses_the_eager_passes():
    with native.disabled():
        assert native.kernels_for(torch.zeros(1)) is None
        assert "disabled" in native.status()
    assert native.kernels_for(torch.zeros(1)) is not None or not HAS_COMPILER


@pytest.mark.skipif(platform.system() != "Linux" or not HAS_COMPILER, reason="needs Linux and a C compiler")
def test_kernels_build_where_a_compiler_exists():
    # CI has a compiler: a broken build must fail here, not silently fall back to the slow path.
    assert native.kernels_for(torch.zeros(1)) is not None, native.status()
    assert native.status().startswith("in use")


@pytest.mark.skipif(platform.system() != "Linux" or not HAS_COMPILER, reason="needs Linux and a C compiler")
def test_build_is_cached_per_source_compiler_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTEXTUAL_LOSS_CACHE_DIR", str(tmp_path))
    lib, message = native._load()
    assert lib is not None, message
    built = list(tmp_path.glob("strip_kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    lib, _ = native._load()
    assert lib is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [built[0].name]  # no temporary files left


@pytest.mark.skipif(shutil.which("false") is None, reason="needs the 'false' command")
def test_failed_build_falls_back_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTEXTUAL_LOSS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    lib, message = native._load()
    assert lib is None
    assert message.startswith("compiling with false failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "off"])
def test_environment_can_disable_the_kernels(value, monkeypatch):
    monkeypatch.setenv("CONTEXTUAL_LOSS_NATIVE", value)
    assert native._load() == (None, "disabled by CONTEXTUAL_LOSS_NATIVE")


def test_missing_compiler_is_reported(monkeypatch):
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert native._load() == (None, "no C compiler found (set CC)")


def test_unwritable_user_cache_falls_back_to_a_temp_directory(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory would go")
    monkeypatch.delenv("CONTEXTUAL_LOSS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert native._cache_dir().parent == Path(tempfile.gettempdir())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native._cache_dir() == tmp_path / "contextual-loss"
    monkeypatch.setenv("CONTEXTUAL_LOSS_CACHE_DIR", str(tmp_path / "explicit"))
    assert native._cache_dir() == tmp_path / "explicit"
