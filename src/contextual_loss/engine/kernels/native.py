"""The native CPU strip kernels: ctypes wrappers of the fused C kernels in ``_native/``.

After each strip's GEMM, the eager reference (:mod:`~contextual_loss.engine.kernels.eager`) makes
about ten elementwise passes over the strip, each streaming it through memory; on CPUs with few
cores those passes, not the GEMM, bound the speed at small channel counts. ``_native/strip_kernels.c``
does the same arithmetic row by row while a row is in cache, in one OpenMP parallel region per
strip and pass (threads take rows in small chunks as they become free). The library is built on
first use by :mod:`~contextual_loss.engine.kernels._build`; :func:`availability` says whether it
can run here, and why not.
"""

from __future__ import annotations

import ctypes
import os
import threading

import torch
from torch import Tensor

from contextual_loss.engine.kernels import _build
from contextual_loss.engine.kernels.base import ColumnMax, Deferral, RowStats
from contextual_loss.engine.strips import NEAR_BLOCK, underflow_limit

__all__ = ["ABI_VERSION", "NativeKernels", "availability"]

#: The version of the C entry points' signatures this module declares (``cl_abi_version()``).
ABI_VERSION = 4

_SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}
_OFF = {"0", "off", "false", "no"}

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F64 = ctypes.c_double
_INT = ctypes.c_int

_lock = threading.Lock()
_loaded: list[tuple[ctypes.CDLL | None, str]] = []


def _declare(lib: ctypes.CDLL) -> None:
    for suffix in _SUFFIXES.values():
        forward = getattr(lib, f"cl_forward_strip_{suffix}")
        forward.restype = _INT
        forward.argtypes = [
            _I64, _I64, _P, _P, _INT, _F64, _F64, _F64, _P, _P, _P, _P, _P, _INT, _P, _P, _I64, _INT,
            _P, _P, _P, _I64, _P,  # the near-field deferral: floor, deferred, block maxima, block; only
        ]  # fmt: skip
        backward = getattr(lib, f"cl_backward_strip_{suffix}")
        backward.restype = _INT
        backward.argtypes = [_I64, _I64, _P, _P, _P, _P, _P, _P, _P, _F64, _F64, _I64, _P, _P, _P, _INT]
    lib.cl_abi_version.restype = _I64
    lib.cl_openmp.restype = _INT


def _check(lib: ctypes.CDLL) -> str | None:
    """Why a loaded library cannot be used (declares its signatures), or None."""
    try:
        lib.cl_abi_version.restype = _I64
        version = lib.cl_abi_version()
        if version != ABI_VERSION:
            return f"the library has ABI {version}, expected {ABI_VERSION}"
        _declare(lib)
    except AttributeError as exc:
        return f"the library lacks an entry point: {exc}"
    if not lib.cl_openmp():
        return "the kernels were built without OpenMP (one thread would be slower than eager)"
    return None


def _library() -> tuple[ctypes.CDLL | None, str]:
    """The checked library (built on first use) and its one-line status; cached per process."""
    with _lock:
        if not _loaded:
            result = _build.load_library()  # warns once per process when the kernels cannot be used
            why = None if result.lib is None else _check(result.lib)
            if why is not None:
                _build.warn_fallback(f"{why} ({result.path})")
            _loaded.append((result.lib, result.status) if why is None else (None, f"{why} ({result.path})"))
        return _loaded[0]


