"""The Triton strip kernels for CUDA (placeholder: the Triton implementation is being written).

Importable without Triton. :func:`availability` says why the kernels cannot run.
"""

from __future__ import annotations

import torch

__all__ = ["TritonKernels", "availability"]


def availability(device: torch.device) -> str | None:
    """None when the Triton kernels can run on ``device`` tensors, else the reason."""
    return "the Triton strip kernels are not built yet"


class TritonKernels:
    """Placeholder of the Triton :class:`~contextual_loss.engine.kernels.base.StripKernels`."""

    name = "triton"

    def __init__(self) -> None:
        raise RuntimeError(availability(torch.device("cuda")))
