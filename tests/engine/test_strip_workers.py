"""Strips shared among worker threads (engine/streaming/_pool.py): scheduling, plans, and results that do not
depend on which worker ran which strip."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time

import pytest
import torch

from contextual_loss import functional as CF
from contextual_loss.engine import reporting, streaming_plan, strips
from contextual_loss.engine.streaming import _pool


@contextlib.contextmanager
def threads(count: int):
    """PyTorch's intra-op threads of this thread, for a block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def small_strips_shared(monkeypatch):
    """Share strips of any size among workers, so that these small problems use the pool."""
    monkeypatch.setattr(strips, "MIN_SHARED_STRIP_ENTRIES", 1)


# ---------------------------------------------------------------------------------------------- run


def test_run_does_every_strip_once_on_single_threaded_workers():
    seen, counts, lock = [], set(), threading.Lock()

    def work(worker, k):
        with lock:
            seen.append((worker, k))
            counts.add(torch.get_num_threads())
        time.sleep(0.001)

    with threads(3):
        _pool.run(20, 3, work)
        assert torch.get_num_threads() == 3  # the caller's count is untouched
    assert sorted(k for _, k in seen) == list(range(20))
    assert {w for w, _ in seen} <= {0, 1, 2}
    assert counts == {1}


def test_one_worker_runs_in_order_in_the_calling_thread():
    seen = []
    _pool.run(5, 1, lambda worker, k: seen.append((worker, k, threading.get_ident())))
    assert seen == [(0, k, threading.get_ident()) for k in range(5)]


def test_a_strip_waits_for_the_one_before_it_in_its_lane():
    events, lock = [], threading.Lock()
    rng = random.Random(0)
    delays = [rng.uniform(0.0, 0.004) for _ in range(24)]

    def work(worker, k):
        with lock:
            events.append(("start", k))
        time.sleep(delays[k])
        with lock:
            events.append(("end", k))

    _pool.run(24, 2, work, lanes=3)
    at = {event: i for i, event in enumerate(events)}
    for k in range(3, 24):
        assert at[("end", k - 3)] < at[("start", k)], k


def test_progress_is_reported_in_the_calling_thread():
    calls = []
    _pool.run(7, 2, lambda worker, k: time.sleep(0.001), done=lambda k: calls.append((k, threading.get_ident())))
    assert sorted(k for k, _ in calls) == list(range(7))
    assert {ident for _, ident in calls} == {threading.get_ident()}


def test_an_error_in_a_worker_is_raised_and_stops_the_others():
    started = []

    def work(worker, k):
        started.append(k)
        if k == 2:
            raise ValueError("strip 2 failed")
        time.sleep(0.002)

    with pytest.raises(ValueError, match="strip 2 failed"):
        _pool.run(200, 2, work)
    assert len(started) < 200


def test_workers_keep_the_callers_inference_mode():
    kinds = []
    with torch.inference_mode():
        _pool.run(4, 2, lambda worker, k: kinds.append(torch.empty(1).is_inference()))
    assert kinds == [True] * 4


def test_a_forked_process_makes_its_own_pool(monkeypatch):
    pool = _pool._pool(2)
    monkeypatch.setattr(pool, "pid", -1)  # as a child sees its parent's pool: no threads behind it
    assert _pool._pool(2) is not pool
    seen = []
    _pool.run(3, 2, lambda worker, k: seen.append(k))
    assert sorted(seen) == [0, 1, 2]


def test_call_runs_a_pass_single_threaded_in_a_pool_thread():
    def body(a, b):
        return a + b, torch.get_num_threads(), threading.get_ident()

    with threads(2):
        value, count, ident = _pool.call(2, body, 2, 3)
    assert (value, count) == (5, 1)
    assert ident != threading.get_ident()
    assert _pool.call(1, body, 2, 3)[2] == threading.get_ident()  # one worker: here


def test_call_raises_what_the_pass_raised():
    def body():
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        _pool.call(2, body)


def test_a_pass_shares_its_strips_with_the_pool_and_reports_them_here():
    seen, reports = [], []

    def body():
        _pool.run(12, 2, lambda worker, k: (seen.append((worker, k)), time.sleep(0.002)), done=reports.append)

    _pool.call(2, body)
    assert sorted(k for _, k in seen) == list(range(12))
    assert all(k in range(12) for k in reports) and len(reports) == 12
    assert {w for w, _ in seen} <= {0, 1}


