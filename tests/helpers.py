"""Helpers shared by the tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import torch


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) values from a private generator: the same tensor for the same seed, whatever ran before."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand64(*shape: int, seed: int = 0) -> torch.Tensor:
    """:func:`rand` in float64, for values compared with the reference at 1e-10 and for gradcheck."""
    return rand(*shape, seed=seed, dtype=torch.float64)


def graph_node_names(t: torch.Tensor) -> set[str]:
    """The class names of every autograd node behind ``t`` (e.g. to see which engine produced it)."""
    names: set[str] = set()
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None:
            names.add(type(node).__name__)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names
