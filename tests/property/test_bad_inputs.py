"""Every bad input to the public API raises a TypeError or ValueError that names the argument.

Each example draws valid inputs and options for one public function (or module), then spoils one
argument with a drawn bad value: wrong types, shapes, dtypes, empty or non-finite tensors,
values out of an option's domain, and features outside the range the arithmetic of the compute
dtype supports (see ``_validation.check_supported_range``).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.property.support import examples

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss._validation import supported_limits
from contextual_loss.functional import (
    contextual_bilateral_loss,
    contextual_loss,
    contextual_match,
    contextual_similarity,
)

FUNCTIONS = {
    "contextual_loss": contextual_loss,
    "contextual_similarity": contextual_similarity,
    "contextual_bilateral_loss": contextual_bilateral_loss,
    "contextual_match": contextual_match,
}
#: The keyword options each function accepts (x and y are positional everywhere).
_COMMON = {"band_width", "loss_type", "eps", "center", "engine", "memory_budget"}
ACCEPTS = {
    "contextual_loss": _COMMON | {"reduction", "max_points"},
    "contextual_similarity": _COMMON | {"max_points"},
    "contextual_bilateral_loss": _COMMON | {"weight_sp", "form", "reduction", "max_points"},
    "contextual_match": _COMMON | {"weight_sp", "form"},
}

_NUMBER_TYPES = ["0.5", None, [0.5], complex(0.5, 1.0), torch.tensor(0.5), object()]
BAD_OPTIONS = {
    "band_width": [0, 0.0, -0.5, math.nan, math.inf, -math.inf, True, *_NUMBER_TYPES],
    "eps": [0, -1e-5, math.nan, math.inf, False, *_NUMBER_TYPES],
    "weight_sp": [-0.1, math.nan, math.inf, "0.1", [0.1], True],
    "loss_type": ["L2", "", "cos", None, 2, ("l2",)],
    "center": ["mean", "", None, 0],
    "reduction": ["avg", "", None, 1],
    "form": ["papers", "", None, 1],
    "engine": ["gpu", "", None, 1],
    "max_points": [0, -3, 2.5, "4", True, math.nan],
    "memory_budget": [0, -1, 2.5, "big", True, math.inf],
}


def _mentions(message: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", message) is not None


def _valid_maps(draw) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return torch.rand(b, c, 3, 3, dtype=dtype), torch.rand(b, c, 2, 4, dtype=dtype)


@examples(200)
@given(data=st.data())
def test_a_bad_option_raises_an_error_naming_it(data):
    name = data.draw(st.sampled_from(sorted(FUNCTIONS)), label="function")
    option = data.draw(st.sampled_from(sorted(ACCEPTS[name])), label="option")
    bad = data.draw(st.sampled_from(BAD_OPTIONS[option]), label="bad value")
    x, y = _valid_maps(data.draw)
    kwargs = {option: bad}
    if option == "weight_sp" and name == "contextual_match" and bad is None:
        return  # None is valid there (plain CX)
    if name == "contextual_bilateral_loss" and option != "form":
        kwargs["form"] = data.draw(st.sampled_from(["paper", "released"]))
    with pytest.raises((TypeError, ValueError)) as info:
        FUNCTIONS[name](x, y, **kwargs)
    assert _mentions(str(info.value), option), f"{name}({option}={bad!r}): {info.value}"


@examples(25)
@given(weight=st.sampled_from([1.0001, 1.5, 2.0, 100.0]), function=st.sampled_from(["bilateral", "match"]))
def test_released_form_rejects_weights_above_one(weight, function):
    x, y = torch.rand(1, 3, 3, 3), torch.rand(1, 3, 3, 3)
    fn = contextual_bilateral_loss if function == "bilateral" else contextual_match
    with pytest.raises(ValueError, match=r"\bweight_sp\b"):
        fn(x, y, weight_sp=weight, form="released")


def _spoiled(draw, x: torch.Tensor, y: torch.Tensor) -> tuple[str, object, object]:
    """(argument name, x', y'): one of x or y replaced by a bad value."""
    which = draw(st.sampled_from(["x", "y"]))
    good = x if which == "x" else y
    bad = draw(
        st.sampled_from(
            [
                "not a tensor", None, 1.0, good.tolist(),  # wrong types
                good[0], good.unsqueeze(0), good.flatten(2),  # wrong number of dimensions
                good.to(torch.int64), good > 0.5, good.to(torch.complex64),  # wrong dtypes
                good[:0], good[:, :0], good[..., :0, :],  # empty
                good.masked_fill(good > 0.5, math.nan), good.masked_fill(good > 0.5, math.inf),  # not finite
                good[:, :1] if good.shape[1] > 1 else torch.cat([good, good], 1),  # other channel count
                torch.cat([good, good]),  # other batch size
            ]
        )
    )  # fmt: skip
    return which, (bad if which == "x" else x), (bad if which == "y" else y)


@examples(200)
@given(data=st.data(), name=st.sampled_from(sorted(FUNCTIONS)))
def test_a_bad_feature_map_raises_an_error_naming_it(data, name):
    x, y = _valid_maps(data.draw)
    which, bad_x, bad_y = _spoiled(data.draw, x, y)
    with pytest.raises((TypeError, ValueError)) as info:
        FUNCTIONS[name](bad_x, bad_y)
    assert _mentions(str(info.value), which), f"{name} with bad {which}: {info.value}"


@examples(50)
@given(
    name=st.sampled_from(sorted(FUNCTIONS)),
    loss_type=st.sampled_from(["l1", "l2"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    exponent=st.floats(0.5, 1.0),
)
def test_features_too_large_for_the_dtype_raise_an_error_naming_them(name, loss_type, dtype, exponent):
    huge = torch.finfo(dtype).max ** exponent / 4  # l2 distances overflow from max ** 0.5, l1 from max
    if loss_type == "l1":
        huge = torch.finfo(dtype).max / 8
    x = torch.rand(1, 4, 3, 3, dtype=dtype) * huge
    with pytest.raises(ValueError, match=r"\bx and y\b.*too large") as info:
        FUNCTIONS[name](x, x * 0.5, loss_type=loss_type)
    assert "rescale" in str(info.value)


@examples(50)
@given(
    data=st.data(),
    name=st.sampled_from(sorted(FUNCTIONS)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    share=st.floats(0.05, 0.95),
)
def test_band_width_times_eps_below_the_dtype_floor_raises(data, name, dtype, share):
    s_max, _ = supported_limits(dtype)
    floor = math.log10(1.0 / s_max)  # float32: -13.2, float64: -148.1
    log_product = data.draw(st.floats(max(floor - 100.0, -300.0), floor - 0.01), label="log10(band_width * eps)")
    band_width, eps = 10.0 ** (log_product * share), 10.0 ** (log_product * (1.0 - share))
    x = torch.rand(1, 3, 3, 3, dtype=dtype)
    with pytest.raises(ValueError, match=r"\bband_width\b.*\beps\b"):
        FUNCTIONS[name](x, x, band_width=band_width, eps=eps)
    # just above the floor, the same call works and is finite
    above = 10.0 ** ((floor + 0.01) * share), 10.0 ** ((floor + 0.01) * (1.0 - share))
    value = FUNCTIONS[name](x, x, band_width=above[0], eps=above[1])
    assert bool(torch.isfinite(value if isinstance(value, torch.Tensor) else value.log_similarity).all())


@pytest.mark.parametrize("kind", [ContextualLoss, ContextualBilateralLoss])
@pytest.mark.parametrize(
    ("option", "bad"),
    [("band_width", 0.0), ("loss_type", "L2"), ("eps", -1.0), ("patch_size", 0), ("engine", "gpu"), ("center", 1)],
)
def test_modules_reject_bad_options_at_construction(kind, option, bad):
    with pytest.raises((TypeError, ValueError)) as info:
        kind(**{option: bad})
    assert _mentions(str(info.value), option), str(info.value)


# Bad inputs of issue 13 item 5, which used to raise unclear or untyped errors.
@pytest.mark.parametrize(
    ("case", "argument"),
    [
        (lambda x: contextual_loss(x, x, max_points=4, generator=123), "generator"),
        (lambda x: contextual_loss(x.to_sparse(), x), "x"),
        (lambda x: contextual_loss(np.zeros((1, 3, 4, 4), np.float32), x), "x"),
        (lambda x: ContextualLoss(patch_size=3)((x * 255).to(torch.uint8), x), "x"),
    ],
)
def test_item_5_inputs_raise_short_errors_naming_the_argument(case, argument):
    with pytest.raises((TypeError, ValueError)) as info:
        case(torch.rand(1, 3, 4, 4))
    assert _mentions(str(info.value), argument) and len(str(info.value)) < 300, str(info.value)
