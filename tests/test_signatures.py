"""The drop-in signatures and the one options object agree.

The public functions and modules pass their ``locals()`` to ``ContextualOptions.from_arguments``,
which takes the arguments named like its fields. These tests make that safe: every parameter is
either an option or one the API uses itself (a misspelt option would otherwise be ignored), every
option's default is the one ``ContextualOptions`` declares, and the signatures stay the drop-in
ones (contextual_loss_pytorch's positional order: band_width, loss_type, use_vgg, vgg_layer; CoBi
with weight_sp first).
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.explain import explain_match
from contextual_loss.features.compose import select_features
from contextual_loss.functional import (
    contextual_bilateral_loss,
    contextual_loss,
    contextual_match,
    contextual_similarity,
)
from contextual_loss.options import AUTO, DEFAULT_WEIGHT_SP, DEFAULTS, FUNCTIONAL_COBI_BAND_WIDTH, ContextualOptions

#: The modules' distance and CoBi's spatial weight follow the features unless given.
MODULES = (ContextualLoss, ContextualBilateralLoss)
MODULE_DEFAULTS = {"loss_type": AUTO, "weight_sp": None}

OPTION_NAMES = {field.name for field in dataclasses.fields(ContextualOptions)}
FEATURE_NAMES = set(inspect.signature(select_features).parameters)

#: Each API's parameters in order (today's drop-in signatures) and those that are not options.
SIGNATURES = {
    contextual_similarity: (
        "x y band_width loss_type eps center max_points sample generator engine memory_budget",
        {"x", "y", "generator"},
    ),
    contextual_loss: (
        "x y band_width loss_type eps center reduction max_points sample generator engine memory_budget",
        {"x", "y", "reduction", "generator"},
    ),
    contextual_bilateral_loss: (
        "x y weight_sp band_width loss_type form eps center reduction max_points sample generator engine memory_budget",
        {"x", "y", "reduction", "generator"},
    ),
    contextual_match: ("x y band_width loss_type weight_sp form eps center engine memory_budget", {"x", "y"}),
    explain_match: (
        "x y band_width loss_type weight_sp form eps center max_points sample generator matrices",
        {"x", "y", "generator", "matrices"},
    ),
    ContextualLoss: (
        "band_width loss_type use_vgg vgg_layer layers features weights pooling input_range patch_size padding "
        "eps center reduction max_points sample engine memory_budget",
        FEATURE_NAMES | {"reduction"},
    ),
    ContextualBilateralLoss: (
        "weight_sp band_width loss_type use_vgg vgg_layer form layers features weights pooling input_range "
        "patch_size padding eps center reduction max_points sample engine memory_budget",
        FEATURE_NAMES | {"reduction"},
    ),
}


def _parameters(api: object) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(api).parameters.items() if name != "self"}  # type: ignore[arg-type]


@pytest.mark.parametrize("api", SIGNATURES, ids=lambda api: api.__name__)
def test_the_drop_in_signature_is_kept(api) -> None:
    order, _ = SIGNATURES[api]
    assert list(_parameters(api)) == order.split()


@pytest.mark.parametrize("api", SIGNATURES, ids=lambda api: api.__name__)
def test_every_parameter_is_an_option_or_used_by_the_api_itself(api) -> None:
    _, own = SIGNATURES[api]
    unknown = set(_parameters(api)) - OPTION_NAMES - own
    assert not unknown, f"{api.__name__}: {sorted(unknown)} would be ignored by ContextualOptions.from_arguments"


@pytest.mark.parametrize("api", SIGNATURES, ids=lambda api: api.__name__)
def test_option_defaults_are_the_declared_ones(api) -> None:
    bilateral = api in (contextual_bilateral_loss, ContextualBilateralLoss)
    for name, parameter in _parameters(api).items():
        if name in OPTION_NAMES:
            expected = DEFAULT_WEIGHT_SP if bilateral and name == "weight_sp" else getattr(DEFAULTS, name)
            if api is contextual_bilateral_loss and name == "band_width":
                expected = FUNCTIONAL_COBI_BAND_WIDTH  # contextual_loss_pytorch's function: 1.0 (its modules: 0.5)
            if api in MODULES and name in ("loss_type", "weight_sp"):
                expected = MODULE_DEFAULTS[name]  # chosen by the features (feature_defaults)
            assert parameter.default == expected, (api.__name__, name)


def test_from_arguments_takes_only_the_fields() -> None:
    options = ContextualOptions.from_arguments({"x": 1, "band_width": 0.2, "reduction": "sum", "self": None})
    assert options == ContextualOptions(band_width=0.2)
    with pytest.raises(TypeError, match="weight_sp must be a real number, got NoneType"):
        ContextualOptions.from_arguments({"weight_sp": None}, bilateral=True)
