"""Triton strip kernels: the streaming engine's per-strip work in a few fused passes, for CUDA.

:class:`TritonKernels` implements :class:`~contextual_loss.engine.kernels.base.StripKernels` (the
maths is in that module) with six Triton kernels, two or three launched per strip in each pass;
the engine's GEMM (cuBLAS, or ``cdist`` for L1) still writes the affinities u of the strip to
memory first. The design and what is tested where are in ``docs/gpu.md``.

Forward, ``u`` (R, M) read three times instead of the eager path's ten or so passes:

1. **Row pass** (:func:`_row_stats_kernel`, one program per ``BLOCK_R`` rows, looping over the
   row in ``BLOCK_N``-column blocks): the row maximum with its first column (a running maximum
   that only a *strictly* greater block maximum replaces, each block's first index found with a
   ``min`` over the columns attaining it), the scale s_i, then a second sweep summing
   exp(t) with the exact 1 at k(i) and the arguments below the underflow limit left out. The row
   maximum cannot be folded into the sum online (flash-attention style rescaling): the scale
   s_i itself depends on the maximum, so the exponent's slope changes with it. Per-lane partial
   sums are kept in a tile and reduced once at the end. The row's sum z goes to ``log_norm`` and
   ``log1p`` is then taken by PyTorch (one tiny op on R numbers), so L is bit-identical to the
   eager reference's given the same z (Triton's core language has no ``log1p``, and log(1 + z)
   would lose tiny sums).
2. Either **write a** (:func:`_write_a_kernel`, 2-D tiles): u := (u - umax) s - L; or the
   **column pass** (:func:`_column_partial_kernel`, a grid of column blocks x row groups): each
   program reduces its rows of a ``BLOCK_M``-column block to the maximum of a and its first row
   (rows in increasing order, ``BLOCK_RC`` at a time, a tile's first row found with a ``min``,
   replaced only by strictly greater values). With one row group the program then updates
   ``columns`` directly; otherwise it writes its partial result to a (groups, M) scratch and
   :func:`_column_merge_kernel` merges the groups in order (strictly greater wins again) and
   updates ``columns`` where greater than ``best``, or equal with a smaller global row. No
   atomics: the result is the same whatever the scheduling, the tiling or the number of groups,
   and the first row overall wins ties, as in the eager reference and ``torch.max``.

Backward: :func:`_backward_rows_kernel` (one program per ``BLOCK_R`` rows) recomputes a with
a = -L at k(i), writes p = exp(a) over u (except at k(i)), accumulates the entropy, and writes
p + gamma at k(i) (and gamma to a scratch); :func:`_backward_argmax_kernel` then sets the
best-match entries (adding gamma where one falls on k(i)), exactly as the eager reference orders
these writes.

Scalars (h, eps, the underflow limit) are passed as the integer bits of the compute dtype and
bit-cast in the kernel: a Python float argument is always float32 in Triton, which would round
eps and h for float64 strips.

Kernels are compiled on first use (``triton.jit``), in the mode Triton's ``TRITON_INTERPRET``
asks for at that moment: with ``TRITON_INTERPRET=1`` they run under Triton's interpreter, also on
CPU tensors (slowly: for tests). The variable must be set before the process imports Triton
(whose own language functions are wrapped at import); :func:`availability` says when it was not.
Without Triton this module still imports; :func:`availability` then says why the kernels cannot
run.
"""

# (No ``from __future__ import annotations``: the kernels' ``tl.constexpr`` annotations must be
# objects, which Triton's interpreter requires to recognise compile-time arguments.)
import contextlib
import os
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from contextual_loss.engine.kernels._rows import WholeStripForward
from contextual_loss.engine.kernels.base import ColumnMax, RowStats
from contextual_loss.engine.strips import underflow_limit

try:  # Triton is optional: it ships with the CUDA builds of torch on Linux.
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # not installed
    triton = None
    tl = SimpleNamespace(constexpr=None)  # only for the kernels' annotations: they are never compiled then
    _IMPORT_ERROR = f"Triton is not installed ({exc})"
