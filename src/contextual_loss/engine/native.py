"""Deprecated: the native strip kernels moved to :mod:`contextual_loss.engine.kernels`.

Kept for one release. ``status()`` is ``kernels.status()``'s native line, ``disabled()`` is
``kernels.use("eager")`` (for the current thread only, as every override now is),
``kernels_for(x)`` returns the new
:class:`~contextual_loss.engine.kernels.native.NativeKernels` (the ``StripKernels`` interface of
:mod:`contextual_loss.engine.kernels.base`) or ``None``, and ``StripKernels`` is that class.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from contextual_loss.engine import kernels as _kernels
from contextual_loss.engine.kernels import native as _native

__all__ = ["StripKernels", "disabled", "kernels_for", "status"]  # noqa: F822 (StripKernels: module __getattr__)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"contextual_loss.engine.native.{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def status() -> str:
    """Whether the native kernels are used (builds them on first call); see ``kernels.status()``."""
    _deprecated("status()", "contextual_loss.engine.kernels.status()")
    request, source = _kernels.requested()
    if request not in ("auto", "native"):
        return f"disabled for this thread ({source})"
    why = _native.availability(torch.device("cpu"), torch.float32)
    return _native.library_status() if why is None else why


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the eager strip kernels in this block, in the current thread only: ``kernels.use("eager")``."""
    _deprecated("disabled()", 'contextual_loss.engine.kernels.use("eager")')
    with _kernels.use("eager"):
        yield


def kernels_for(x: Tensor) -> _native.NativeKernels | None:
    """The native kernels for tensors like ``x``, or None (not CPU float32/float64, disabled, unavailable)."""
    _deprecated("kernels_for()", "contextual_loss.engine.kernels.select()")
    request, _ = _kernels.requested()
    if request not in ("auto", "native") or _native.availability(x.device, x.dtype) is not None:
        return None
    return _kernels.select(x.device, x.dtype, "native")  # type: ignore[return-value]


def __getattr__(name: str) -> object:
    if name == "StripKernels":
        _deprecated("StripKernels", "contextual_loss.engine.kernels.native.NativeKernels")
        return _native.NativeKernels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
