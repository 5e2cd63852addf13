"""The misalignment study and its figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contextual_loss.demo.misalignment import CX_CLAIM, L1_CLAIM, misalignment_study, plot_misalignment
from contextual_loss.viz import save_figure


def test_misalignment_study_rows() -> None:
    study = misalignment_study(size=16, patch_size=3, shifts=(0, 2), angle=4.0, weight_sp=0.1)
    assert [row.label for row in study.rows] == ["shift 0 px", "shift 2 px", "rotation 4°", "unrelated"]
    zero, shift, rotation, unrelated = study.rows
    assert zero.l1 == 0.0 and zero.cx_loss == 0.0 and zero.cobi_loss == 0.0
    assert unrelated.l1_fraction == unrelated.cx_fraction == unrelated.cobi_fraction == 1.0
    assert shift.l1_fraction == pytest.approx(shift.l1 / unrelated.l1)
    assert shift.cx_fraction == pytest.approx(shift.cx_loss / unrelated.cx_loss)
    assert shift.shift == 2 and rotation.angle == 4.0
    assert shift.cx_fraction < shift.l1_fraction  # the claim, on a small example
    assert study.reference.shape == study.copies["shift 2 px"].shape == (1, 3, 16, 16)
    torch.testing.assert_close(study.copies["shift 0 px"], study.reference)
    with pytest.raises(KeyError, match="labels"):
        study.row("shift 3 px")


def test_plot_misalignment(tmp_path: Path) -> None:
    study = misalignment_study(size=12, patch_size=3, shifts=(0, 1), angle=3.0)
    figure = plot_misalignment(study)
    lines = [line for ax in figure.axes for line in ax.get_lines() if line.get_label() == "L1 (pixels)"]
    assert len(lines) == 1
    np.testing.assert_allclose(lines[0].get_ydata(), [row.l1_fraction for row in study.rows[:2]])
    save_figure(figure, tmp_path / "m.png")
    reference_lines = sorted(
        float(line.get_ydata()[0]) for ax in figure.axes for line in ax.get_lines() if line.get_linestyle() == ":"
    )
    assert reference_lines == [CX_CLAIM, L1_CLAIM] == [0.1, 0.4]  # the claim's thresholds (experiments/misalignment.py)