except Exception as exc:  # a broken install must not break the library
    triton = None
    tl = SimpleNamespace(constexpr=None)
    _IMPORT_ERROR = f"importing Triton failed: {type(exc).__name__}: {exc}"

__all__ = ["TritonKernels", "availability"]

#: The compute dtypes the kernels take (the engine computes float16/bfloat16 in float32).
SUPPORTED_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------- kernels
# Plain functions, compiled by triton.jit on first use (see _compiled). Offsets into a strip are
# int64 (R * M can exceed 2**31); column and row indices within a strip are int32.


def _row_stats_kernel(
    u_ptr,
    base_ptr,
    umax_ptr,
    argmin_ptr,
    scale_ptr,
    z_ptr,
    clamped_ptr,
    R,
    M,
    h_bits,
    eps_bits,
    low_bits,
    F64: tl.constexpr,
    CLAMP: tl.constexpr,
    WANT_CLAMPED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row max and first index, scale, and z = sum_{k != k(i), t >= low} exp(t) of BLOCK_R rows."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    start = rows.to(tl.int64) * M
    span = tl.arange(0, BLOCK_N)
    dtype = u_ptr.dtype.element_ty
    run_max = tl.full([BLOCK_R], float("-inf"), dtype)
    run_idx = tl.zeros([BLOCK_R], tl.int32)
    for c0 in range(0, M, BLOCK_N):
        cols = c0 + span
        ok = row_ok[:, None] & (cols < M)[None, :]
        x = tl.load(u_ptr + start[:, None] + cols[None, :], mask=ok, other=float("-inf"))
        block_max = tl.max(x, axis=1)
        block_idx = tl.min(tl.where(x == block_max[:, None], cols[None, :], M), axis=1)
        better = block_max > run_max  # strictly: an earlier block keeps its tie
        run_idx = tl.where(better, block_idx, run_idx)
        run_max = tl.where(better, block_max, run_max)
    run_max = tl.where(row_ok, run_max, 0.0)  # rows past R: finite values (no inf - inf below)
    if F64:  # the scalars' bit patterns (see the module docstring)
        h = h_bits.to(tl.int64).to(tl.float64, bitcast=True)
        eps = eps_bits.to(tl.int64).to(tl.float64, bitcast=True)
        low = low_bits.to(tl.int64).to(tl.float64, bitcast=True)
    else:
        h = h_bits.to(tl.int32).to(tl.float32, bitcast=True)
        eps = eps_bits.to(tl.int32).to(tl.float32, bitcast=True)
        low = low_bits.to(tl.int32).to(tl.float32, bitcast=True)
    base = tl.load(base_ptr + rows, mask=row_ok, other=0.0)
    m_raw = base - run_max
    m = tl.where(m_raw < 0.0, 0.0, m_raw) if CLAMP else m_raw
    denom = (m + eps) * h
    # float32: IEEE division (the default float32 division may be approximate on a GPU).
    scale = 1.0 / denom if F64 else tl.math.div_rn(tl.full([BLOCK_R], 1.0, dtype), denom)
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype)
    for c0 in range(0, M, BLOCK_N):
        cols = c0 + span
        ok = row_ok[:, None] & (cols < M)[None, :]
        x = tl.load(u_ptr + start[:, None] + cols[None, :], mask=ok, other=0.0)
        t = (x - run_max[:, None]) * scale[:, None]
        keep = ok & (t >= low) & (cols[None, :] != run_idx[:, None])
        acc += tl.where(keep, tl.exp(tl.where(keep, t, 0.0)), 0.0)  # (no exp of the padding's values)
    tl.store(umax_ptr + rows, run_max, mask=row_ok)
    tl.store(argmin_ptr + rows, run_idx.to(tl.int64), mask=row_ok)
    tl.store(scale_ptr + rows, scale, mask=row_ok)
    tl.store(z_ptr + rows, tl.sum(acc, axis=1), mask=row_ok)
    if WANT_CLAMPED:
        flag = (m_raw < 0.0).to(tl.uint8) if CLAMP else tl.zeros([BLOCK_R], tl.uint8)
        tl.store(clamped_ptr + rows, flag, mask=row_ok)


