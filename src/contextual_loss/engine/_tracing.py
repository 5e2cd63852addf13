"""Small helpers for code that torch.compile and torch.export trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["constant_under_compile"]

F = TypeVar("F", bound=Callable)


def constant_under_compile(fn: F) -> F:
    """Mark ``fn`` so that torch.compile calls it once while tracing and keeps its result as a constant.

    This is what ``torch.compiler.assume_constant_result`` does (it sets the attribute below), without
    importing ``torch._dynamo`` when the package is imported, which takes about 2 s. Where a torch
    version ignores the mark, Dynamo traces ``fn`` instead, which gives the same result for the plain
    reads the engine marks.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
