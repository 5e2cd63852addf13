"""Hypothesis profiles of the property-based tests.

``ci`` (the default): a bounded number of examples, drawn deterministically (``derandomize``:
the same examples on every run and machine) and no example database, so CI is reproducible and
takes well under two minutes on two cores. ``long``: 25 times the examples, random draws, and
Hypothesis's local example database (``.hypothesis/``), for local runs::

    HYPOTHESIS_PROFILE=long python -m pytest tests/property

A failure prints the falsifying example (and a ``@reproduce_failure`` blob); a failing example
found this way becomes a regular test (an ``@example`` or a plain test, see
``test_float32_accuracy.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # shared machines: never fail on time
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=20, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=500, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these problems are tiny, and OpenMP's spin-waiting barriers cost a time
    slice each on a shared machine (the whole suite took 100 s instead of 14 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
