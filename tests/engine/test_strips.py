"""Strip planning and the per-strip helpers of the streaming engine."""

from __future__ import annotations

import pytest
import torch

from contextual_loss.engine.strips import (
    DEFAULT_MEMORY_BUDGET,
    MAX_STRIP_ROWS,
    _entries_at_least,
    block_max,
    column_max_first_index,
    plan_strips,
    row_max_first_index,
)


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
    # 64 MiB holds two strips of 512 rows of 16384 float32 entries: exactly the tallest strip.
    assert plan.rows == MAX_STRIP_ROWS == 512
    assert plan.workspace_bytes == DEFAULT_MEMORY_BUDGET
    # A wider problem gets shorter strips (both passes hold the same buffers).
    wide = plan_strips(1000, 65536, dtype=torch.float32, memory_budget=DEFAULT_MEMORY_BUDGET, tiles=3)
    assert wide.rows == 85
    assert wide.workspace_bytes <= DEFAULT_MEMORY_BUDGET
    # float64 halves the rows; a tiny budget still streams one row at a time.
    assert plan_strips(100, 1000, dtype=torch.float64, memory_budget=80_000, tiles=2).rows == 5
    assert plan_strips(100, 1000, dtype=torch.float32, memory_budget=1, tiles=3).rows == 1
    # Never more rows than the problem has, nor than the cap.
    assert plan_strips(7, 10, dtype=torch.float32, memory_budget=DEFAULT_MEMORY_BUDGET, tiles=2).rows == 7
    assert plan_strips(100, 10, dtype=torch.float32, memory_budget=2**30, tiles=2, max_rows=9).rows == 9


@pytest.mark.parametrize("rows", [1, 7, 16, 24, 40, 64])
def test_column_max_first_index_matches_max_with_ties(rows):
    gen = torch.Generator().manual_seed(rows)
    tile = torch.randint(0, 6, (rows, 50), generator=gen).float()  # many exact ties per column
    tile[:, 3] = 2.0  # a constant column: every row ties
    best = torch.randint(0, 7, (50,), generator=gen).float()
    best[3] = 1.0
    want = tile.max(dim=0)
    improved = (want.values > best).nonzero().squeeze(1)
    cols, col_max, first = column_max_first_index(tile, best)
    assert 3 in cols.tolist()
    assert torch.equal(cols, improved)
    assert torch.equal(col_max, want.values[improved])
    assert torch.equal(first, want.indices[improved])


@pytest.mark.parametrize("cols", [1, 5, 63, 64, 65, 200, 640])
@pytest.mark.parametrize("share", [0.02, 0.5])
def test_near_field_search_finds_exactly_the_entries_above_each_rows_threshold(cols, share):
    # The block search of the near field (gathered blocks, the short last block compared in place,
    # or one comparison over the strip when most blocks qualify) against a plain comparison.
    gen = torch.Generator().manual_seed(cols)
    u = torch.randint(0, 50, (12, cols), generator=gen).float()  # ties at the threshold included
    which = torch.tensor([0, 3, 4, 7, 11])
    low = torch.quantile(u[which], 1.0 - share, dim=1)
    rows, found = _entries_at_least(u, block_max(u)[which], which, low)
    got = sorted(zip(rows.tolist(), found.tolist(), strict=True))
    threshold = torch.full((12,), float("inf")).index_copy_(0, which, low)
    want = sorted(map(tuple, (u >= threshold.unsqueeze(1)).nonzero().tolist()))
    assert got == want


@pytest.mark.parametrize("rows", [5, 16])  # a tile below and one at the blocked path's size
def test_column_max_ties_go_to_the_smaller_global_row(rows):
    tile = torch.zeros(rows, 4)
    tile[3] = torch.tensor([1.0, 2.0, 3.0, -1.0])  # row 3 holds the maxima of columns 0-2; column 3's is 0 (row 0)
    best = torch.tensor([1.0, 2.0, 2.5, 0.0])
    index = torch.tensor([50, 2, 7, 9])
    cols, _, _ = column_max_first_index(tile, best)  # strict, without index: only column 2 improves
    assert cols.tolist() == [2]
    # the tie rule at row0 = 5: global row 8 beats row 50 (column 0) but not row 2; row 5 beats row 9
    cols, col_max, first = column_max_first_index(tile, best, index=index, row0=5)
    assert cols.tolist() == [0, 2, 3] and first.tolist() == [3, 3, 0] and col_max.tolist() == [1.0, 3.0, 0.0]
    # gathered rows: tile row 3 is global row 1 (beats rows 50 and 2), row 0 is global row 100 (not row 9)
    global_rows = torch.full((rows,), 100)
    global_rows[3] = 1
    cols, _, _ = column_max_first_index(tile, best, index=index, global_rows=global_rows)
    assert cols.tolist() == [0, 1, 2]
