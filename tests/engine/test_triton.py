"""The Triton strip kernels under Triton's CPU interpreter, against the eager reference and the dense engine.

``TRITON_INTERPRET=1`` must be set before the process imports Triton (``triton.language``'s own
functions, ``tl.max``, ``tl.sum``..., are wrapped by ``triton.jit`` at import). A pytest run
normally imports Triton long before this module, without the variable: then the kernel tests
here are skipped in that process and :func:`test_kernels_in_an_interpreter_process` runs this
file again in a child process started with ``TRITON_INTERPRET=1``, which runs them (and fails
with the child's report if any fails). Started with the variable set, a run executes them
directly. Problems stay small (N, M <= 64): the interpreter runs every program in Python, and the
shrunken tilings make them span several row blocks, column blocks and row groups all the same.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.engine.kernel_harness import stream_image
from tests.engine.test_kernel_interface import _dense

from contextual_loss import maths
from contextual_loss.engine.kernels import triton as triton_kernels
from contextual_loss.engine.kernels.base import ColumnMax, Deferral, RowStats
from contextual_loss.engine.kernels.eager import EagerKernels
from contextual_loss.engine.kernels.triton import TritonKernels, availability
from contextual_loss.engine.streaming._forward import row_stats
from contextual_loss.engine.strips import block_max

ROOT = Path(__file__).resolve().parents[2]
CHILD = "CONTEXTUAL_LOSS_TRITON_TEST_CHILD"  # set in the child process that runs the kernel tests

#: Tilings under test: the GPU defaults (one block covers these small strips) and a shrunken one
#: (16-column blocks, 4-row blocks, 3 row groups in the column pass).
TILINGS = {
    "default": {},
    "small": {"max_block_cols": 16, "tile": 64, "column_width": 16, "groups": 3},
}
TOLERANCE = {torch.float32: {"rtol": 2e-6, "atol": 1e-6}, torch.float64: {"rtol": 1e-13, "atol": 1e-14}}


def _interpreter_reason() -> str | None:
    """None when the kernels run here under the interpreter; else why not (with TRITON_INTERPRET=1 set)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        return availability("cpu")


