"""Inside the supported range (``_validation.check_supported_range``) everything is finite.

Options and feature magnitudes are drawn up to the edges of the range of each compute dtype:
band_width * eps down to its floor, l1/l2 features up to the largest magnitude the distances
allow, cosine features from the smallest magnitude whose gradients fit to the largest float.
The loss, its gradients and the matches must be finite, and the loss within [0, log M], on both
engines and both strip-kernel implementations; just outside, the call raises (test_bad_inputs).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.property.strategies import Case, feature_maps
from tests.property.support import KERNELS, examples, using_kernels

from contextual_loss._validation import check_supported_range, supported_limits
from contextual_loss.functional import contextual_loss


@st.composite
def edge_cases(draw) -> tuple[Case, torch.dtype]:
    """A case in the supported range of a drawn dtype, with options and magnitudes near its edges."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    s_max, t_max = supported_limits(dtype)
    x, y, structure = draw(feature_maps(max_side=4, max_channels=6))
    loss_type = draw(st.sampled_from(["cosine", "l1", "l2"]))
    # band_width * eps from its floor (1 / s_max) up to 1, split between the two at random
    log_floor = -math.log10(s_max) + 1e-9  # (+ rounding of the powers below)
    log_product = draw(st.floats(log_floor, 0.0)) if draw(st.booleans()) else log_floor + draw(st.floats(0.0, 0.5))
    share = draw(st.floats(0.0, 1.0))
    band_width = min(10.0 ** (log_product * share), 1e3)
    eps = 10.0**log_product / band_width
    scale = 1.0 / (band_width * eps)
    channels = x.shape[1]
    if loss_type == "cosine":
        low, high = scale / (32.0 * torch.finfo(torch.float64).eps * t_max), torch.finfo(dtype).max / 8
    else:
        room = min(t_max, t_max / scale) / 2  # distances up to room keep d and d * scale below t_max
        low = torch.finfo(dtype).tiny * 1e3
        high = math.sqrt(room / (4 * channels)) if loss_type == "l2" else room / (2 * channels)
    log_low = math.log10(max(low, torch.finfo(dtype).tiny * 1e3)) + 1e-6  # (+ rounding of the values below)
    log_high = math.log10(high) - 1e-9
    magnitude = 10.0 ** draw(st.floats(log_low, log_high) | st.sampled_from([log_low, log_high]))
    peak = float(torch.maximum(x.abs().max(), y.abs().max()))
    if peak > 0:
        x, y = x / peak * magnitude, y / peak * magnitude
    x, y = x.to(dtype), y.to(dtype)
    # values that round to 0 or to a subnormal in dtype keep the case in range: check it as the library does
    check_supported_range(
        band_width=band_width, eps=eps, loss_type=loss_type, dtype=dtype, channels=channels,
        magnitude=float(torch.maximum(x.abs().max(), y.abs().max())),
    )  # fmt: skip
    case = Case(x=x, y=y, structure=structure, loss_type=loss_type, band_width=band_width, eps=eps)
    return case, dtype


@examples(125)
@given(edge=edge_cases(), engine=st.sampled_from(["dense", "streaming"]), kernels=st.sampled_from(KERNELS))
def test_everything_is_finite_in_the_supported_range(edge, engine, kernels):
    case, _ = edge
    x = case.x.clone().requires_grad_(True)
    y = case.y.clone().requires_grad_(True)
    with using_kernels(kernels):
        loss = case.loss(x, y, engine=engine, memory_budget=256)
        loss.sum().backward()
        matched = case.match(case.x, case.y, engine=engine, memory_budget=256)
    loss = loss.detach()
    assert bool(torch.isfinite(loss).all()), loss
    assert float(loss.min()) >= 0.0 and float(loss.max()) <= math.log(case.m) * (1 + 1e-6) + 1e-6
    assert bool(torch.isfinite(x.grad).all()), "dx is not finite"
    assert bool(torch.isfinite(y.grad).all()), "dy is not finite"
    assert bool(torch.isfinite(matched.similarity).all() and torch.isfinite(matched.log_similarity).all())


# The examples of issue 13, item 3: each used to give NaN or inf (loss or gradients); now each is
# rejected up front with an error naming what is out of range. Just inside, results are finite.
_X32 = torch.rand(1, 8, 6, 6, generator=torch.Generator().manual_seed(0))
_Y32 = torch.rand(1, 8, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("x", "y", "options", "named"),
    [
        (_X32, _Y32, {"band_width": 1e-20}, "band_width"),  # float32: NaN/inf gradients
        (_X32, _Y32, {"band_width": 1e-40}, "band_width"),  # float32: NaN/inf loss
        (_X32.double(), _Y32.double(), {"band_width": 1e-300}, "band_width"),  # float64: non-finite gradients
        (_X32, _X32, {"eps": 1e-40}, "eps"),  # x == y: NaN/inf
        (_X32 * 1e20, _Y32 * 1e20, {"loss_type": "l2"}, "x and y"),  # dense NaN, streaming inf
        (_X32 * 1e30, _Y32 * 1e30, {"loss_type": "l2"}, "x and y"),
    ],
)
@pytest.mark.parametrize("engine", ["dense", "streaming"])
def test_issue_examples_are_rejected_with_the_supported_range(x, y, options, named, engine):
    with pytest.raises(ValueError, match=re.escape(named)) as info:
        contextual_loss(x, y, engine=engine, **options)
    assert ">=" in str(info.value) or "below" in str(info.value)  # states the supported range


@pytest.mark.parametrize("engine", ["dense", "streaming"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss_type", ["cosine", "l1", "l2"])
def test_just_inside_the_band_width_floor_everything_is_finite(engine, dtype, loss_type):
    s_max, _ = supported_limits(dtype)
    band_width = 1.0001 / (s_max * 1e-5)  # eps = 1e-5 (default)
    x = _X32.to(dtype).clone().requires_grad_(True)
    loss = contextual_loss(x, x.detach(), band_width=band_width, loss_type=loss_type, engine=engine)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(x.grad).all())
    loss = contextual_loss(x, _Y32.to(dtype), band_width=band_width, loss_type=loss_type, engine=engine)
    assert bool(torch.isfinite(loss))


@pytest.mark.parametrize("engine", ["dense", "streaming"])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e-12, 1e-6, 1.0, 1e20, 1e30])
def test_cosine_does_not_depend_on_the_features_scale(engine, magnitude):
    # float32 features of magnitude <= 1e-25 used to count as zero vectors (loss log M = 3.58, no
    # gradient), 1e-20 gave NaN gradients and 1e20 overflowed the norms. In the supported range
    # (from 8.8e-13 at these options) the loss is that of the features at scale 1; below it, an error.
    ref = contextual_loss(_X32, _Y32, engine=engine)
    x = (_X32.double() * magnitude).float().requires_grad_(True)  # (a new leaf)
    y = (_Y32.double() * magnitude).float()
    if magnitude < 8.8e-13:
        with pytest.raises(ValueError, match="too small"):
            contextual_loss(x, y, engine=engine)
        return
    loss = contextual_loss(x, y, engine=engine)
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().max()) > 0
