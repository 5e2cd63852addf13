r"""Strips shared among worker threads on the CPU, each running single-threaded PyTorch.

Within one strip the work is a few GEMMs and kernel passes; run with PyTorch's intra-op threads,
each of them is a parallel region that ends when its slowest thread ends. On a machine where
another process competes for a core, every region then waits for the thread that shares that
core, and the whole engine runs at the pace of the busiest core. Here each worker thread instead
runs whole strips with one intra-op thread and takes the next strip when it is free, so a worker
on a busy core simply does fewer strips (``benchmarks/bench_engine.py --load busy``: see
docs/engine.md).

The results do not depend on which worker ran which strip:

- in the forward pass each strip writes its own rows' statistics, and the column maxima of the
  workers are merged by the order-independent rule (greater, or equal with a smaller row);
- in the backward pass each strip writes its own rows of dx, while the strips' contributions to
  dy are summed into ``lanes`` accumulators, strip k into lane k mod lanes, in increasing k
  within a lane (strip k does not start before strip k - lanes has finished), and the lanes are
  added in order at the end. The sum therefore depends on the number of workers (which sets the
  number of lanes), as a multithreaded GEMM's may, but not on the scheduling.

The rest of a pass (the bookkeeping between and after the strips, O(N + M) work in many small
operations) would otherwise run in the calling thread with all its intra-op threads, one parallel
region per operation. :func:`call` runs a whole pass in a pool thread instead, single-threaded:
that thread is worker 0 of the pass's strips, the caller waits, and the callbacks of progress
reports are made in the caller's thread.

One worker (CUDA tensors, one intra-op thread, a single strip, or the Triton kernels, whose CPU
interpreter is a test tool) runs the strips in the calling thread, in order, exactly as before.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from contextual_loss.engine.streaming._problem import current_progress, reporting

__all__ = ["call", "lanes_for", "run", "threads_for"]

R = TypeVar("R")


def threads_for(device: torch.device, kernels_name: str) -> int:
    """Worker threads that may share the strips (the plan decides: :func:`~contextual_loss.engine.strips.plan_strips`).

    PyTorch's intra-op thread count on the CPU; 1 on other devices and for the Triton kernels.
    """
    return torch.get_num_threads() if device.type == "cpu" and kernels_name != "triton" else 1


def lanes_for(workers: int) -> int:
    """Accumulators of the backward pass: one more than the workers, so no free worker waits for a lane."""
    return 1 if workers == 1 else workers + 1


class CancelledError(RuntimeError):
    """The caller of :func:`call` stopped waiting (an interrupt, or its progress callback raised)."""


@dataclass
class _Schedule:
    """Which strips are left and finished, which helpers run, and the first error; guarded by ``cond``."""

    count: int
    lanes: int
    unstarted: list[int]
    finished: list[bool]
    cancelled: threading.Event
    cond: threading.Condition = field(default_factory=threading.Condition)
    failed: bool = False
    closed: bool = False  # helpers that start after this do nothing
    running: int = 0  # helpers that have started and not stopped

    def claim(self) -> int | None:
        """The smallest unstarted strip whose lane is free (waits for one), or ``None`` when done or failed."""
        with self.cond:
            while True:
                if self.failed or self.cancelled.is_set() or not self.unstarted:
                    return None
                for i, k in enumerate(self.unstarted):
                    if k < self.lanes or self.finished[k - self.lanes]:
                        del self.unstarted[i]
                        return k
                self.cond.wait()

    def finish(self, k: int) -> None:
        with self.cond:
            self.finished[k] = True
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def join(self) -> bool:
        """A helper's start: False if the strips are already all taken (then it must do nothing)."""
        with self.cond:
            if self.closed:
                return False
            self.running += 1
            return True

    def leave(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()


class _Pool:
    """``size`` daemon threads, each with one intra-op thread, running jobs from a queue."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        ready = threading.Barrier(size + 1)
        for w in range(size):
            threading.Thread(target=self._serve, args=(ready,), name=f"contextual-loss-{w}", daemon=True).start()
        ready.wait()
        # torch.set_num_threads also stores the count that new threads start with: give back the caller's.
        torch.set_num_threads(torch.get_num_threads())

    def _serve(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()  # PyTorch initialises a thread's count on first use: do it before setting it
        torch.set_num_threads(1)
        _local.pool = self
        ready.wait()
        while True:
            self.jobs.get()()


_pools: dict[int, _Pool] = {}
_pools_lock = threading.Lock()
_local = threading.local()  # in pool threads: .pool, and .cancelled (an Event) while running a call


def _after_fork_in_child() -> None:
    """A forked child has none of the pool threads, and the lock may have been held by one of them."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _pool(size: int) -> _Pool:
    """The process's pool of ``size`` threads (a forked child makes its own: threads do not survive fork)."""
    with _pools_lock:
        pool = _pools.get(size)
        if pool is None or pool.pid != os.getpid():
            pool = _pools[size] = _Pool(size)
        return pool


def call(workers: int, fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` run in a thread of the pool of ``workers`` threads, with one intra-op thread.

    Its :func:`run` calls share their strips with the other pool threads, with the calling thread
    of ``fn`` as worker 0. This thread waits; progress reports of ``fn`` (see
    :func:`~contextual_loss.engine.streaming._problem.reporting`) reach this thread's callback here.
    With one worker, or from a pool thread, ``fn`` runs here.

    Raises:
        Whatever ``fn`` raised; or what interrupted the wait (``fn`` is then stopped at its next strip).

    """
    if workers == 1 or getattr(_local, "pool", None) is not None:
        return fn(*args)
    callback = current_progress()
    messages: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    cancelled = threading.Event()
    inference = torch.is_inference_mode_enabled()

    def relay(done: int, total: int) -> None:
        messages.put(("progress", (done, total)))

    def body() -> None:
        _local.cancelled = cancelled
        try:
            with reporting(None if callback is None else relay), torch.inference_mode(inference), torch.no_grad():
                messages.put(("result", fn(*args)))
        except BaseException as exc:  # raised in the calling thread
            messages.put(("error", exc))
        finally:
            _local.cancelled = None

    _pool(workers).jobs.put(body)
    error: BaseException | None = None
    while True:
        try:
            kind, value = messages.get()
            if kind == "progress" and error is None and callback is not None:
                callback(*value)
        except BaseException as exc:  # an interrupt, or the callback raised: stop fn, wait for it, raise
            error = error or exc
            cancelled.set()
            continue
        if kind == "result" or kind == "error":
            if error is not None:
                raise error
            if kind == "error":
                raise value
            return value


def run(
    count: int,
    workers: int,
    work: Callable[[int, int], None],
    *,
    lanes: int | None = None,
    done: Callable[[int], None] | None = None,
) -> None:
    """Call ``work(worker, k)`` once for every strip k < ``count``, shared among ``workers`` threads.

    From a pool thread (inside :func:`call`) this thread is worker 0 and other pool threads help
    as they become free; elsewhere ``workers`` pool threads do the strips while this thread waits.

    Args:
        count: the number of strips.
        workers: threads to share them (see :func:`threads_for`); 1 runs them here, in order.
        work: does strip k with worker ``worker``'s buffers (worker < ``workers``).
        lanes: strip k starts only after strip k - ``lanes`` has finished (default: no constraint).
        done: called in this thread with each finished strip's k, as they finish (progress).

    Raises:
        Whatever ``work`` raised first (the other workers stop taking strips); :class:`CancelledError`
        when the caller of :func:`call` stopped waiting.

    Examples:
        >>> seen = []
        >>> run(5, 2, lambda worker, k: seen.append(k), lanes=3)
        >>> sorted(seen)
        [0, 1, 2, 3, 4]

    """
    if workers == 1:
        for k in range(count):
            work(0, k)
            if done is not None:
                done(k)
        return
    inside = getattr(_local, "pool", None) is not None
    cancelled = getattr(_local, "cancelled", None) or threading.Event()
    schedule = _Schedule(count, count if lanes is None else lanes, list(range(count)), [False] * count, cancelled)
    results: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
    inference = torch.is_inference_mode_enabled()

    def job(worker: int) -> None:
        if not schedule.join():
            return
        try:
            with torch.inference_mode(inference), torch.no_grad():  # the caller's thread-local modes
                while (k := schedule.claim()) is not None:
                    work(worker, k)
                    schedule.finish(k)
                    results.put((k, None))
        except BaseException as exc:  # handed to the calling thread, which raises it
            schedule.fail()
            results.put((-1, exc))
        finally:
            schedule.leave()

    pool = _pool(workers)
    for worker in range(1 if inside else 0, workers):
        pool.jobs.put(functools.partial(job, worker))
    error: BaseException | None = None
    try:
        if inside:  # worker 0: strips until none is left, reporting the helpers' strips in between
            while (own := schedule.claim()) is not None:
                work(0, own)
                schedule.finish(own)
                results.put((own, None))
                error = _drain(results, done, error, block=False)
        else:  # wait for the helpers to do every strip (they run however busy the pool is with other calls)
            while not schedule.failed and not cancelled.is_set() and sum(schedule.finished) < count:
                error = _drain(results, done, error, block=True)
    except BaseException as exc:  # this thread's strip, the callback, or an interrupt: stop the helpers
        error = error or exc
        schedule.fail()
    with schedule.cond:  # no helper starts from now on; wait for those that have
        schedule.closed = True
        while schedule.running:
            schedule.cond.wait()
    error = _drain(results, done, error, block=False)
    if error is not None:
        raise error
    if cancelled.is_set():
        raise CancelledError("the caller stopped waiting for the streaming engine")


def _drain(
    results: queue.SimpleQueue[tuple[int, BaseException | None]],
    done: Callable[[int], None] | None,
    error: BaseException | None,
    block: bool,
) -> BaseException | None:
    """Report the finished strips in ``results`` (at least one if ``block``); returns the first error."""
    while True:
        try:
            k, exc = results.get(block=block, timeout=0.05 if block else None)
        except queue.Empty:
            return error
        block = False
        if exc is not None:
            error = error or exc
        elif done is not None and error is None:
            done(k)
