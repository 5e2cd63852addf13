"""Figures: colours of the displacement map, the plots, and the missing-extra error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contextual_loss.demo.seed_example import seed_images
from contextual_loss.explain import explain_match
from contextual_loss.viz import (
    MissingExtraError,
    displacement_to_rgb,
    plot_explanation,
    require_matplotlib,
    save_figure,
)


def test_displacement_colours() -> None:
    field = np.array([[[0.0, 0.0], [0.0, 2.0], [0.0, -2.0], [2.0, 0.0], [0.0, 1.0]]])  # (row, col)
    rgb = displacement_to_rgb(field)
    np.testing.assert_allclose(rgb[0, 0], [1, 1, 1])  # no displacement: white
    np.testing.assert_allclose(rgb[0, 1], [1, 0, 0])  # right: red
    np.testing.assert_allclose(rgb[0, 2], [0, 1, 1])  # left: cyan
    np.testing.assert_allclose(rgb[0, 3], [0.5, 1, 0])  # down: hue 1/4, yellow-green
    np.testing.assert_allclose(rgb[0, 4], [1, 0.5, 0.5])  # half the largest length: half saturated
    np.testing.assert_allclose(displacement_to_rgb(field, max_magnitude=1.0)[0, 4], [1, 0, 0])


def test_plot_explanation_with_and_without_matrices(tmp_path: Path) -> None:
    x, y = seed_images((1, 2, 0))
    small = plot_explanation(explain_match(x, y, band_width=0.1), x, y)
    assert len([ax for ax in small.axes if ax.get_title()]) == 6  # 2 images, 2 maps, 2 matrices
    texts = [t.get_text() for ax in small.axes for t in ax.texts]
    assert len(texts) == 18  # every cell of both 3 x 3 matrices is annotated
    path = save_figure(small, tmp_path / "sub" / "seed.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
    large = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    figure = plot_explanation(explain_match(large, large.flip(-1), matrices=False))
    assert len([ax for ax in figure.axes if ax.get_title()]) == 2  # no images given, no matrices


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r'pip install "contextual-loss\[viz\]"'):
        require_matplotlib()
    assert issubclass(MissingExtraError, ImportError)
