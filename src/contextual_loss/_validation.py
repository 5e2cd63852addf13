"""Checks of user input, shared by the functions and the modules.

Every error names the argument, the value received and what was expected; all are
``ValueError`` or ``TypeError`` subclasses (never ``assert``, which vanishes under ``python -O``).
Numbers may be Python or NumPy scalars (anything registered as :class:`numbers.Real` or
:class:`numbers.Integral`); ``bool`` is never taken for a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_feature_pair",
    "check_finite_values",
    "check_generator",
    "check_nonnegative_number",
    "check_positive_int",
    "check_positive_number",
    "check_unit_interval",
    "describe",
]

#: Longest ``repr`` of a value quoted in an error message; longer ones are cut.
_REPR_LIMIT = 80


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message: type and shape of arrays, a bounded repr otherwise."""
    if isinstance(value, Tensor):
        return f"Tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if isinstance(shape, tuple) and shape and dtype is not None:  # a NumPy (or other) array: never its whole repr
        return f"{type(value).__name__} of shape {shape} and dtype {dtype}"
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return f"{type(value).__name__} {text}"


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def _check_real_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_positive_number(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising unless it is a finite number > 0."""
    number = _check_real_number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_nonnegative_number(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising unless it is a finite number >= 0."""
    number = _check_real_number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def check_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising unless 0 <= value <= 1."""
    number = _check_real_number(name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, raising unless it is an integer >= 1 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def check_generator(generator: Any) -> None:
    """Raise ``TypeError`` unless ``generator`` is ``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {describe(generator)}; "
            "e.g. torch.Generator().manual_seed(0)"
        )


def _check_feature_map(name: str, value: Any) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {describe(value)}")
    if value.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense (strided) tensor, got layout {value.layout}; convert it with .to_dense()"
        )
    if value.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) (4 dimensions), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), got {value.dtype}"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")


def check_feature_pair(x: Any, y: Any) -> None:
    """Check that ``x`` (prediction) and ``y`` (target) are comparable maps (features or images).

    Both must be non-empty, dense, floating-point tensors of shape (B, C, H, W) on the same
    device with the same B and C; H and W may differ.
    """
    _check_feature_map("x", x)
    _check_feature_map("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got x: {tuple(x.shape)} and y: {tuple(y.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same number of channels, got x: {tuple(x.shape)} and y: {tuple(y.shape)}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got x on {x.device} and y on {y.device}")


def check_finite_values(name: str, value: Tensor) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN or infinity (a loss of such input is meaningless).

    One ``aminmax`` reduction (NaN propagates to both results, an infinity reaches one of them)
    instead of ``isfinite(value).all()``, which makes several full-size passes and a bool copy.

    Where the values cannot be read on the host, the check takes another form:

    - meta tensors have no values: nothing is checked;
    - under ``torch.compile`` reading a value would break the graph, so the check becomes
      ``torch._assert_async``, which raises a ``RuntimeError`` carrying the same message when the
      compiled code runs (on CUDA, at the next synchronisation) instead of a ``ValueError``.
    """
    if value.numel() == 0 or value.device.type == "meta":
        return
    finite = torch.isfinite(torch.stack(torch.aminmax(value))).all()
    message = f"{name} contains NaN or infinite values; the contextual loss needs finite features"
    if torch.compiler.is_compiling():
        torch._assert_async(finite, message)
    elif not bool(finite):
        raise ValueError(message)
