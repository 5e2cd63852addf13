"""Strip planning and the per-strip helpers of the streaming engine."""

from __future__ import annotations

import pytest
import torch

from contextual_loss.engine.strips import DEFAULT_MEMORY_BUDGET, plan_strips, row_max_first_index


@pytest.mark.parametrize("cols", [1, 5, 127, 128, 129, 300, 1000])
def test_row_max_first_index_matches_max_with_ties(cols):
    gen = torch.Generator().manual_seed(cols)
    u = torch.randint(0, 6, (9, cols), generator=gen).float()  # many exact ties per row
    u[3] = 2.0  # a constant row: every column ties
    want = u.max(dim=1)
    got = row_max_first_index(u)
    assert torch.equal(got[0], want.values)
    assert torch.equal(got[1], want.indices)


def test_plan_fits_the_budget():
    plan = plan_strips(16384, 16384, dtype=torch.float32, memory_budget=DEFAULT_MEMORY_BUDGET, tiles=2)
    assert plan.rows == 128
    assert plan.workspace_bytes == DEFAULT_MEMORY_BUDGET
    # float64 halves the rows; a tiny budget still streams one row at a time.
    assert plan_strips(100, 1000, dtype=torch.float64, memory_budget=80_000, tiles=2).rows == 5
    assert plan_strips(100, 1000, dtype=torch.float32, memory_budget=1, tiles=3).rows == 1
    # Never more rows than the problem has.
    assert plan_strips(7, 10, dtype=torch.float32, memory_budget=DEFAULT_MEMORY_BUDGET, tiles=2).rows == 7
