"""The options shared by the sub-commands come from the library: its choices, defaults and extractors."""

from __future__ import annotations

import argparse

import pytest

from contextual_loss.cli import build_parser
from contextual_loss.cli.options import build_features
from contextual_loss.features import IdentityFeatures, PatchFeatures
from contextual_loss.features.patches import PADDINGS
from contextual_loss.features.vgg import POOLINGS
from contextual_loss.options import COBI_FORMS, DEFAULT_WEIGHT_SP, DEFAULTS, LOSS_TYPES


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in subparsers.choices[command]._actions}


@pytest.mark.parametrize("command", ["compare", "explain"])
def test_choices_and_defaults_are_the_librarys(command: str) -> None:
    actions = _actions(command)
    assert tuple(actions["loss_type"].choices) == LOSS_TYPES
    assert tuple(actions["cobi_form"].choices) == COBI_FORMS
    assert tuple(actions["padding"].choices) == PADDINGS
    assert tuple(actions["vgg_pooling"].choices) == POOLINGS
    assert actions["band_width"].default == DEFAULTS.band_width
    assert actions["loss_type"].default == DEFAULTS.loss_type
    assert actions["cobi_form"].default == DEFAULTS.form
    assert actions["weight_sp"].default == DEFAULT_WEIGHT_SP


def _features(*argv: str):
    args = build_parser().parse_args(["compare", "a.png", "b.png", *argv])
    return build_features(args)


def test_pixels_and_patches_use_the_librarys_extractors() -> None:
    pixels = _features("--pixels")
    assert isinstance(pixels.extractor, IdentityFeatures) and pixels.layer_weights == {"input": 1.0}
    patches = _features("--patch-size", "3", "--padding", "zero")
    assert isinstance(patches.extractor, PatchFeatures)
    assert (patches.extractor.size, patches.extractor.padding) == (3, "zero")
    assert patches.layer_weights == {"patches": 1.0} and patches.layers is None
