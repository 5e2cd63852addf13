"""No N x M tensor on the streaming path: a dispatch-level probe of every tensor the engine creates.

The probe (a ``TorchDispatchMode``) sees the output of every ATen operation in the forward and
backward passes, records the largest one, and tracks the bytes of storages still referenced to
estimate the peak. The same probe on the dense engine does see N x M tensors, so it can fail.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from contextual_loss.engine import SpatialTerm, dense_evaluate, streaming_evaluate, streaming_plan


def dense_log_similarity(x, y, **kwargs):
    return dense_evaluate(x, y, **kwargs).log_similarity


def streaming_log_similarity(x, y, **kwargs):
    return streaming_evaluate(x, y, **kwargs).log_similarity


# Every test runs on the fused native strip kernels and on the eager passes (tests/engine/conftest.py).
pytestmark = pytest.mark.usefixtures("strip_kernels")

N, M, C = 600, 500, 4
BUDGET = 64 * 1024


class _AllocationProbe(TorchDispatchMode):
    """Largest tensor produced by any op, and the peak bytes of storages created and still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.peak_count = 0  # most storages alive at once

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self._record(t)
        return out

    def _record(self, t: torch.Tensor) -> None:
        self.largest = max(self.largest, t.numel())
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() and key not in self.live:
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            self.peak_count = max(self.peak_count, len(self.live))
            weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def _run(fn, loss_type, spatial, **kwargs):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, N, C, generator=gen).requires_grad_(True)
    y = torch.randn(1, M, C, generator=gen).requires_grad_(True)
    probe = _AllocationProbe()
    with probe:
        value = fn(x, y, loss_type=loss_type, band_width=0.5, eps=1e-5, spatial=spatial, **kwargs)
        value.sum().backward()
    return probe


def _spatial(form):
    if form is None:
        return None
    gen = torch.Generator().manual_seed(1)
    return SpatialTerm(0.3, form, torch.rand(N, 2, generator=gen), torch.rand(M, 2, generator=gen))


@pytest.mark.parametrize(("loss_type", "form"), [("cosine", None), ("l2", "paper"), ("l1", "released")])
def test_streaming_never_allocates_n_by_m(loss_type, form):
    spatial = _spatial(form)
    plan = streaming_plan(N, M, loss_type=loss_type, spatial=spatial, memory_budget=BUDGET)
    assert plan.workspace_bytes <= BUDGET
    assert plan.rows < N
    probe = _run(streaming_log_similarity, loss_type, spatial, memory_budget=BUDGET)
    # The largest tensor is a strip or an (augmented) input, never N x M.
    assert probe.largest <= max(plan.rows * M, (N + M) * (C + 1))
    # Peak: the strip workspace plus O((N + M) C) for inputs, gradients and statistics.
    linear = 16 * (N + M) * (C + 2) * plan.itemsize
    assert probe.peak <= plan.workspace_bytes + linear
    assert probe.peak < N * M * plan.itemsize / 2


@pytest.mark.parametrize(("loss_type", "form"), [("cosine", None), ("l1", "released")])
def test_no_tensor_outlives_its_strip(loss_type, form):
    # Row statistics are written into preallocated (N,) tensors: the number of live tensors must
    # not grow with the number of strips. (Kept per-strip tensors fragmented the heap: resident
    # memory grew by gigabytes at 384 x 384 maps although every tensor was small.)
    spatial = _spatial(form)
    few = _run(streaming_log_similarity, loss_type, spatial, memory_budget=BUDGET)
    many = _run(streaming_log_similarity, loss_type, spatial, memory_budget=BUDGET // 8)
    plan_few = streaming_plan(N, M, loss_type=loss_type, spatial=spatial, memory_budget=BUDGET)
    plan_many = streaming_plan(N, M, loss_type=loss_type, spatial=spatial, memory_budget=BUDGET // 8)
    assert N // plan_many.rows >= 4 * (N // plan_few.rows)
    assert many.peak_count <= few.peak_count + 8


def test_probe_sees_the_dense_matrices():
    probe = _run(dense_log_similarity, "cosine", None)
    assert probe.largest >= N * M
    assert probe.peak >= 2 * N * M * 4
