"""experiments/_common.update_results rewrites one section and keeps the others."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import _common


def test_update_results_replaces_only_its_section(tmp_path: Path) -> None:
    _common.update_results(tmp_path, "kl_divergence", "KL v1")
    _common.update_results(tmp_path, "properties", "props")
    _common.update_results(tmp_path, "kl_divergence", "KL v2\nsecond line")
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Experiments: results")
    assert "KL v1" not in text and "KL v2\nsecond line\n<!-- END kl_divergence -->" in text
    assert text.index("BEGIN properties") < text.index("BEGIN kl_divergence")  # the canonical order
    assert text.count("BEGIN kl_divergence") == 1 and "props" in text


def test_text_outside_sections_is_kept(tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text("# My header\n\nintro\n")
    _common.update_results(tmp_path, "misalignment", "body")
    assert (tmp_path / "RESULTS.md").read_text().startswith("# My header\n\nintro\n\n<!-- BEGIN misalignment -->")


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        _common.update_results(tmp_path, "other", "x")


def test_quick_runs_do_not_default_to_the_committed_results() -> None:
    assert _common.parse_args("x", ["--quick"]).out == _common.QUICK_OUT
    assert _common.parse_args("x", []).out == _common.HERE
