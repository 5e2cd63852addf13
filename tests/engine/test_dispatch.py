"""Engine selection (``engine=``) and the ``memory_budget`` option through the public API."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import graph_node_names

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss import functional as CF
from contextual_loss.engine import DENSE_MAX_ENTRIES, choose_engine


def test_auto_picks_dense_for_small_and_streaming_for_large_problems():
    small = torch.zeros(1, 64, 3)
    assert choose_engine(small, small) == "dense"
    n = int(DENSE_MAX_ENTRIES**0.5) + 1
    large = torch.zeros(1, n, 3)
    assert choose_engine(large, large) == "streaming"
    batch = torch.zeros(4, n - 1, 3)
    assert choose_engine(batch, batch) == "dense"  # the crossover is per image
    wide = torch.zeros(1, n, 256)
    assert choose_engine(wide, wide) == "dense"  # and grows with the channels
    assert choose_engine(large, large, "dense") == "dense"
    assert choose_engine(small, small, "streaming") == "streaming"


def test_auto_uses_streaming_beyond_the_threshold():
    # Above the threshold the loss must come from the streaming operator (its backward node).
    side = int(DENSE_MAX_ENTRIES**0.25) + 2
    x = torch.rand(1, 3, side, side, requires_grad=True)
    loss = CF.contextual_loss(x, torch.rand(1, 3, side, side), reduction="none")
    names = graph_node_names(loss)
    assert any("streaming_forward" in name for name in names), names


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"engine": "fast"}, ValueError, "engine must be one of .*got 'fast'"),
        ({"engine": None}, ValueError, "engine must be one of"),
        ({"memory_budget": 0}, ValueError, "memory_budget must be >= 1, got 0"),
        ({"memory_budget": -5}, ValueError, "memory_budget must be >= 1"),
        ({"memory_budget": 1.5e6}, TypeError, "memory_budget must be an int, got float"),
        ({"memory_budget": True}, TypeError, "memory_budget must be an int"),
    ],
)
def test_bad_engine_options_raise(kwargs, error, match):
    x = torch.rand(1, 3, 4, 4)
    for fn in (CF.contextual_loss, CF.contextual_similarity, CF.contextual_bilateral_loss, CF.contextual_match):
        with pytest.raises(error, match=match):
            fn(x, x, **kwargs)
    for module in (ContextualLoss, ContextualBilateralLoss):
        with pytest.raises(error, match=match):
            module(**kwargs)


def test_engines_agree_through_every_function():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 5, 7, 6, generator=gen, dtype=torch.float64)
    for fn in (CF.contextual_loss, CF.contextual_similarity, CF.contextual_bilateral_loss):
        want = fn(x, y, engine="dense")
        got = fn(x, y, engine="streaming", memory_budget=1000)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
