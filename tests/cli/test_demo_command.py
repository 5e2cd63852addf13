"""``contextual-loss demo``: the seed example, the misalignment table and the figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from contextual_loss.demo.seed_example import SEED_CX

REPO = Path(__file__).resolve().parents[2]


def test_fast_demo_prints_the_seed_value_and_writes_figures(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--fast", "--out", str(out))
    assert result.code == 0, result.err
    # The definition's value, and each of the 6 orderings within 1e-12 of it.
    assert repr(SEED_CX) in result.out
    deviations = re.findall(r"^\s+\(\d, \d, \d\)\s+\S+\s+(\S+)$", result.out, re.M)
    assert len(deviations) == 6 and all(float(d) <= 1e-12 for d in deviations)
    assert "reproduced for all 6 orderings" in result.out
    rows = dict(re.findall(r"^\s+(shift \d px|rotation 5°|unrelated)\s+(.*)$", result.out, re.M))
    assert set(rows) == {
        "shift 0 px",
        "shift 1 px",
        "shift 2 px",
        "shift 4 px",
        "shift 8 px",
        "rotation 5°",
        "unrelated",
    }
    cx_fraction = {label: float(cells.split()[-1].rstrip("%")) for label, cells in rows.items()}
    assert cx_fraction["unrelated"] == 100.0
    assert max(cx_fraction[f"shift {s} px"] for s in (1, 2, 4)) < 10.0
    for name in ("seed_example.png", "misalignment.png", "texture_match.png", "texture.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    assert result.out.rstrip().endswith(f"Figures and images are in {out.resolve()}")


@pytest.mark.subprocess
def test_demo_from_the_entry_point_without_figures(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.run(
        [sys.executable, "-m", "contextual_loss", "demo", "--fast", "--no-figures", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    assert repr(SEED_CX) in process.stdout
    assert (tmp_path / "texture_shift_4_px.png").exists()
    assert not (tmp_path / "misalignment.png").exists()