@pytest.fixture
def interpreted(monkeypatch):
    """Run the kernels under Triton's interpreter on CPU tensors, or skip saying where they run."""
    reason = _interpreter_reason()
    if reason is not None:
        if triton_kernels.triton is None or os.environ.get(CHILD):
            pytest.skip(f"Triton kernels unavailable: {reason}")
        pytest.skip("run in a TRITON_INTERPRET=1 child process by test_kernels_in_an_interpreter_process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _stats(n: int, dtype: torch.dtype) -> RowStats:
    return row_stats(n, torch.empty(0, dtype=dtype))


def _no_argmax(n: int, dtype: torch.dtype) -> dict:
    """Backward arguments with zero gamma_base and no best-match entries."""
    empty = torch.zeros(0, dtype=torch.long)
    return {
        "gamma_base": torch.zeros(n, dtype=dtype),
        "band_width": 0.3,
        "argmax_rows": empty,
        "argmax_cols": empty,
        "argmax_values": torch.zeros(0, dtype=dtype),
    }


def _columns(m: int, dtype: torch.dtype) -> ColumnMax:
    return ColumnMax(best=torch.full((m,), -math.inf, dtype=dtype), index=torch.zeros(m, dtype=torch.long))


def _strip_with_ties(
    n: int, m: int, dtype: torch.dtype, seed: int, *, clamped_row: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affinities with planted ties, and bases that clamp one row.

    Row maxima repeated in a later column block, a row repeated in a later row block and row
    group (so whole columns of a tie), a constant row, and (``clamped_row``) one base below its
    row maximum, as the GEMM form of cosine and L2 can round.
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, m, dtype=torch.float64, generator=gen).to(dtype)
    if m > 20:
        u[:, 20] = u.amax(dim=1)  # a second column attaining each row's maximum (first: earlier)
    if n > 1:
        u[n - 1] = u[0]  # identical rows: every column's a ties between rows 0 and n - 1
    if n > 2:
        u[1] = 0.25  # a constant row: k(i) = 0, every t = 0
    base = u.amax(dim=1) + torch.rand(n, dtype=torch.float64, generator=gen).to(dtype)
    if clamped_row:
        base[n // 2] = u[n // 2].amax() - 1e-3  # m_i < 0: clamped
    base[n - 1] = base[0]  # (rows 0 and n - 1 equal in a too)
    return u, base


def _forward(kernels, u, base, *, columns, clamp=True, write_a=False, row0=0, stats=None):
    stats = _stats(u.shape[0], u.dtype) if stats is None else stats
    u = u.clone()
    kernels.forward(u, base, stats, clamp=clamp, band_width=0.3, eps=1e-5, columns=columns, row0=row0, write_a=write_a)
    return u, stats


def _assert_stats_equal(got: RowStats, want: RowStats, dtype: torch.dtype) -> None:
    assert torch.equal(got.umax, want.umax)
    assert torch.equal(got.argmin, want.argmin)
    assert torch.equal(got.scale, want.scale)  # same operations, IEEE division
    assert torch.equal(got.clamped, want.clamped)
    torch.testing.assert_close(got.log_norm, want.log_norm, **TOLERANCE[dtype])  # sums in another order


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tiling", sorted(TILINGS))
@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 37), (37, 1), (13, 37), (40, 64)])
def test_forward_matches_eager(interpreted, dtype, tiling, n, m):
    u, base = _strip_with_ties(n, m, dtype, seed=n * 100 + m)
    want_cols, got_cols = _columns(m, dtype), _columns(m, dtype)
    _, want = _forward(EagerKernels(), u, base, columns=want_cols, row0=5)
    _, got = _forward(TritonKernels(**TILINGS[tiling]), u, base, columns=got_cols, row0=5)
    _assert_stats_equal(got, want, dtype)
    torch.testing.assert_close(got_cols.best, want_cols.best, **TOLERANCE[dtype])
    assert torch.equal(got_cols.index, want_cols.index)
    if n > 1:  # rows 0 and n - 1 are equal: the later one never wins a column
        assert not bool((got_cols.index == 5 + n - 1).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_ties_across_strips_keep_the_first_strip(interpreted, dtype):
    """A later strip equal to an earlier one changes nothing (strictly greater replaces)."""
    u, base = _strip_with_ties(9, 23, dtype, seed=3)
    kernels = TritonKernels(**TILINGS["small"])
    columns = _columns(23, dtype)
    _forward(kernels, u, base, columns=columns, row0=0)
    best, index = columns.best.clone(), columns.index.clone()
    _forward(kernels, u, base, columns=columns, row0=9)  # the same strip again, later rows
    assert torch.equal(columns.best, best)
    assert torch.equal(columns.index, index)
    bigger = u.clone()
    bigger[4, 7] = bigger[4].amax() + 1.0  # a new row maximum: a = 0 there, above every other entry
    _forward(kernels, bigger, base, columns=columns, row0=18)
    assert columns.index[7] == 22


@pytest.mark.parametrize("tiling", sorted(TILINGS))
def test_forward_ties_go_to_the_first_row_when_the_later_strip_comes_first(interpreted, tiling):
    """Equal values: the smaller global row wins even when processed second (deferred rows are), on both merges."""
    u, base = _strip_with_ties(9, 23, torch.float64, seed=4)
    kernels = TritonKernels(**TILINGS[tiling])  # "default": one row group (direct update); "small": 3 merged
    columns = _columns(23, torch.float64)
    _forward(kernels, u, base, columns=columns, row0=9)  # the later copy of the strip first
    _forward(kernels, u, base, columns=columns, row0=0)
    want = _columns(23, torch.float64)
    _forward(kernels, u, base, columns=want, row0=0)
    assert torch.equal(columns.best, want.best)
    assert torch.equal(columns.index, want.index)


def test_deferral_then_only_matches_one_whole_call(interpreted):
    """StripKernels.forward's defer/only contract on the Triton kernels (the shared gather path)."""
    u, base = _strip_with_ties(13, 70, torch.float32, seed=8)
    kernels = TritonKernels(**TILINGS["small"])
    want_cols = _columns(70, torch.float32)
    _, want = _forward(kernels, u, base, columns=want_cols, row0=3)
    floor = u.amax(dim=1).median().expand(13).contiguous()
    defer = Deferral(floor, torch.empty(13, dtype=torch.bool), torch.empty(13, 2))
    got, cols, strip = _stats(13, torch.float32), _columns(70, torch.float32), u.clone()
    options = {"clamp": True, "band_width": 0.3, "eps": 1e-5, "columns": cols, "row0": 3, "write_a": False}
    count = kernels.forward(strip, base, got, **options, defer=defer)
    assert count == int((u.amax(dim=1) > floor).sum()) > 0
    assert torch.equal(defer.block_max[defer.deferred], block_max(u)[defer.deferred])
    kernels.forward(strip, base, got, **options, only=defer.deferred)
    _assert_stats_equal(got, want, torch.float32)
    assert torch.equal(cols.best, want_cols.best)
    assert torch.equal(cols.index, want_cols.index)


def test_forward_result_does_not_depend_on_groups(interpreted):
    """Row groups only split the work: bit-identical columns and statistics whatever their number."""
    u, base = _strip_with_ties(40, 37, torch.float32, seed=11)
    results = []
    for groups in (None, 1, 2, 7):
        columns = _columns(37, torch.float32)
        _, stats = _forward(
            TritonKernels(max_block_cols=16, tile=64, column_width=16, groups=groups), u, base, columns=columns
        )
        results.append((columns.best, columns.index, stats.log_norm))
    for best, index, log_norm in results[1:]:
        assert torch.equal(best, results[0][0])
        assert torch.equal(index, results[0][1])
        assert torch.equal(log_norm, results[0][2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clamp", [True, False])
def test_forward_write_a_matches_eager(interpreted, dtype, clamp):
    u, base = _strip_with_ties(13, 37, dtype, seed=5, clamped_row=clamp)  # (without clamping, as for L1: m >= 0)
    columns = _columns(37, dtype)
    want_a, want = _forward(EagerKernels(), u, base, columns=None, clamp=clamp, write_a=True)
    got_a, got = _forward(TritonKernels(**TILINGS["small"]), u, base, columns=columns, clamp=clamp, write_a=True)
    _assert_stats_equal(got, want, dtype)
    torch.testing.assert_close(got_a, want_a, **TOLERANCE[dtype])
    assert bool(torch.isinf(columns.best).all())  # write_a leaves the columns alone
    assert bool(got.clamped.any()) == clamp


def test_forward_without_columns_or_clamped_flags(interpreted):
    u, base = _strip_with_ties(6, 19, torch.float64, seed=8)
    full = _stats(6, torch.float64)
    stats = RowStats(full.umax, full.argmin, full.scale, full.log_norm, clamped=None)
    got_u, got = _forward(TritonKernels(**TILINGS["small"]), u, base, columns=None, stats=stats)
    _, want = _forward(EagerKernels(), u, base, columns=None)
    assert torch.equal(got_u, u)  # u is only overwritten with write_a
    assert torch.equal(got.argmin, want.argmin)
    torch.testing.assert_close(got.log_norm, want.log_norm, **TOLERANCE[torch.float64])


def test_forward_writes_into_strided_statistics(interpreted):
    """Statistics given as strided views (a column of a table) are written through."""
    u, base = _strip_with_ties(7, 30, torch.float64, seed=9)
    table = torch.zeros(7, 3, dtype=torch.float64)
    stats = RowStats(table[:, 0], torch.empty(7, dtype=torch.long), table[:, 1], table[:, 2], None)
    _forward(TritonKernels(), u, base, columns=None, stats=stats)
    _, want = _forward(EagerKernels(), u, base, columns=None)
    assert torch.equal(table[:, 0], want.umax)
    torch.testing.assert_close(table[:, 2], want.log_norm, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflow_and_one_hot_rows_are_exact(interpreted, dtype):
    """Entries far below the row maximum count exactly 0: z = 0 and L = 0 for one-hot rows."""
    u = torch.zeros(5, 40, dtype=dtype)
    u[:, 3] = 1.0
    u[2, 30] = 1.0 - 1e-9 if dtype == torch.float64 else 1.0 - 1e-6  # a near tie: not underflowing
    base = torch.full((5,), 1.0 + 1e-3, dtype=dtype)  # m = 1e-3: t = -1 / ((1e-3 + eps) h) well below -700
    columns = _columns(40, dtype)
    _, stats = _forward(TritonKernels(**TILINGS["small"]), u, base, columns=columns)
    assert torch.equal(stats.argmin, torch.full((5,), 3))
    assert stats.log_norm[[0, 1, 3, 4]].eq(0.0).all()
    assert stats.log_norm[2] > 0
    p_want = u.clone()
    p_got = u.clone()
    _, want = _forward(EagerKernels(), u, base, columns=None)
    args = _no_argmax(5, dtype)
    EagerKernels().backward(p_want, want, **args)
    TritonKernels(**TILINGS["small"]).backward(p_got, stats, **args)
    assert torch.equal(p_got == 0, p_want == 0)  # the same entries underflow to exactly 0
    torch.testing.assert_close(p_got, p_want, **TOLERANCE[dtype])


# ----------------------------------------------------------------------------- backward


def _argmax_entries(stats: RowStats, n: int, m: int, dtype: torch.dtype, gen: torch.Generator):
    """Each column owned by a random row (one column lands on its row's k(i)), as the engine passes them."""
    owner = torch.randint(0, n, (m,), generator=gen)
    owner[int(stats.argmin[0])] = 0  # an argmax entry on (0, k(0)): value + gamma there
    cols = torch.arange(m)
    order = torch.argsort(owner, stable=True)
    values = torch.randn(m, dtype=torch.float64, generator=gen).to(dtype)
    return owner[order], cols[order], values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tiling", sorted(TILINGS))
@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 37), (37, 1), (13, 37), (40, 64)])
def test_backward_matches_eager(interpreted, dtype, tiling, n, m):
    u, base = _strip_with_ties(n, m, dtype, seed=7 * n + m)
    _, stats = _forward(EagerKernels(), u, base, columns=None)
    gen = torch.Generator().manual_seed(n + m)
    rows, cols, values = _argmax_entries(stats, n, m, dtype, gen)
    args = {
        "gamma_base": torch.randn(n, dtype=torch.float64, generator=gen).to(dtype),
        "band_width": 0.3,
        "argmax_rows": rows,
        "argmax_cols": cols,
        "argmax_values": values,
    }
    want, got = u.clone(), u.clone()
    EagerKernels().backward(want, stats, **args)
    TritonKernels(**TILINGS[tiling]).backward(got, stats, **args)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    assert torch.equal(got[rows, cols], torch.where(cols == stats.argmin[rows], got[rows, cols], values))


# ----------------------------------------------------------------------------- the streaming pass vs dense


@pytest.mark.parametrize("loss_type", ["cosine", "l2", "l1"])
@pytest.mark.parametrize(("n", "m"), [(30, 23), (1, 9), (9, 1), (16, 16)])
def test_streaming_pass_matches_dense_engine(interpreted, loss_type, n, m):
    """kernel_harness's single-image streaming pass with the Triton kernels: values, matches, gradients."""
    gen = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(1, n, 5, dtype=torch.float64, generator=gen)
    y = torch.randn(1, m, 5, dtype=torch.float64, generator=gen)
    x[0, 3 % n] = y[0, 0]  # an exact duplicate: a row whose minimum distance is 0
    if n > 20:
        x[0, 17] = x[0, 2]  # the same row in two strips: every column ties across strips
    x, y = maths.prepare_features(x, y, loss_type)
    got = stream_image(TritonKernels(**TILINGS["small"]), x[0], y[0], loss_type=loss_type, band_width=0.3, rows=4)
    want = _dense(x, y, loss_type, 0.3)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[3], want[3], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(got[4], want[4], rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------- compiled for CUDA (no GPU needed)

#: Each kernel's compile-time constants for the compile check (a typical launch of each).
CONSTEXPRS = {
    "row_stats": {"CLAMP": True, "WANT_CLAMPED": True, "BLOCK_R": 1, "BLOCK_N": 4096},
    "write_a": {"BLOCK_R": 4, "BLOCK_N": 1024},
    "column_partial": {"DIRECT": False, "BLOCK_RC": 32, "BLOCK_M": 128},
    "column_merge": {"BLOCK_M": 1024},
    "backward_rows": {"HAS_CLAMPED": True, "BLOCK_R": 1, "BLOCK_N": 4096},
    "backward_argmax": {"BLOCK_Q": 1024},
}


def _argument_type(name: str, f64: bool) -> str:
    """Triton's type of a kernel argument, from the naming convention of the kernels."""
    if name in ("argmin_ptr", "index_ptr", "rows_ptr", "cols_ptr"):
        return "*i64"
    if name == "part_row_ptr":
        return "*i32"
    if name == "clamped_ptr":
        return "*u8"
    if name.endswith("_ptr"):
        return "*fp64" if f64 else "*fp32"
    if name.endswith("_bits"):
        return "i64" if f64 else "i32"
    return "i32"


@pytest.mark.parametrize("f64", [False, True], ids=["float32", "float64"])
def test_kernels_compile_for_cuda(f64):
    """Triton's compiler (front end, LLVM, ptxas) accepts every kernel for an sm_90 GPU, with no GPU here."""
    if triton_kernels.triton is None:
        pytest.skip(f"Triton kernels unavailable: {availability('cpu')}")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("triton.jit gives interpreted kernels in this process")
    triton = triton_kernels.triton
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # internal API of this Triton version
        pytest.skip(f"this Triton has no ASTSource/GPUTarget: {exc}")
    names = ("row_stats", "backward_rows") if f64 else tuple(CONSTEXPRS)
    for name in names:
        fn = triton.jit(triton_kernels._SOURCES[name])
        constants = dict(CONSTEXPRS[name], **({"F64": f64} if "F64" in fn.arg_names else {}))
        signature = {arg: "constexpr" if arg in constants else _argument_type(arg, f64) for arg in fn.arg_names}
        source = ASTSource(fn=fn, signature=signature, constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        if name == "row_stats" and not f64:  # the scale's IEEE division survived the fast-math lowering
            assert "div.rn.f32" in compiled.asm["ptx"]


# ----------------------------------------------------------------------------- errors and availability


def test_bad_strips_raise_clear_errors(interpreted):
    kernels = TritonKernels()
    u = torch.randn(4, 6)
    stats = _stats(4, torch.float32)
    common = {"clamp": True, "band_width": 0.3, "eps": 1e-5, "columns": None, "row0": 0, "write_a": False}
    with pytest.raises(ValueError, match="contiguous"):
        kernels.forward(u.t(), torch.ones(6), _stats(6, torch.float32), **common)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.forward(u.half(), torch.ones(4).half(), stats, **common)
    with pytest.raises(ValueError, match="base must have shape"):
        kernels.forward(u, torch.ones(5), stats, **common)
    with pytest.raises(TypeError, match="columns must be"):
        kernels.forward(u, torch.ones(4), stats, **{**common, "columns": _columns(6, torch.float64)})
    for bad in ({"tile": 100}, {"max_block_cols": 0}, {"groups": 0}):
        with pytest.raises(ValueError, match="must be"):
            TritonKernels(**bad)


def test_availability_reasons(monkeypatch):
    if triton_kernels.triton is None:
        pytest.skip(f"Triton kernels unavailable: {availability('cpu')}")
    assert TritonKernels.name == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "float16" in availability("cpu", torch.float16)
    assert "not meta" in availability("meta")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in availability("cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        TritonKernels().forward(
            torch.zeros(2, 3),
            torch.ones(2),
            _stats(2, torch.float32),
            clamp=True,
            band_width=0.3,
            eps=1e-5,
            columns=None,
            row0=0,
            write_a=False,
        )


def test_availability_when_the_interpreter_is_asked_for_too_late(monkeypatch):
    """TRITON_INTERPRET=1 set after Triton's import cannot work: availability says so."""
    if triton_kernels.triton is None:
        pytest.skip(f"Triton kernels unavailable: {availability('cpu')}")
    if _interpreter_reason() is None:
        pytest.skip("this process imported Triton with TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: Triton was imported without it
    assert "set after Triton was imported" in availability("cpu")
    assert "set after Triton was imported" in availability("cuda") or not torch.cuda.is_available()


def test_module_imports_without_triton(monkeypatch):
    """No Triton: the module still imports, and says why the kernels are unavailable."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_triton_kernels_without_triton", triton_kernels.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.triton is None
    for device in ("cpu", "cuda"):
        assert module.availability(device).startswith("Triton is not installed")
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        module.TritonKernels().backward(torch.zeros(1, 1), _stats(1, torch.float32), **_no_argmax(1, torch.float32))


# ----------------------------------------------------------------------------- the GPU check script


def _child_env() -> dict[str, str]:
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD: "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def test_kernels_in_an_interpreter_process():
    """Run this file's kernel tests in a child process started with TRITON_INTERPRET=1 (see the module docstring)."""
    if os.environ.get(CHILD) or _interpreter_reason() is None:
        pytest.skip("the kernel tests run in this process")
    if triton_kernels.triton is None:
        pytest.skip(f"Triton kernels unavailable: {availability('cpu')}")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "error::RuntimeWarning",
               __file__]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=900, cwd=ROOT)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert " passed" in report, report
    assert "unavailable" not in report, report  # the kernel tests ran in the child, none skipped for want of Triton


#: The streaming engine's own agreement tests (values, gradients and matches against the dense engine,
#: every distance and CoBi form) on the Triton kernels: a small selection, the interpreter is slow.
STREAMING_SELECTION = (
    "triton and (test_matches_dense_float64 and image or test_match_agrees_with_dense or test_float32_exact_duplicates)"
)


def test_streaming_engine_on_triton_in_an_interpreter_process():
    """The streaming engine end to end on the Triton kernels, in a TRITON_INTERPRET=1 child process."""
    if os.environ.get(CHILD):
        pytest.skip("run by the parent process")
    if triton_kernels.triton is None:
        pytest.skip(f"Triton kernels unavailable: {availability('cpu')}")
    test_file = str(ROOT / "tests" / "engine" / "test_streaming.py")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        test_file,
        "-k",
        STREAMING_SELECTION,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=900, cwd=ROOT)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert "22 passed" in report, report  # every selected test ran on the Triton kernels, none skipped


def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.py end to end on tiny CPU problems under the interpreter (what CI can run)."""
    if os.environ.get(CHILD):
        pytest.skip("run by the parent process")
    if triton_kernels.triton is None:
        pytest.skip(f"Triton kernels unavailable: {availability('cpu')}")
    out = tmp_path / "gpu_check.md"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--output", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = out.read_text()
    assert "exactness" in table.lower()
    assert "FAIL" not in table
    for engine in ("dense", "streaming-eager", "streaming-triton"):
        assert f"| {engine} |" in table
