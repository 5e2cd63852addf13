"""engine.evaluate, the one engine entry point: its result, the old names over it, progress, bad input, auto."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import graph_node_names

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


def test_auto_rule_on_cpu_is_a_per_image_crossover_that_grows_with_channels():
    for device in ("cpu", "meta", "mps"):
        # C <= 128: dense up to 2^15 entries per image (181 x 181), whatever the batch.
        assert engine.auto_engine(1, 181, 181, 75, torch.float32, device) == "dense"
        assert engine.auto_engine(1, 182, 181, 75, torch.float32, device) == "streaming"
        assert engine.auto_engine(16, 181, 181, 75, torch.float32, device) == "dense"  # the batch does not count
        assert engine.auto_engine(8, 512, 512, 75, torch.float32, device) == "streaming"  # the recommended patches
        assert engine.auto_engine(1, 181, 181, 1, torch.float32, device) == "dense"  # below 128 channels: the floor
        # Above 128 channels the threshold grows in proportion to C: 2^16 at C = 256, 2^17 at C = 512 ...
        assert engine.auto_engine(8, 256, 256, 256, torch.float32, device) == "dense"
        assert engine.auto_engine(8, 256, 257, 256, torch.float32, device) == "streaming"
        assert engine.auto_engine(8, 256, 256, 255, torch.float32, device) == "streaming"
        assert engine.auto_engine(8, 256, 512, 512, torch.float32, device) == "dense"
        # ... and stops growing there.
        assert engine.auto_engine(8, 256, 513, 512, torch.float32, device) == "streaming"
        assert engine.auto_engine(8, 256, 513, 4096, torch.float32, device) == "streaming"


def test_auto_rule_never_takes_dense_beyond_its_memory_bound():
    # 10 (B, N, M) matrices of the compute dtype at most DENSE_MAX_BYTES = 256 MiB: 6.7 M float32 entries.
    assert engine.DENSE_MAX_BYTES == 2**28
    per_image = 256 * 512  # dense at C = 512 for any batch that fits
    largest = 2**28 // (10 * 4 * per_image)
    assert engine.auto_engine(largest, 256, 512, 512, torch.float32, "cpu") == "dense"
    assert engine.auto_engine(largest + 1, 256, 512, 512, torch.float32, "cpu") == "streaming"
    assert engine.auto_engine(largest, 256, 512, 512, torch.float16, "cpu") == "dense"  # computed in float32
    assert engine.auto_engine(largest, 256, 512, 512, torch.float64, "cpu") == "streaming"  # twice the bytes
    assert engine.auto_engine(largest // 2, 256, 512, 512, torch.float64, "cpu") == "dense"
    # The measured crossover at 8 x 512 x 512 patches would be far from the bound: 80 MiB.
    assert 8 * 512 * 512 * 10 * 4 == 80 * 2**20


def test_auto_rule_takes_dense_for_l1_wherever_its_memory_bound_allows():
    # l1 has no GEMM: the dense engine was faster at every size measured, so only memory limits it.
    cpu = ("cpu", None)
    assert engine.auto_engine(8, 512, 512, 75, torch.float32, *cpu, "l1") == "dense"  # the streaming rule's case
    assert engine.auto_engine(8, 512, 512, 75, torch.float32, *cpu, "l2") == "streaming"
    assert engine.auto_engine(8, 512, 512, 75, torch.float32, *cpu, "cosine") == "streaming"
    assert engine.auto_engine(8, 512, 512, 75, torch.float32, *cpu) == "streaming"  # unknown: as l2
    largest = 2**28 // (10 * 4 * 512 * 512)
    assert engine.auto_engine(largest, 512, 512, 75, torch.float32, *cpu, "l1") == "dense"
    assert engine.auto_engine(largest + 1, 512, 512, 75, torch.float32, *cpu, "l1") == "streaming"
    assert engine.auto_engine(1, 4096, 4096, 75, torch.float32, *cpu, "l1") == "streaming"  # 640 MiB of matrices


def test_evaluate_routes_by_the_distance():
    # The l1 comparison of a size the other distances stream runs on the dense engine (plain autograd).
    x = torch.rand(2, 200, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 200, 3, dtype=torch.float64)
    for loss_type, node in (("l1", "dense"), ("l2", "streaming")):
        assert engine.choose_engine(x, y, "auto", loss_type) == node
        xs, ys = maths.prepare_features(x, y, loss_type)
        log = engine.evaluate(xs, ys, ContextualOptions(loss_type=loss_type)).log_similarity
        names = graph_node_names(log)
        assert any("streaming_forward" in name for name in names) == (node == "streaming"), names


def test_dense_entries_per_image_is_monotone_in_channels():
    sizes = [engine.dense_entries_per_image(c) for c in range(1, 2049)]
    assert sizes == sorted(sizes)
    assert sizes[0] == engine.DENSE_MAX_ENTRIES == sizes[127]
    assert sizes[-1] == engine.DENSE_MAX_SCALE * engine.DENSE_MAX_ENTRIES == 2**17


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
    assert engine.auto_engine(1, 181, 181, 64, torch.float32, "cuda", GIB // 64) == "dense"
    assert engine.auto_engine(8, 256, 256, 256, torch.float32, "cuda", GIB // 64) == "dense"


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