def _write_a_kernel(u_ptr, umax_ptr, scale_ptr, log_norm_ptr, R, M, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Overwrite a BLOCK_R x BLOCK_N tile of u with a = (u - umax) s - L."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < R
    ok = row_ok[:, None] & (cols < M)[None, :]
    mx = tl.load(umax_ptr + rows, mask=row_ok, other=0.0)
    s = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    L = tl.load(log_norm_ptr + rows, mask=row_ok, other=0.0)
    ptr = u_ptr + rows.to(tl.int64)[:, None] * M + cols[None, :]
    x = tl.load(ptr, mask=ok, other=0.0)
    tl.store(ptr, (x - mx[:, None]) * s[:, None] - L[:, None], mask=ok)


def _column_partial_kernel(
    u_ptr,
    umax_ptr,
    scale_ptr,
    log_norm_ptr,
    part_val_ptr,
    part_row_ptr,
    best_ptr,
    index_ptr,
    R,
    M,
    rows_per_group,
    row0,
    DIRECT: tl.constexpr,
    BLOCK_RC: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Max over a row group of a = (u - umax) s - L per column, with its first row."""
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    group = tl.program_id(1)
    col_ok = cols < M
    first = group * rows_per_group
    end = tl.minimum(first + rows_per_group, R)
    span = tl.arange(0, BLOCK_RC)
    dtype = u_ptr.dtype.element_ty
    run_val = tl.full([BLOCK_M], float("-inf"), dtype)
    run_row = tl.zeros([BLOCK_M], tl.int32)
    for r0 in range(0, rows_per_group, BLOCK_RC):  # a fixed trip count: rows past `end` are masked
        rows = first + r0 + span
        row_ok = rows < end
        mx = tl.load(umax_ptr + rows, mask=row_ok, other=0.0)
        s = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
        L = tl.load(log_norm_ptr + rows, mask=row_ok, other=0.0)
        ok = row_ok[:, None] & col_ok[None, :]
        x = tl.load(u_ptr + rows.to(tl.int64)[:, None] * M + cols[None, :], mask=ok, other=0.0)
        a = tl.where(ok, (x - mx[:, None]) * s[:, None] - L[:, None], float("-inf"))
        tile_max = tl.max(a, axis=0)
        tile_row = tl.min(tl.where(a == tile_max[None, :], rows[:, None], R), axis=0)
        better = tile_max > run_val  # strictly: earlier rows keep their ties
        run_row = tl.where(better, tile_row, run_row)
        run_val = tl.where(better, tile_max, run_val)
    if DIRECT:
        best = tl.load(best_ptr + cols, mask=col_ok, other=0.0)
        index = tl.load(index_ptr + cols, mask=col_ok, other=0)
        row = run_row.to(tl.int64) + row0  # greater, or equal with a smaller row: the first row overall wins
        win = col_ok & ((run_val > best) | ((run_val == best) & (run_val > float("-inf")) & (row < index)))
        tl.store(best_ptr + cols, run_val, mask=win)
        tl.store(index_ptr + cols, row, mask=win)
    else:
        at = group.to(tl.int64) * M + cols
        tl.store(part_val_ptr + at, run_val, mask=col_ok)
        tl.store(part_row_ptr + at, run_row, mask=col_ok)


def _column_merge_kernel(part_val_ptr, part_row_ptr, best_ptr, index_ptr, G, M, row0, BLOCK_M: tl.constexpr):
    """Merge the row groups' column maxima in order, then update the running ``best``/``index``."""
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_ok = cols < M
    dtype = part_val_ptr.dtype.element_ty
    run_val = tl.full([BLOCK_M], float("-inf"), dtype)
    run_row = tl.zeros([BLOCK_M], tl.int32)
    val_ptr = part_val_ptr + cols  # pointers step by M per group (64-bit pointer arithmetic)
    row_ptr = part_row_ptr + cols
    for _ in range(0, G):
        v = tl.load(val_ptr, mask=col_ok, other=float("-inf"))
        r = tl.load(row_ptr, mask=col_ok, other=0)
        val_ptr += M
        row_ptr += M
        better = v > run_val
        run_row = tl.where(better, r, run_row)
        run_val = tl.where(better, v, run_val)
    best = tl.load(best_ptr + cols, mask=col_ok, other=0.0)
    index = tl.load(index_ptr + cols, mask=col_ok, other=0)
    row = run_row.to(tl.int64) + row0  # greater, or equal with a smaller row: the first row overall wins
    win = col_ok & ((run_val > best) | ((run_val == best) & (run_val > float("-inf")) & (row < index)))
    tl.store(best_ptr + cols, run_val, mask=win)
    tl.store(index_ptr + cols, row, mask=win)


def _backward_rows_kernel(
    u_ptr,
    umax_ptr,
    scale_ptr,
    argmin_ptr,
    log_norm_ptr,
    clamped_ptr,
    gamma_base_ptr,
    gamma_ptr,
    R,
    M,
    h_bits,
    low_bits,
    F64: tl.constexpr,
    HAS_CLAMPED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Overwrite u with p = exp(a) (a = -L at k(i)); entropy H, gamma = -h (gamma_base + H); p + gamma at k(i)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    start = rows.to(tl.int64) * M
    span = tl.arange(0, BLOCK_N)
    dtype = u_ptr.dtype.element_ty
    if F64:
        h = h_bits.to(tl.int64).to(tl.float64, bitcast=True)
        low = low_bits.to(tl.int64).to(tl.float64, bitcast=True)
    else:
        h = h_bits.to(tl.int32).to(tl.float32, bitcast=True)
        low = low_bits.to(tl.int32).to(tl.float32, bitcast=True)
    mx = tl.load(umax_ptr + rows, mask=row_ok, other=0.0)
    s = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    L = tl.load(log_norm_ptr + rows, mask=row_ok, other=0.0)
    k = tl.load(argmin_ptr + rows, mask=row_ok, other=0).to(tl.int32)
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype)
    for c0 in range(0, M, BLOCK_N):
        cols = c0 + span
        ok = row_ok[:, None] & (cols < M)[None, :]
        ptr = u_ptr + start[:, None] + cols[None, :]
        x = tl.load(ptr, mask=ok, other=0.0)
        at_k = cols[None, :] == k[:, None]
        # t = 0 exactly at k(i), as in the forward pass (a recomputed GEMM may round differently).
        a = tl.where(at_k, -L[:, None], (x - mx[:, None]) * s[:, None] - L[:, None])
        a = tl.where(ok, a, 0.0)  # the padding's values: finite, no overflowing exp
        p = tl.where(a < low, 0.0, tl.exp(a))
        acc += tl.where(ok & (p > 0.0), a * p, 0.0)
        tl.store(ptr, p, mask=ok & (cols[None, :] != k[:, None]))  # k(i) is written once, below
    entropy = -tl.sum(acc, axis=1)
    gamma_base = tl.load(gamma_base_ptr + rows, mask=row_ok, other=0.0)
    gamma = (gamma_base + entropy) * (-h)
    if HAS_CLAMPED:
        clamped = tl.load(clamped_ptr + rows, mask=row_ok, other=0)
        gamma = tl.where(clamped != 0, 0.0, gamma)
    p_k = tl.where(low > -L, 0.0, tl.exp(-L))
    tl.store(u_ptr + start + k, p_k + gamma, mask=row_ok)
    tl.store(gamma_ptr + rows, gamma, mask=row_ok)


def _backward_argmax_kernel(u_ptr, rows_ptr, cols_ptr, values_ptr, argmin_ptr, gamma_ptr, Q, M, BLOCK_Q: tl.constexpr):
    """u[row_q, col_q] := value_q, plus gamma_row where col_q is the row's k(i)."""
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ok = q < Q
    r = tl.load(rows_ptr + q, mask=ok, other=0)
    c = tl.load(cols_ptr + q, mask=ok, other=0)
    v = tl.load(values_ptr + q, mask=ok, other=0.0)
    k = tl.load(argmin_ptr + r, mask=ok, other=-1)
    g = tl.load(gamma_ptr + r, mask=ok, other=0.0)
    tl.store(u_ptr + r * M + c, tl.where(c == k, v + g, v), mask=ok)


_SOURCES = {
    "row_stats": _row_stats_kernel,
    "write_a": _write_a_kernel,
    "column_partial": _column_partial_kernel,
    "column_merge": _column_merge_kernel,
    "backward_rows": _backward_rows_kernel,
    "backward_argmax": _backward_argmax_kernel,
}

_NOT_SPECIALIZED: dict[str, list[str]] = {name: [] for name in _SOURCES} | {
    "row_stats": ["h_bits", "eps_bits", "low_bits"],
    "backward_rows": ["h_bits", "low_bits"],
}

_BUILT: dict[bool, SimpleNamespace] = {}
_BUILD_LOCK = threading.Lock()


def _interpret_requested() -> bool:
    """Whether ``triton.jit`` would give interpreted kernels now (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4 reads its settings through knobs
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _compiled(u: Tensor) -> SimpleNamespace:
    """The kernels for the strip ``u``, wrapped by ``triton.jit`` once per mode (compiled or interpreted).

    Raises:
        RuntimeError: the kernels cannot run on ``u`` (the reason of :func:`availability`).

    """
    reason = availability(u.device, u.dtype)
    if reason is not None:
        raise RuntimeError(f"the Triton strip kernels cannot run here: {reason}")
    mode = _interpret_requested()
    with _BUILD_LOCK:
        if mode not in _BUILT:
            # Bit patterns of floats are data, not sizes: no specialisation on their values.
            _BUILT[mode] = SimpleNamespace(
                **{name: triton.jit(fn, do_not_specialize=_NOT_SPECIALIZED[name]) for name, fn in _SOURCES.items()}
            )
        return _BUILT[mode]


# ----------------------------------------------------------------------------- availability


def availability(device: torch.device | str, dtype: torch.dtype | None = None) -> str | None:
    """``None`` when the Triton kernels can run on ``device`` (and ``dtype``), else the reason, in one line.

    Args:
        device: where the strips live.
        dtype: their compute dtype, if known (float32 and float64 are supported).

    """
    if triton is None:
        return _IMPORT_ERROR
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"the Triton strip kernels compute in float32 or float64, not {dtype}"
    device = torch.device(device)
    if device.type == "cpu":
        return _interpreter_reason()
    if device.type != "cuda":
        return f"the Triton strip kernels run on CUDA devices (or CPU under TRITON_INTERPRET=1), not {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available to torch"
    if _interpret_requested():
        return _interpreter_reason()
    return _cuda_reason(device if device.index is not None else torch.device("cuda", torch.cuda.current_device()))


def _interpreter_reason() -> str | None:
    """``None`` when Triton's interpreter can run the kernels in this process, else why not.

    ``triton.language``'s own functions (``tl.max``, ``tl.sum``, ``tl.zeros``...) are wrapped by
    ``triton.jit`` when Triton is imported: the interpreter works only if ``TRITON_INTERPRET=1``
    was set before that import (for the whole process), not merely before the first launch.
    """
    if not _interpret_requested():
        return "Triton runs CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before importing (slow)"
    standard = getattr(tl, "standard", None)
    if isinstance(getattr(standard, "max", None), triton.JITFunction):
        return (
            "TRITON_INTERPRET=1 was set after Triton was imported, whose own functions are then compiled, not "
            "interpreted: set it in the environment before the process imports triton"
        )
    return None


@lru_cache(maxsize=16)
def _cuda_reason(device: torch.device) -> str | None:
    if torch.version.hip is not None:  # ROCm: Triton's AMD backend
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (7, 0):
        return f"Triton needs CUDA compute capability 7.0 or newer; {device} has {major}.{minor}"
    return None


# ----------------------------------------------------------------------------- launch planning


def _cdiv(a: int, b: int) -> int:
    return -(a // -b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


@lru_cache(maxsize=16)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """Programs a pass should have to fill the device: a few per SM on CUDA; 1 under the CPU interpreter."""
    if device.type == "cuda":
        return 4 * _multiprocessors(device)
    return 1  # the interpreter runs programs one after another: fewer, larger ones are faster


def _warps(elements: int) -> int:
    return 8 if elements >= 4096 else 4


@lru_cache(maxsize=64)
def _bits(value: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``value`` rounded to ``dtype``, as a signed integer (bit-cast back in the kernels)."""
    if dtype == torch.float64:
        return struct.unpack("<q", struct.pack("<d", value))[0]
    return struct.unpack("<i", struct.pack("<f", value))[0]


@dataclass(frozen=True)
class _RowTiles:
    block_r: int
    block_n: int

    @property
    def warps(self) -> int:
        return _warps(self.block_r * self.block_n)


@dataclass(frozen=True)
class _ColumnTiles:
    block_rc: int
    block_m: int
    groups: int
    rows_per_group: int

    @property
    def warps(self) -> int:
        return _warps(self.block_rc * self.block_m)


@lru_cache(maxsize=256)
def _plan_rows(rows: int, cols: int, device: torch.device, max_block_cols: int, tile: int) -> _RowTiles:
    """Blocks of the row passes: BLOCK_N <= max_block_cols columns, BLOCK_R rows, enough programs."""
    block_n = min(_pow2(cols), max_block_cols)
    block_r = max(1, min(tile // block_n, _pow2(rows)))
    target = _target_programs(device)
    while block_r > 1 and _cdiv(rows, block_r) < target:  # narrow rows: keep enough programs
        block_r //= 2
    return _RowTiles(block_r, block_n)


@lru_cache(maxsize=256)
def _plan_columns(
    rows: int, cols: int, device: torch.device, tile: int, column_width: int, groups: int | None
) -> _ColumnTiles:
    """Blocks and row groups of the column pass: about _target_programs programs in all (or ``groups`` groups)."""
    block_m = min(_pow2(cols), column_width)
    block_rc = max(1, min(tile // block_m, _pow2(rows)))
    if groups is not None:
        per_group = _cdiv(rows, min(groups, rows))
    else:
        column_blocks = _cdiv(cols, block_m)
        wanted = max(1, min(_cdiv(_target_programs(device), column_blocks), _cdiv(rows, block_rc)))
        per_group = _cdiv(_cdiv(rows, wanted), block_rc) * block_rc  # whole tiles per group
    return _ColumnTiles(block_rc, block_m, _cdiv(rows, per_group), per_group)


# ----------------------------------------------------------------------------- the implementation


def _out(t: Tensor) -> Tensor:
    """``t`` itself when a kernel can write it (contiguous), else a contiguous scratch copied back after."""
    return t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)


def _copy_back(pairs: list[tuple[Tensor, Tensor]]) -> None:
    for target, scratch in pairs:
        if scratch is not target:
            target.copy_(scratch)


def _check_strip(u: Tensor, vectors: dict[str, Tensor | None]) -> None:
    """Clear errors for strips the kernels cannot take (the engine never passes these)."""
    if u.ndim != 2 or not u.is_contiguous():
        raise ValueError(f"u must be a contiguous (R, M) strip; got shape {tuple(u.shape)}, strides {u.stride()}")
    if u.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"u must be float32 or float64 (the compute dtype); got {u.dtype}")
    for name, t in vectors.items():
        if t is None:
            continue
        if t.shape != (u.shape[0],):
            raise ValueError(f"{name} must have shape ({u.shape[0]},) like the strip's rows; got {tuple(t.shape)}")
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but the strip u is on {u.device}")


class TritonKernels(WholeStripForward):
    """:class:`~contextual_loss.engine.kernels.base.StripKernels` as Triton kernels (see the module docstring).

    Args:
        max_block_cols: widest column block of the row passes (a power of two).
        tile: elements per program and loop iteration (a power of two); sets the rows per block.
        column_width: columns per program of the column pass (a power of two).
        groups: row groups of the column pass; ``None`` chooses enough to fill the device. The
            results do not depend on it; the tests set it to exercise the merge.

    The defaults are meant for a GPU with ~100+ SMs; the tests shrink the blocks to make small
    strips span several of them.

    """

    name = "triton"

    def __init__(
        self, *, max_block_cols: int = 4096, tile: int = 4096, column_width: int = 128, groups: int | None = None
    ) -> None:
        for arg, value in (("max_block_cols", max_block_cols), ("tile", tile), ("column_width", column_width)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{arg} must be a power of two; got {value}")
        if groups is not None and groups < 1:
            raise ValueError(f"groups must be None or >= 1; got {groups}")
        self.max_block_cols, self.tile, self.column_width, self.groups = max_block_cols, tile, column_width, groups

    # -- planning

    def _row_tiles(self, rows: int, cols: int, device: torch.device) -> _RowTiles:
        return _plan_rows(rows, cols, device, self.max_block_cols, self.tile)

    def _column_tiles(self, rows: int, cols: int, device: torch.device) -> _ColumnTiles:
        return _plan_columns(rows, cols, device, self.tile, self.column_width, self.groups)

    # -- the interface

    def _whole(
        self,
        u: Tensor,
        base: Tensor,
        rows: RowStats,
        *,
        clamp: bool,
        band_width: float,
        eps: float,
        columns: ColumnMax | None,
        row0: int,
        write_a: bool,
    ) -> None:
        """The forward pass over every row of the strip (the row pass, then a or the column pass)."""
        _check_strip(u, {"base": base, "umax": rows.umax, "argmin": rows.argmin, "scale": rows.scale,
                         "log_norm": rows.log_norm, "clamped": rows.clamped})  # fmt: skip
        if u.shape[0] == 0:
            return
        k = _compiled(u)
        outs = [
            (t, _out(t)) for t in (rows.umax, rows.argmin, rows.scale, rows.log_norm, rows.clamped) if t is not None
        ]
        umax, argmin, scale, log_norm = (scratch for _, scratch in outs[:4])
        clamped = outs[4][1].view(torch.uint8) if rows.clamped is not None else None
        with _on_device(u.device):
            self._row_pass(k, u, base.contiguous(), (umax, argmin, scale, log_norm, clamped), clamp, band_width, eps)
            torch.log1p(log_norm, out=log_norm)  # the exact 1 at k(i) was kept out of z: one-hot rows stay exact
            if write_a:
                self._write_a(k, u, umax, scale, log_norm)
            elif columns is not None:
                self._update_columns(k, u, umax, scale, log_norm, columns, row0)
        _copy_back(outs)

    def _row_pass(
        self,
        k: SimpleNamespace,
        u: Tensor,
        base: Tensor,
        out: tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None],
        clamp: bool,
        band_width: float,
        eps: float,
    ) -> None:
        """Row max, first index, scale, z (into log_norm) and the clamped flags (uint8, or None)."""
        n_rows, n_cols = u.shape
        umax, argmin, scale, z, clamped = out
        tiles = self._row_tiles(n_rows, n_cols, u.device)
        scalars = (_bits(band_width, u.dtype), _bits(eps, u.dtype), _bits(underflow_limit(u.dtype), u.dtype))
        k.row_stats[(_cdiv(n_rows, tiles.block_r),)](
            u, base, umax, argmin, scale, z, scale if clamped is None else clamped, n_rows, n_cols, *scalars,
            F64=u.dtype == torch.float64, CLAMP=bool(clamp), WANT_CLAMPED=clamped is not None,
            BLOCK_R=tiles.block_r, BLOCK_N=tiles.block_n, num_warps=tiles.warps,
        )  # fmt: skip

    def _write_a(self, k: SimpleNamespace, u: Tensor, umax: Tensor, scale: Tensor, log_norm: Tensor) -> None:
        """Overwrite u with a = log CX, on 2-D tiles."""
        n_rows, n_cols = u.shape
        block_n = min(_pow2(n_cols), self.max_block_cols, 1024)
        block_r = max(1, min(self.tile // block_n, _pow2(n_rows)))
        k.write_a[(_cdiv(n_rows, block_r), _cdiv(n_cols, block_n))](
            u,
            umax,
            scale,
            log_norm,
            n_rows,
            n_cols,
            BLOCK_R=block_r,
            BLOCK_N=block_n,
            num_warps=_warps(block_r * block_n),
        )

    def _update_columns(
        self,
        k: SimpleNamespace,
        u: Tensor,
        umax: Tensor,
        scale: Tensor,
        log_norm: Tensor,
        columns: ColumnMax,
        row0: int,
    ) -> None:
        """Fold the strip's column maxima of a and their first rows into the running ``columns``."""
        n_rows, n_cols = u.shape
        if columns.best.shape != (n_cols,) or columns.index.shape != (n_cols,):
            raise ValueError(f"columns.best and columns.index must have shape ({n_cols},)")
        if columns.best.dtype != u.dtype or columns.index.dtype != torch.int64:
            raise TypeError(f"columns must be ({u.dtype}, int64); got ({columns.best.dtype}, {columns.index.dtype})")
        pairs = [(columns.best, _out(columns.best)), (columns.index, _out(columns.index))]
        best, index = (scratch for _, scratch in pairs)
        for target, scratch in pairs:
            if scratch is not target:
                scratch.copy_(target)
        tiles = self._column_tiles(n_rows, n_cols, u.device)
        column_blocks = _cdiv(n_cols, tiles.block_m)
        direct = tiles.groups == 1
        if direct:
            part_val, part_row = best, index  # unused
        else:
            part_val = u.new_empty(tiles.groups, n_cols)
            part_row = torch.empty(tiles.groups, n_cols, dtype=torch.int32, device=u.device)
        k.column_partial[(column_blocks, tiles.groups)](
            u, umax, scale, log_norm, part_val, part_row, best, index, n_rows, n_cols, tiles.rows_per_group,
            int(row0), DIRECT=direct, BLOCK_RC=tiles.block_rc, BLOCK_M=tiles.block_m, num_warps=tiles.warps,
        )  # fmt: skip
        if not direct:
            block_m = min(_pow2(n_cols), 1024)
            k.column_merge[(_cdiv(n_cols, block_m),)](
                part_val, part_row, best, index, tiles.groups, n_cols, int(row0), BLOCK_M=block_m, num_warps=4
            )
        _copy_back(pairs)

    def backward(
        self,
        u: Tensor,
        rows: RowStats,
        *,
        gamma_base: Tensor,
        band_width: float,
        argmax_rows: Tensor,
        argmax_cols: Tensor,
        argmax_values: Tensor,
    ) -> None:
        """See :meth:`StripKernels.backward <contextual_loss.engine.kernels.base.StripKernels.backward>`."""
        _check_strip(u, {"umax": rows.umax, "argmin": rows.argmin, "scale": rows.scale, "log_norm": rows.log_norm,
                         "clamped": rows.clamped, "gamma_base": gamma_base})  # fmt: skip
        n_rows, n_cols = u.shape
        if n_rows == 0:
            return
        k = _compiled(u)
        tiles = self._row_tiles(n_rows, n_cols, u.device)
        gamma = u.new_empty(n_rows)
        argmin = rows.argmin.contiguous()
        clamped = None if rows.clamped is None else rows.clamped.contiguous().view(torch.uint8)
        with _on_device(u.device):
            k.backward_rows[(_cdiv(n_rows, tiles.block_r),)](
                u, rows.umax.contiguous(), rows.scale.contiguous(), argmin, rows.log_norm.contiguous(),
                gamma if clamped is None else clamped, gamma_base.contiguous(), gamma, n_rows, n_cols,
                _bits(band_width, u.dtype), _bits(underflow_limit(u.dtype), u.dtype),
                F64=u.dtype == torch.float64, HAS_CLAMPED=clamped is not None,
                BLOCK_R=tiles.block_r, BLOCK_N=tiles.block_n, num_warps=tiles.warps,
            )  # fmt: skip
            count = argmax_rows.numel()
            if count:
                block_q = min(_pow2(count), 1024)
                k.backward_argmax[(_cdiv(count, block_q),)](
                    u, argmax_rows.contiguous(), argmax_cols.contiguous(), argmax_values.to(u.dtype).contiguous(),
                    argmin, gamma, count, n_cols, BLOCK_Q=block_q, num_warps=4,
                )  # fmt: skip


def _on_device(device: torch.device) -> Any:
    """Triton launches on the current CUDA device: make it the strip's."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
