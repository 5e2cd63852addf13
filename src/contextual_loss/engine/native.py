"""Fused C kernels for the streaming engine's per-strip work on CPU (optional, compiled on first use).

After each strip's GEMM, the eager engine (:mod:`contextual_loss.engine.streaming`) spends about
ten elementwise passes over the strip (row maximum, shift, scale, exponential, row sum, column
maximum, ...), each of which streams the whole strip through memory; on CPUs with few cores
these passes, not the GEMM, bound the speed at small channel counts. ``_native/strip_kernels.c``
does the same arithmetic row by row while a row is in cache (see the comment at its top), with
OpenMP threads over rows.

The source ships with the package and is compiled with the system C compiler the first time the
streaming engine runs on a CPU tensor (under a second), into a per-user cache directory keyed by
the source, the compiler and the CPU. Without a compiler, or if compiling or loading fails, the
engine uses its eager PyTorch passes: same results up to rounding, slower. Environment:

- ``CONTEXTUAL_LOSS_NATIVE``: ``0`` disables the kernels, ``1`` (or unset) uses them when they build.
- ``CONTEXTUAL_LOSS_CACHE_DIR``: where the compiled library is kept (default:
  ``$XDG_CACHE_HOME/contextual-loss`` or ``~/.cache/contextual-loss``).
- ``CC``: the C compiler (default: the first of ``cc``, ``gcc``, ``clang`` found).

:func:`status` says whether the kernels are in use and why not; :func:`disabled` turns them off
for a block of code (tests compare both paths).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from contextual_loss.engine.kernels import _build

__all__ = ["StripKernels", "disabled", "kernels_for", "status"]

_ABI_VERSION = 2

_lock = threading.Lock()
_state: dict[str, object] = {}
_disabled_depth = 0

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F64 = ctypes.c_double
_INT = ctypes.c_int


def _cache_dir() -> Path | None:
    """The cache directory the kernels use, or None if none is safe (see ``kernels/_build.py``)."""
    return _build.cache_directory()


def _declare(lib: ctypes.CDLL) -> None:
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"cl_forward_strip_{suffix}")
        forward.restype = _INT
        forward.argtypes = [_I64, _I64, _P, _P, _INT, _F64, _F64, _F64, _P, _P, _P, _P, _P, _INT, _P, _P, _I64, _INT]
        backward = getattr(lib, f"cl_backward_strip_{suffix}")
        backward.restype = _INT
        backward.argtypes = [_I64, _I64, _P, _P, _P, _P, _P, _F64, _P, _INT]
    lib.cl_abi_version.restype = _I64
    lib.cl_openmp.restype = _INT


def _checked(result: _build.LoadResult) -> tuple[ctypes.CDLL | None, str]:
    """The loaded library if its symbols, ABI and OpenMP are as expected; and a one-line status."""
    lib = result.lib
    if lib is None:
        return None, result.status
    try:
        _declare(lib)
    except AttributeError as exc:
        return None, f"loading failed: {type(exc).__name__}: {exc}"
    if lib.cl_abi_version() != _ABI_VERSION:
        return None, f"{result.path or 'the library'} has ABI {lib.cl_abi_version()}, expected {_ABI_VERSION}"
    if not lib.cl_openmp():
        return None, "the kernels were built without OpenMP (one thread would be slower than eager)"
    return lib, result.status


def _load() -> tuple[ctypes.CDLL | None, str]:
    """Build (if needed) and load the library now (uncached); returns it (or None) and a one-line status."""
    return _checked(_build.build_and_load())


def _library() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _state:
            result = _build.load_library()  # cached per process; warns once if it fails
            _state["lib"], _state["status"] = _checked(result)
            if result.lib is not None and _state["lib"] is None:
                _build.warn_fallback(str(_state["status"]))
    return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """Whether the fused kernels are used, and if not, why (builds them on first call)."""
    _library()
    return str(_state["status"]) if _disabled_depth == 0 else "disabled for this block (native.disabled())"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the streaming engine's eager PyTorch passes instead of the fused kernels in this block."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@dataclass(frozen=True)
class StripKernels:
    """The fused kernels for one compute dtype (float32 or float64) on CPU."""

    lib: ctypes.CDLL
    suffix: str

    def forward(
        self,
        u: Tensor,
        base: Tensor,
        clamp: bool,
        band_width: float,
        eps: float,
        lowest: float,
        rows_out: dict[str, Tensor | None],
        *,
        write_a: bool,
        best: Tensor | None,
        index: Tensor | None,
        row0: int,
    ) -> None:
        """Row statistics of the affinity strip ``u`` into ``rows_out``, and the column maximum.

        ``rows_out`` holds (rows,) outputs umax, argmin, scale, log_norm and clamped (or None).
        With ``write_a``, ``u`` becomes a = log CX; otherwise ``best``/``index`` are updated.
        """
        _check_contiguous(u, base, best, index, *rows_out.values())
        fn = getattr(self.lib, f"cl_forward_strip_{self.suffix}")
        code = fn(
            u.shape[0], u.shape[1], _ptr(u), _ptr(base), int(clamp), band_width, eps, lowest,
            _ptr(rows_out["umax"]), _ptr(rows_out["argmin"]), _ptr(rows_out["scale"]), _ptr(rows_out["log_norm"]),
            _ptr(rows_out["clamped"]), int(write_a), _ptr(best), _ptr(index), row0, torch.get_num_threads(),
        )  # fmt: skip
        if code != 0:
            raise MemoryError("the streaming engine's native kernel could not allocate its column buffers")

    def backward(
        self, u: Tensor, umax: Tensor, scale: Tensor, argmin: Tensor, log_norm: Tensor, lowest: float
    ) -> Tensor:
        """Turn the recomputed affinities ``u`` into p = CX in place; return the row entropies.

        a = (u - umax) s - L as in the forward pass (-L at k(i)), p = exp(a), H = -sum_k p a.
        """
        entropy = torch.empty_like(umax)
        _check_contiguous(u, umax, scale, argmin, log_norm)
        fn = getattr(self.lib, f"cl_backward_strip_{self.suffix}")
        fn(u.shape[0], u.shape[1], _ptr(u), _ptr(umax), _ptr(scale), _ptr(argmin), _ptr(log_norm), lowest,
           _ptr(entropy), torch.get_num_threads())  # fmt: skip
        return entropy


def _check_contiguous(*tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and not t.is_contiguous():
            raise RuntimeError("native strip kernels need contiguous buffers (internal error)")


_SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}


def kernels_for(x: Tensor) -> StripKernels | None:
    """The fused kernels for tensors like ``x``, or None (not CPU, other dtype, disabled, unavailable)."""
    if _disabled_depth or x.device.type != "cpu" or x.dtype not in _SUFFIXES:
        return None
    lib = _library()
    return None if lib is None else StripKernels(lib, _SUFFIXES[x.dtype])
