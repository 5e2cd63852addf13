"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
import torch

from contextual_loss.engine import kernels


@pytest.fixture(params=kernels.IMPLEMENTATIONS)
def strip_kernels(request):
    """Run a test on each strip-kernel implementation that can run here on CPU float64 (the others skip)."""
    why = kernels.availability(request.param, torch.device("cpu"), torch.float64)
    if why is not None:
        pytest.skip(f"{request.param} strip kernels unavailable: {why}")
    with kernels.use(request.param):
        yield request.param
