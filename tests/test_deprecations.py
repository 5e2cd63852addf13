"""Renamed and moved public names keep working for one release, each with a DeprecationWarning naming the new place."""

from __future__ import annotations

import importlib

import pytest
import torch

from contextual_loss.engine.types import ContextualMatch
from contextual_loss.functional import contextual_match

#: old module, old name -> new module, new name.
MOVED = [
    *[
        ("contextual_loss.synthetic", name, "contextual_loss.demo.images", name)
        for name in ("gaussian_blur", "periodic_pattern", "rotate", "texture")
    ],
    *[
        ("contextual_loss.synthetic", name, "contextual_loss.demo.seed_example", name)
        for name in ("SEED_BAND_WIDTH", "SEED_CX", "SEED_X", "SEED_Y", "seed_images")
    ],
    *[
        ("contextual_loss.analysis", name, "contextual_loss.demo.misalignment", name)
        for name in ("MisalignmentRow", "MisalignmentStudy", "misalignment_study")
    ],
    *[
        ("contextual_loss.analysis", name, "contextual_loss.demo.statistics", name)
        for name in ("distinct_match_fraction", "gaussian_kl", "spearman", "unique_match_fraction")
    ],
    ("contextual_loss.analysis", "seed_permutations", "contextual_loss.demo.seed_example", "seed_permutations"),
    ("contextual_loss.viz", "plot_misalignment", "contextual_loss.demo.misalignment", "plot_misalignment"),
    ("contextual_loss.maths", "log_cx_from_matrix", "contextual_loss.maths", "log_similarity_from_matrix"),
    *[
        ("contextual_loss.functional", name, "contextual_loss.options", name)
        for name in ("LOSS_TYPES", "CENTERS", "REDUCTIONS", "COBI_FORMS")
    ],
    ("contextual_loss.cli.demo", "run", "contextual_loss.cli.demo_command", "run"),
    ("contextual_loss.cli.compare", "compare_images", "contextual_loss.cli.compare_command", "compare_images"),
    ("contextual_loss.cli.explain", "register", "contextual_loss.cli.explain_command", "register"),
    ("contextual_loss.cli.download_weights", "run", "contextual_loss.cli.download_weights_command", "run"),
]


@pytest.mark.parametrize(("old_module", "old_name", "new_module", "new_name"), MOVED)
def test_old_spelling_warns_and_gives_the_new_object(old_module, old_name, new_module, new_name) -> None:
    old = importlib.import_module(old_module)
    pattern = f"{old_module}.{old_name} is deprecated .* use {new_module}.{new_name}"
    with pytest.warns(DeprecationWarning, match=pattern):
        value = getattr(old, old_name)
    assert value is getattr(importlib.import_module(new_module), new_name)


def test_from_import_warns_at_the_importing_line() -> None:
    with pytest.warns(DeprecationWarning) as records:
        from contextual_loss.synthetic import texture  # noqa: F401
    assert records[0].filename == __file__


def test_unknown_names_still_raise_attribute_error() -> None:
    for module in ("contextual_loss.synthetic", "contextual_loss.maths", "contextual_loss.cli.compare"):
        with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
            importlib.import_module(module).no_such_name  # noqa: B018


def test_contextual_match_index_is_prediction_index() -> None:
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    match = contextual_match(x, x.flip(-1))
    with pytest.warns(DeprecationWarning, match=r"ContextualMatch.index is deprecated .*prediction_index"):
        index = match.index
    assert index is match.prediction_index
    log_similarity, prediction_index, similarity = match  # still a named tuple
    assert all(a is b for a, b in zip((log_similarity, prediction_index, similarity), match, strict=True))
    assert match._fields == ("log_similarity", "prediction_index", "similarity")


def test_contextual_match_accepts_the_old_keyword() -> None:
    values = torch.zeros(2), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    with pytest.warns(DeprecationWarning, match=r"ContextualMatch\(index=...\) is deprecated"):
        match = ContextualMatch(values[0], index=values[1], similarity=values[2])
    assert match.prediction_index is values[1]
