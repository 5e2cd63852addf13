"""engine.evaluate, the one engine entry point: its result, the old names over it, progress, bad input, auto."""

from __future__ import annotations

import math

import pytest
import torch

from contextual_loss import engine, maths
from contextual_loss.engine.types import SpatialTerm
from contextual_loss.options import ContextualOptions

GIB = 2**30


def _sets(b=2, n=40, m=30, c=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=gen, dtype=torch.float64)
    y = torch.randn(b, m, c, generator=gen, dtype=torch.float64)
    return maths.prepare_features(x, y, "cosine")


@pytest.mark.parametrize("name", ["dense", "streaming"])
def test_evaluate_and_the_old_entry_points_agree(name):
    x, y = _sets()
    spatial = SpatialTerm(0.2, "paper", torch.rand(40, 2, dtype=torch.float64), torch.rand(30, 2, dtype=torch.float64))
    options = ContextualOptions(band_width=0.3, engine=name, memory_budget=2000)
    result = engine.evaluate(x, y, options, spatial)
    kwargs = {"loss_type": "cosine", "band_width": 0.3, "eps": 1e-5, "spatial": spatial}
    assert result.best.grad_fn is None and result.prediction_index.dtype == torch.long
    torch.testing.assert_close(result.log_similarity, torch.logsumexp(result.best, 1) - math.log(30), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="evaluate"):
        old = engine.match(x, y, engine=name, memory_budget=2000, **kwargs)
        old_value = engine.log_similarity(x, y, engine=name, memory_budget=2000, **kwargs)
        if name == "dense":
            twins = engine.dense_log_similarity(x, y, **kwargs), engine.dense_match(x, y, **kwargs)
        else:
            twins = (
                engine.streaming_log_similarity(x, y, memory_budget=2000, **kwargs),
                engine.streaming_match(x, y, memory_budget=2000, **kwargs),
            )
    assert torch.equal(old.prediction_index, result.prediction_index)
    assert torch.equal(old.similarity, result.best.exp())
    assert torch.equal(old_value, result.log_similarity)
    assert torch.equal(twins[0], result.log_similarity)
    assert torch.equal(twins[1].prediction_index, result.prediction_index)


def test_streaming_progress_counts_the_strips_of_every_image():
    x, y = _sets(b=3, n=50, m=20)
    options = ContextualOptions(band_width=0.3, engine="streaming", memory_budget=2000)
    plan = engine.streaming_plan(50, 20, loss_type="cosine", dtype=torch.float64, memory_budget=2000)
    calls: list[tuple[int, int]] = []
    engine.evaluate(x, y, options, progress=lambda done, total: calls.append((done, total)))
    total = 3 * math.ceil(50 / plan.rows)
    assert plan.rows < 50
    assert calls == [(done, total) for done in range(1, total + 1)]
    calls.clear()
    engine.evaluate(x, y, options)  # no callback: nothing reported, and none left installed
    assert calls == []


def test_dense_progress_is_one_unit():
    x, y = _sets()
    calls: list[tuple[int, int]] = []
    engine.evaluate(x, y, ContextualOptions(engine="dense"), progress=lambda *a: calls.append(a))
    assert calls == [(1, 1)]


@pytest.mark.parametrize(
    ("x", "y", "options", "error", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(2, 5, 3), ContextualOptions(), TypeError, "x must be a 3-d floating-point"),
        (torch.zeros(1, 5, 3), torch.zeros(1, 5, 3, dtype=torch.long), ContextualOptions(), TypeError, "y must be"),
        (torch.zeros(1, 5, 3), torch.zeros(1, 5, 4), ContextualOptions(), ValueError, "must agree in B and C"),
        (torch.zeros(2, 5, 3), torch.zeros(1, 5, 3), ContextualOptions(), ValueError, r"got \(2, 5, 3\) and"),
        (torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), {"engine": "dense"}, TypeError, "options must be a Contextual"),
    ],
)
def test_bad_input_raises_clearly(x, y, options, error, match):
    with pytest.raises(error, match=match):
        engine.evaluate(x, y, options)


def test_auto_rule_on_cpu_is_the_measured_threshold():
    for device in ("cpu", "meta", "mps"):
        assert engine.auto_engine(1, 256, 256, 64, torch.float32, device) == "dense"  # 2^16 entries
        assert engine.auto_engine(1, 257, 256, 64, torch.float32, device) == "streaming"
        assert engine.auto_engine(4, 128, 129, 64, torch.float32, device) == "streaming"  # counts the batch


def test_auto_rule_on_cuda_is_a_memory_model():
    # Dense while 10 (B, N, M) matrices of the compute dtype fit 1/16 of the device's total memory.
    memory = 80 * GIB
    limit = memory / 16 / (10 * 4)  # float32 entries
    side = math.isqrt(int(limit))
    assert engine.auto_engine(1, side, side, 256, torch.float32, "cuda", memory) == "dense"
    assert engine.auto_engine(1, side + 1, side + 1, 256, torch.float32, "cuda", memory) == "streaming"
    assert engine.auto_engine(1, side, side, 256, torch.float16, "cuda", memory) == "dense"  # computed in float32
    assert engine.auto_engine(1, side, side, 256, torch.float64, "cuda", memory) == "streaming"  # twice the bytes
    assert engine.auto_engine(2, side, side, 256, torch.float32, "cuda", memory) == "streaming"
    assert engine.auto_engine(1, side, side, 256, torch.float32, "cuda", memory // 4) == "streaming"
    # Small problems are dense on any device, and the rule never looks at free memory.
    assert engine.auto_engine(1, 256, 256, 64, torch.float32, "cuda", GIB // 64) == "dense"


def test_choose_engine_reads_the_device_type():
    x = torch.zeros(1, 300, 3, device="meta")
    assert engine.choose_engine(x, x) == "streaming"  # meta: the CPU threshold


@pytest.mark.parametrize(("side", "engine_name", "last"), [(40, "streaming", None), (8, "dense", (1, 1))])
def test_reporting_block_reaches_evaluations_inside_the_modules(side, engine_name, last):
    from contextual_loss import ContextualLoss

    seen: list[tuple[int, int]] = []
    criterion = ContextualLoss(patch_size=3, engine=engine_name)
    x, y = torch.rand(2, 3, side, side), torch.rand(2, 3, side, side)
    with engine.reporting(lambda done, total: seen.append((done, total))):
        criterion(x, y)
    assert seen and seen[-1][0] == seen[-1][1]
    assert [done for done, _ in seen] == list(range(1, len(seen) + 1))
    if last is not None:
        assert seen == [last]
    seen.clear()
    criterion(x, y)  # outside the block: nothing reported
    assert seen == []


def test_reporting_is_local_to_its_thread():
    import threading

    seen: list[tuple[int, int]] = []
    x, y = torch.rand(1, 4, 30, 30), torch.rand(1, 4, 30, 30)
    options = ContextualOptions(engine="streaming")
    with engine.reporting(lambda done, total: seen.append((done, total))):
        worker = threading.Thread(target=lambda: engine.evaluate(x.flatten(2).mT, y.flatten(2).mT, options))
        worker.start()
        worker.join()
    assert seen == []
