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
    "check_supported_range",
    "check_unit_interval",
    "describe",
    "larger_magnitude",
    "supported_limits",
]

#: A feature map's largest magnitude max |value|: a number, a 0-d tensor under ``torch.compile``
#: (where reading it would break the graph), or ``None`` where it has no value (meta tensors).
Magnitude = float | Tensor | None

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


def check_finite_values(name: str, value: Tensor) -> Magnitude:
    """Raise ``ValueError`` if ``value`` holds NaN or infinity (a loss of such input is meaningless).

    One ``aminmax`` reduction (NaN propagates to both results, an infinity reaches one of them)
    instead of ``isfinite(value).all()``, which makes several full-size passes and a bool copy.

    Where the values cannot be read on the host, the check takes another form:

    - meta tensors have no values: nothing is checked;
    - under ``torch.compile`` reading a value would break the graph, so the check becomes
      ``torch._assert_async``, which raises a ``RuntimeError`` carrying the same message when the
      compiled code runs (on CUDA, at the next synchronisation) instead of a ``ValueError``.

    Returns:
        The largest magnitude max |value| for :func:`check_supported_range`, from the same
        reduction: a float (one synchronisation), a 0-d tensor under ``torch.compile``, ``None``
        for meta or empty tensors.

    """
    if value.numel() == 0 or value.device.type == "meta":
        return None
    bounds = torch.stack(torch.aminmax(value))
    message = f"{name} contains NaN or infinite values; the contextual loss needs finite features"
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(bounds).all(), message)
        return bounds.abs().amax()
    low, high = bounds.double().tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(message)
    return max(-low, high)


def larger_magnitude(a: Magnitude, b: Magnitude) -> Magnitude:
    """The larger of two magnitudes of :func:`check_finite_values` (``None`` if either is unknown)."""
    if a is None or b is None:
        return None
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


def supported_limits(dtype: torch.dtype) -> tuple[float, float]:
    """(S_max, T_max) of a compute dtype (float32 or float64): see :func:`check_supported_range`.

    S_max = sqrt(finfo.max) 2^-20 bounds the softmax scale s = 1 / (h (min d + eps)), whose square
    appears in the dense engine's backward pass; T_max = finfo.max 2^-20 bounds the distances and
    the exponents d s. The 2^-20 leaves room for the sums and products of the backward pass.
    float32: S_max = 1.8e13, T_max = 3.2e32; float64: S_max = 1.3e148, T_max = 1.7e302.
    """
    largest = torch.finfo(dtype).max
    return math.sqrt(largest) * 2.0**-20, largest * 2.0**-20


def check_supported_range(
    *,
    band_width: float,
    eps: float,
    loss_type: str,
    dtype: torch.dtype,
    channels: int,
    magnitude: Magnitude,
    spatial_weight: float = 0.0,
) -> None:
    """Raise ``ValueError`` unless the options and the features' magnitude fit the arithmetic of ``dtype``.

    With S = 1 / (band_width * eps), the largest softmax scale, and A = ``magnitude`` = max |value|
    of x and y, the supported range of a compute dtype with limits (S_max, T_max) of
    :func:`supported_limits` is:

    - S <= S_max (float32: band_width * eps >= 5.7e-14; float64: >= 7.8e-149);
    - l1 and l2: D <= T_max and D * S <= T_max, with D the largest possible distance
      (l2: C (2A)^2, l1: 2 C A, plus weight_sp sqrt(2) for CoBi's paper form);
    - cosine (scale-invariant): A = 0, or A >= S / (32 eps_64 T_max) with eps_64 = finfo(float64).eps,
      below which the gradient (of order S / |x - mean|, where |x - mean| >= 64 eps_64 A for vectors
      that are not treated as zero) could overflow (float32, default options: A >= 8.8e-13).

    Within it the loss, its gradients and the matches are finite (``tests/property`` checks this).

    Args:
        band_width: h > 0.
        eps: epsilon > 0 of the relative distance.
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``.
        dtype: the compute dtype (float32 or float64; half inputs are computed in float32).
        channels: C, the length of the feature vectors.
        magnitude: A = max |value| of x and y (:func:`check_finite_values`): a float is checked
            here; a 0-d tensor (under ``torch.compile``) with ``torch._assert_async``, which raises
            a ``RuntimeError`` when the compiled code runs; ``None`` (meta tensors) is not checked.
        spatial_weight: CoBi's paper-form w_s (0 for the contextual loss and the released form).

    """
    s_max, t_max = supported_limits(dtype)
    name = str(dtype).removeprefix("torch.")
    scale = 1.0 / (band_width * eps) if band_width * eps > 0 else math.inf
    if scale > s_max:
        raise ValueError(
            f"band_width * eps must be >= {1.0 / s_max:.3g} in {name} (the softmax scale 1 / (band_width * eps) "
            f"must stay below {s_max:.3g}), got band_width={band_width!r} and eps={eps!r}; use a larger band_width "
            f"or eps{', or float64 features' if dtype != torch.float64 else ''}"
        )
    if magnitude is None:
        return
    if loss_type == "cosine":
        # the zero-vector tolerance is 64 finfo(float64).eps times the largest norm (maths.prepare_features)
        smallest = scale / (32.0 * torch.finfo(torch.float64).eps * t_max)
        problem = (
            f"x and y are too small for loss_type='cosine' in {name} with band_width={band_width!r} and "
            f"eps={eps!r}: their largest magnitude must be 0 or >= {smallest:.3g} (gradients of order "
            f"1 / |x - mean| would overflow)"
        )
        if isinstance(magnitude, Tensor):
            torch._assert_async((magnitude == 0) | (magnitude >= smallest), problem)
        elif 0.0 < magnitude < smallest:
            raise ValueError(f"{problem}, got {magnitude:.3g}; rescale the features")
        return
    problem = (
        f"x and y are too large for loss_type={loss_type!r} in {name} with band_width={band_width!r} and "
        f"eps={eps!r}: with {channels} channels, distances and distance / (band_width * eps) must stay "
        f"below {t_max:.3g}"
    )
    advice = f"rescale the features{', or use float64 features' if dtype != torch.float64 else ''}"
    if isinstance(magnitude, Tensor):
        a = magnitude.double()
        reach = (4.0 * channels * a * a if loss_type == "l2" else 2.0 * channels * a) + spatial_weight * math.sqrt(2.0)
        torch._assert_async(reach * max(scale, 1.0) <= t_max, f"{problem}; {advice}")
        return
    # (products, not powers: a float product overflows to inf instead of raising OverflowError)
    largest = 4.0 * channels * magnitude * magnitude if loss_type == "l2" else 2.0 * channels * magnitude
    largest += spatial_weight * math.sqrt(2.0)
    if largest > t_max or largest * scale > t_max:
        raise ValueError(f"{problem}, got values up to {magnitude:.3g} (distances up to {largest:.3g}); {advice}")
