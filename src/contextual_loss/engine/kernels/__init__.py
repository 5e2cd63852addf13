"""Per-strip kernels of the streaming engine, behind one interface, and which one runs.

The interface and its maths are in :mod:`~contextual_loss.engine.kernels.base`. Implementations:

- ``eager`` (:class:`~contextual_loss.engine.kernels.eager.EagerKernels`): PyTorch operations,
  any device and dtype; the readable reference the others are tested against.
- ``native`` (:class:`~contextual_loss.engine.kernels.native.NativeKernels`): fused C kernels for
  CPU float32/float64, built with the system C compiler on first use.
- ``triton`` (:mod:`~contextual_loss.engine.kernels.triton`): Triton kernels for CUDA tensors (and
  CPU tensors under ``TRITON_INTERPRET=1``).

Selection (``auto``): CPU float32/float64 take ``native`` when it loads, else ``eager``; CUDA
takes ``triton`` when it is available, else ``eager``; any other device takes ``eager``.
:func:`status` says which one runs and why the others do not.

Forcing one: the environment variable ``CONTEXTUAL_LOSS_KERNELS=auto|eager|native|triton``, or
``with kernels.use(name):`` for the calls of the current thread (it takes precedence over the
variable). A forced implementation that cannot run (``native`` on a CUDA tensor, ``triton``
without Triton, ...) raises :class:`KernelsUnavailableError` instead of falling back.
``CONTEXTUAL_LOSS_NATIVE=0`` makes ``native`` unavailable, so ``auto`` takes ``eager`` on CPU.
When ``auto`` wanted the native kernels and they cannot be built or loaded, the engine warns once
per process (:class:`NativeKernelsWarning`, with the reason) and runs ``eager``.

Under ``torch.compile`` and ``torch.export`` the request (the variable or ``use``) is read when
the function is traced and kept in the graph; the implementation for the tensors' device is
chosen when the graph runs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator

import torch

from contextual_loss.engine.kernels import native as _native
from contextual_loss.engine.kernels._build import NativeKernelsWarning
from contextual_loss.engine.kernels.base import ColumnMax, Deferral, RowStats, StripKernels
from contextual_loss.engine.kernels.eager import EagerKernels

__all__ = [
    "CHOICES",
    "ENV_VAR",
    "IMPLEMENTATIONS",
    "ColumnMax",
    "Deferral",
    "KernelsUnavailableError",
    "NativeKernelsWarning",
    "RowStats",
    "StripKernels",
    "availability",
    "requested",
    "resolve",
    "select",
    "status",
    "use",
]

#: The strip-kernel implementations.
IMPLEMENTATIONS: tuple[str, ...] = ("eager", "native", "triton")
#: What may be requested: an implementation, or ``auto`` (by device and dtype).
CHOICES: tuple[str, ...] = ("auto", *IMPLEMENTATIONS)
#: The environment variable that forces an implementation for the whole process.
ENV_VAR = "CONTEXTUAL_LOSS_KERNELS"

_override = threading.local()
_instances: dict[str, StripKernels] = {}
_instances_lock = threading.Lock()


class KernelsUnavailableError(RuntimeError):
    """A forced strip-kernel implementation cannot run on the tensors at hand."""


def _check_choice(name: object, what: str) -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{what} must be one of {', '.join(CHOICES)}; got {name!r}")
    return name


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the streaming engine's strips on implementation ``name`` in this block, in this thread only.

    Args:
        name: ``"auto"``, ``"eager"``, ``"native"`` or ``"triton"``. Takes precedence over
            ``CONTEXTUAL_LOSS_KERNELS``; blocks nest (the innermost wins).

    Raises:
        ValueError: ``name`` is not one of these (checked on entry). Forcing an implementation that
            cannot run raises :class:`KernelsUnavailableError` when the engine runs.

    """
    _check_choice(name, "name")
    stack = _override.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def requested() -> tuple[str, str]:
    """What the current thread asks for and who asked: ``(choice, source)``.

    Raises:
        ValueError: ``CONTEXTUAL_LOSS_KERNELS`` holds something else than a choice.

    """
    stack = _override.__dict__.get("stack")
    if stack:
        return stack[-1], f"kernels.use({stack[-1]!r})"
    raw = os.environ.get(ENV_VAR)
    if raw is None or not raw.strip():
        return "auto", "default"
    value = raw.strip().lower()
    if value not in CHOICES:
        raise ValueError(f"the environment variable {ENV_VAR} must be one of {', '.join(CHOICES)}; got {raw!r}")
    return value, f"{ENV_VAR}={value}"


def _triton():  # imported on demand: the module may import Triton itself
    return importlib.import_module("contextual_loss.engine.kernels.triton")


def availability(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when implementation ``name`` can run on ``device`` tensors of ``dtype``, else the reason."""
    _check_choice(name, "name")
    if name == "native":
        return _native.availability(device, dtype)
    if name == "triton":
        return _triton().availability(device, dtype)
    return None


def resolve(device: torch.device, dtype: torch.dtype, request: str | None = None) -> str:
    """The implementation that runs for ``device`` tensors of compute ``dtype``.

    Args:
        device: the tensors' device.
        dtype: the compute dtype (float32 or float64 in the engine).
        request: a choice of :data:`CHOICES`; ``None`` reads :func:`requested`.

    Raises:
        KernelsUnavailableError: a forced implementation cannot run here.

    """
    source = "request"
    if request is None:
        request, source = requested()
    _check_choice(request, "request")
    if request == "auto":
        preferred = {"cpu": "native", "cuda": "triton"}.get(device.type)
        return preferred if preferred and availability(preferred, device, dtype) is None else "eager"
    why = availability(request, device, dtype)
    if why is not None:
        raise KernelsUnavailableError(
            f"the {request!r} strip kernels were forced ({source}) but cannot run on {device.type} {dtype} "
            f"tensors: {why}. Use 'auto' to fall back to the eager kernels."
        )
    return request


def _instance(name: str) -> StripKernels:
    with _instances_lock:
        if name not in _instances:
            if name == "native":
                _instances[name] = _native.NativeKernels()
            elif name == "triton":
                _instances[name] = _triton().TritonKernels()
            else:
                _instances[name] = EagerKernels()
        return _instances[name]


def select(device: torch.device, dtype: torch.dtype, request: str | None = None) -> StripKernels:
    """The :class:`StripKernels` implementation :func:`resolve` picks."""
    return _instance(resolve(device, dtype, request))


def status(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """Which implementation runs for ``device`` tensors of ``dtype`` in this thread, and why the others do not.

    Builds the native kernels on first call (CPU). One line for the choice, then one per implementation.
    """
    device = torch.device(device)
    try:
        request, source = requested()
        head = f"{device.type} {dtype}: {resolve(device, dtype, request)} (requested: {request}, by {source})"
    except (ValueError, KernelsUnavailableError) as exc:
        head = f"{device.type} {dtype}: error: {exc}"
    lines = [head]
    for name in IMPLEMENTATIONS:
        why = availability(name, device, dtype)
        detail = _native.library_status() if name == "native" and why is None else why
        state = "available" if why is None else "unavailable"
        lines.append(f"  {name}: {state}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)
