"""The options shared by the sub-commands come from the library: its choices, defaults and extractors."""

from __future__ import annotations

import argparse

import pytest

from contextual_loss.cli import build_parser
from contextual_loss.cli.options import build_features, resolve_loss_defaults
from contextual_loss.features import IdentityFeatures, PatchFeatures
from contextual_loss.features.patches import PADDINGS
from contextual_loss.features.vgg import POOLINGS
from contextual_loss.options import COBI_FORMS, DEFAULTS, LOSS_TYPES, WEIGHT_SP_BY_DISTANCE, feature_defaults


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
    assert actions["cobi_form"].default == DEFAULTS.form
    # Left out, the distance and CoBi's spatial weight follow the features (resolve_loss_defaults).
    assert actions["loss_type"].default is None and actions["weight_sp"].default is None
    for distance, weight in WEIGHT_SP_BY_DISTANCE.items():
        assert f"{weight:g} for {distance}" in actions["weight_sp"].help


@pytest.mark.parametrize(
    ("argv", "kind"),
    [([], "pixels"), (["--pixels"], "pixels"), (["--vgg-layers", "relu1_1", "--weights", "random"], "deep")],
)
def test_left_out_loss_options_follow_the_features(argv: list[str], kind: str) -> None:
    args = build_parser().parse_args(["compare", "a.png", "b.png", *argv])
    spec = build_features(args)
    assert spec.kind == kind
    assert resolve_loss_defaults(args, spec) == ["loss_type", "weight_sp"]
    assert (args.loss_type, args.weight_sp) == (feature_defaults(kind).loss_type, feature_defaults(kind).weight_sp)
    given = build_parser().parse_args(["compare", "a.png", "b.png", *argv, "--loss-type", "l2"])
    assert resolve_loss_defaults(given, spec) == ["weight_sp"]
    assert (given.loss_type, given.weight_sp) == ("l2", WEIGHT_SP_BY_DISTANCE["l2"])


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
