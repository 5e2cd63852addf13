"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
import torch

from contextual_loss.engine import native


@pytest.fixture(params=["native", "eager"])
def strip_kernels(request):
    """Run a test on the fused C strip kernels (when they build here) and on the eager PyTorch passes."""
    if request.param == "eager":
        with native.disabled():
            yield "eager"
        return
    if native.kernels_for(torch.zeros(1)) is None:
        pytest.skip(f"native strip kernels unavailable: {native.status()}")
    yield "native"