def test_a_raising_progress_callback_stops_the_pass(small_strips_shared):
    x, y = _maps(hw=(16, 16))

    def callback(done, total):
        raise RuntimeError(f"stop at {done} of {total}")

    with threads(2), reporting(callback), pytest.raises(RuntimeError, match="stop at 1 of"):
        CF.contextual_loss(x, y, 0.4, engine="streaming", memory_budget=4096)
    with threads(2):  # the pool is still usable
        CF.contextual_loss(x, y, 0.4, engine="streaming", memory_budget=4096)


def test_concurrent_evaluations_share_the_pool_without_deadlock(small_strips_shared):
    x, y = _maps(hw=(16, 16), dtype=torch.float64)
    with threads(1):
        want = CF.contextual_loss(x, y, 0.4, engine="streaming", memory_budget=4096)
    got, errors = [None] * 4, []

    def evaluate(i):
        try:
            with threads(2):
                got[i] = CF.contextual_loss(x, y, 0.4, engine="streaming", memory_budget=4096)
        except BaseException as exc:
            errors.append(exc)

    callers = [threading.Thread(target=evaluate, args=(i,)) for i in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=120)
    assert not errors and not any(caller.is_alive() for caller in callers)
    for value in got:
        torch.testing.assert_close(value, want, rtol=1e-12, atol=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_strips_after_its_parent_did():
    _pool.run(4, 2, lambda worker, k: None)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: its parent's threads are gone
        code = 1
        try:
            seen = []
            _pool.run(6, 2, lambda worker, k: seen.append(k))
            code = 0 if sorted(seen) == list(range(6)) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung running strips")


# --------------------------------------------------------------------------------------------- plans


@pytest.mark.parametrize("n", [2, 3, 200, 700, 1000, 4096])
def test_shared_plans_fit_the_budget_in_whole_rounds(n):
    m = 16384
    plan = strips.plan_strips(n, m, dtype=torch.float32, memory_budget=32 * 2**20, tiles=2, workers=2)
    if plan.workers == 1:
        assert n <= 128  # strips of 64 rows and fewer (1M entries) stay with one worker
        assert plan.rows * m < strips.MIN_SHARED_STRIP_ENTRIES or plan.rows >= n
        return
    assert plan.workspace_bytes <= 32 * 2**20
    count = -(-n // plan.rows)
    assert count % plan.workers == 0 or count * plan.rows - n >= plan.rows  # whole rounds, up to the last strip
    assert plan.rows * m >= strips.MIN_SHARED_STRIP_ENTRIES


def test_small_problems_keep_one_worker():
    assert strips.plan_strips(100, 100, dtype=torch.float32, memory_budget=2**26, tiles=2, workers=2).workers == 1
    assert strips.plan_strips(1, 10**6, dtype=torch.float32, memory_budget=2**26, tiles=2, workers=2).workers == 1
    # 32 x 32 maps (two strips of 512 x 1024 entries): one worker, measured faster (docs/engine.md)
    assert strips.plan_strips(1024, 1024, dtype=torch.float32, memory_budget=2**26, tiles=2, workers=2).workers == 1
    assert strips.plan_strips(4096, 4096, dtype=torch.float32, memory_budget=2**26, tiles=2, workers=2).workers == 2


def test_streaming_plan_reports_the_workers():
    with threads(2):
        plan = streaming_plan(16384, 16384, loss_type="cosine")
    assert plan.workers == (1 if _pool.threads_for(torch.device("cpu"), "eager") == 1 else 2)
    with threads(1):
        assert streaming_plan(16384, 16384, loss_type="cosine").workers == 1


# ------------------------------------------------------------------------------------------- results


def _maps(c=5, hw=(12, 12), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, c, *hw, generator=gen, dtype=dtype), torch.rand(2, c, *hw, generator=gen, dtype=dtype)


def _loss(x, y, loss_type, cobi):
    kw = {"reduction": "none", "engine": "streaming", "memory_budget": 4096}
    if cobi is None:
        return CF.contextual_loss(x, y, 0.4, loss_type, **kw)
    return CF.contextual_bilateral_loss(x, y, 0.3, 0.4, loss_type, form=cobi, **kw)


def _value_and_grads(x, y, loss_type, cobi, workers):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    with threads(workers):
        value = _loss(x, y, loss_type, cobi)
        weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype)
        gx, gy = torch.autograd.grad((value * weights).sum(), (x, y))
    return value.detach(), gx, gy


@pytest.mark.usefixtures("small_strips_shared", "strip_kernels")
@pytest.mark.parametrize("cobi", [None, "paper", "released"])
@pytest.mark.parametrize("loss_type", ["cosine", "l2", "l1"])
def test_shared_strips_match_one_worker(loss_type, cobi):
    x, y = _maps()
    plan = streaming_plan(144, 144, loss_type=loss_type, dtype=torch.float64, memory_budget=4096)
    with threads(2):
        assert streaming_plan(144, 144, loss_type=loss_type, dtype=torch.float64, memory_budget=4096).workers == 2
    assert plan.workers == 1 or torch.get_num_threads() > 1
    alone = _value_and_grads(x, y, loss_type, cobi, 1)
    shared = _value_and_grads(x, y, loss_type, cobi, 2)
    for got, want in zip(shared, alone, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


class _Shuffled:
    """Wraps ``_pool.run`` so that one worker sleeps before each strip: the strips finish out of order."""

    def __init__(self, slow_worker: int) -> None:
        self.slow_worker, self.run = slow_worker, _pool.run

    def __call__(self, count, workers, work, **kwargs):
        def slowed(worker, k):
            if worker == self.slow_worker:
                time.sleep(0.003)
            work(worker, k)

        return self.run(count, workers, slowed, **kwargs)


@pytest.mark.usefixtures("small_strips_shared", "strip_kernels")
@pytest.mark.parametrize("loss_type", ["cosine", "l2"])
def test_results_do_not_depend_on_the_scheduling(loss_type, monkeypatch):
    x, y = _maps(dtype=torch.float32, seed=3)
    x[:, :, 11] = x[:, :, 0]  # duplicated prediction rows in the first and last strips: column ties
    runs = []
    for slow in (0, 1):
        monkeypatch.setattr(_pool, "run", _Shuffled(slow))
        runs.append(_value_and_grads(x, y, loss_type, None, 2))
    for got, want in zip(runs[1], runs[0], strict=True):
        assert torch.equal(got, want)


@pytest.mark.usefixtures("small_strips_shared", "strip_kernels")
def test_ties_across_workers_go_to_the_first_row(monkeypatch):
    x, y = _maps(seed=4)
    x[:, :, 11] = x[:, :, 0]  # rows 0..11 and 132..143 are the same vectors
    want = CF.contextual_match(x, y, 0.4, "cosine", engine="dense").prediction_index
    monkeypatch.setattr(_pool, "run", _Shuffled(0))  # the worker with the first strip is the slow one
    with threads(2):
        got = CF.contextual_match(x, y, 0.4, "cosine", engine="streaming", memory_budget=4096).prediction_index
    assert torch.equal(got, want)
    assert bool((want < 12).any())


@pytest.mark.usefixtures("small_strips_shared", "strip_kernels")
def test_progress_counts_every_strip_in_order_with_shared_strips():
    x, y = _maps()
    seen = []
    with threads(2), reporting(lambda done, total: seen.append((done, total, threading.get_ident()))):
        CF.contextual_loss(x, y, 0.4, engine="streaming", memory_budget=4096)
    total = seen[-1][1]
    assert [done for done, _, _ in seen] == list(range(1, total + 1))
    assert {ident for _, _, ident in seen} == {threading.get_ident()}


def test_merging_the_workers_columns_sends_ties_to_the_smaller_row():
    from contextual_loss.engine.kernels import ColumnMax
    from contextual_loss.engine.streaming._forward import _merge, _Worker

    def worker(best, index, feature):
        w = _Worker(*([None] * 4), ColumnMax(torch.tensor(best), torch.tensor(index)), torch.tensor(feature), None)
        return w

    inf = float("inf")
    first = worker([1.0, 2.0, 3.0, -inf], [5, 9, 2, 0], [10.0, 20.0, 30.0, 40.0])
    second = worker([1.0, 2.5, 3.0, -inf], [4, 1, 7, 0], [11.0, 21.0, 31.0, 41.0])
    columns = ColumnMax(torch.empty(4), torch.empty(4, dtype=torch.long))
    feature = torch.empty(4)
    _merge(columns, feature, [first, second])
    assert columns.best.tolist() == [1.0, 2.5, 3.0, -inf]
    assert columns.index.tolist() == [4, 1, 2, 0]  # the tie at column 0 goes to row 4 of the second worker
    assert feature.tolist() == [11.0, 21.0, 30.0, 40.0]