def availability(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the native kernels can run on ``device`` tensors of ``dtype``, else the reason."""
    if os.environ.get("CONTEXTUAL_LOSS_NATIVE", "1").strip().lower() in _OFF:
        return "disabled by CONTEXTUAL_LOSS_NATIVE"
    if device.type != "cpu":
        return f"the native kernels run on CPU tensors only (got a {device.type} tensor)"
    if dtype not in _SUFFIXES:
        return f"the native kernels compute in float32 or float64 (got {dtype})"
    lib, status = _library()
    return None if lib is not None else status


def library_status() -> str:
    """The library's one-line status: ``in use: PATH`` or why it is not (builds it on first call)."""
    return _library()[1]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_buffers(u: Tensor, floats: tuple, longs: tuple = (), flags: tuple = ()) -> None:
    """Raise unless every buffer is a contiguous CPU tensor of the dtype its C pointer is declared with."""
    if u.dtype not in _SUFFIXES:
        raise ValueError(f"the native strip kernels compute in float32 or float64, got {u.dtype} (internal error)")
    for group, dtype in ((floats, u.dtype), (longs, torch.int64), (flags, torch.bool)):
        for t in group:
            if t is not None and (t.device.type != "cpu" or not t.is_contiguous() or t.dtype != dtype):
                raise ValueError(f"the native strip kernels need contiguous CPU {dtype} buffers (internal error)")


class NativeKernels:
    """:class:`~contextual_loss.engine.kernels.base.StripKernels` as the fused C kernels (CPU, float32/float64)."""

    name = "native"

    def __init__(self) -> None:
        lib, status = _library()
        if lib is None:
            raise RuntimeError(f"the native strip kernels are unavailable: {status}")
        self._lib = lib

    def forward(
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
        defer: Deferral | None = None,
        only: Tensor | None = None,
    ) -> int:
        """See :meth:`StripKernels.forward <contextual_loss.engine.kernels.base.StripKernels.forward>`."""
        if defer is not None and only is not None:
            raise ValueError("give at most one of defer and only")
        best, index = (None, None) if columns is None or write_a else (columns.best, columns.index)
        floor, deferred, maxima = (
            (None, None, None) if defer is None else (defer.floor, defer.deferred, defer.block_max)
        )
        _check_buffers(
            u, (u, base, rows.umax, rows.scale, rows.log_norm, best, floor, maxima), (rows.argmin, index),
            (rows.clamped, deferred, only),
        )  # fmt: skip
        if maxima is not None and maxima.shape != (u.shape[0], -(-u.shape[1] // NEAR_BLOCK)):
            raise ValueError(f"defer.block_max must have shape (rows, ceil(M / {NEAR_BLOCK})) (internal error)")
        fn = getattr(self._lib, f"cl_forward_strip_{_SUFFIXES[u.dtype]}")
        code = fn(
            u.shape[0], u.shape[1], _ptr(u), _ptr(base), int(clamp), band_width, eps, underflow_limit(u.dtype),
            _ptr(rows.umax), _ptr(rows.argmin), _ptr(rows.scale), _ptr(rows.log_norm), _ptr(rows.clamped),
            int(write_a), _ptr(best), _ptr(index), row0, torch.get_num_threads(),
            _ptr(floor), _ptr(deferred), _ptr(maxima), NEAR_BLOCK, _ptr(only),
        )  # fmt: skip
        if code < 0:
            raise MemoryError("the native strip kernel could not allocate its per-thread column buffers")
        return int(code)

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
        tensors = (u, rows.umax, rows.scale, rows.argmin, rows.log_norm, rows.clamped, gamma_base)
        floats = (u, rows.umax, rows.scale, rows.log_norm, gamma_base, argmax_values)
        _check_buffers(u, floats, (rows.argmin, argmax_rows, argmax_cols), (rows.clamped,))
        fn = getattr(self._lib, f"cl_backward_strip_{_SUFFIXES[u.dtype]}")
        code = fn(
            u.shape[0], u.shape[1], *(_ptr(t) for t in tensors), band_width, underflow_limit(u.dtype),
            argmax_rows.numel(), _ptr(argmax_rows), _ptr(argmax_cols), _ptr(argmax_values), torch.get_num_threads(),
        )  # fmt: skip
        if code != 0:
            raise ValueError("argmax_rows must be sorted in non-decreasing order (see StripKernels.backward)")
