"""The work of a comparison: the estimate, the warning before long runs, the progress line."""

from __future__ import annotations

import io
import re

import pytest
import torch

from contextual_loss.cli import compare_command, work
from contextual_loss.cli.work import ProgressLine, format_duration, measure_rate
from contextual_loss.options import ContextualOptions


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_appears_after_a_while_and_estimates_the_time_left() -> None:
    stream, clock = io.StringIO(), Clock()
    line = ProgressLine(1.0, stream=stream, clock=clock)
    with line.evaluation("CX", 0.25) as callback:
        clock.now = 1.0
        callback(1, 2)
        assert stream.getvalue() == ""  # short runs print nothing
        clock.now = work.PROGRESS_AFTER_SECONDS + 1.0
        callback(2, 2)
    assert line.done == 0.25
    text = stream.getvalue().split("\r")[-1]
    assert text.startswith("comparing (CX):  25.0% | 3.0 s | about 9.0 s left")  # 3 s for a quarter
    with line.evaluation("CoBi", 0.75) as callback:
        clock.now += 1.0
        callback(1, 3)
    assert "comparing (CoBi):  50.0% | 4.0 s | about 4.0 s left" in stream.getvalue()
    line.close()
    assert stream.getvalue().endswith("\n") and line.done == pytest.approx(1.0)


def test_a_disabled_progress_line_writes_nothing() -> None:
    stream, clock = io.StringIO(), Clock()
    line = ProgressLine(1.0, stream=stream, enabled=False, clock=clock)
    with line.evaluation("CX", 1.0) as callback:
        clock.now = 100.0
        callback(1, 1)
    line.close()
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("seconds", "text"), [(0.42, "0.4 s"), (12.4, "12 s"), (600, "10 min"), (9000, "2.5 h")])
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_rate_is_measured_on_this_machine() -> None:
    rate = measure_rate(ContextualOptions(loss_type="l1"), 12, "streaming", torch.device("cpu"), n=300, m=200)
    assert rate > 0 and rate != float("inf")


def test_compare_estimates_large_runs_and_warns_before_long_ones(run_cli, images, monkeypatch) -> None:
    argv = ["compare", str(images.shifted), str(images.reference)]
    monkeypatch.setattr(compare_command, "ESTIMATE_ABOVE", 0)  # estimate even this small pair
    monkeypatch.setattr(compare_command, "measure_rate", lambda *args, **kwargs: 1e6)  # entries per second
    entries = 2 * 576 * 576
    result = run_cli(*argv)
    assert result.code == 0
    assert result.err == (
        f"contextual-loss: this comparison is {entries:.2g} entries (CX 576 x 576, CoBi 576 x 576): "
        f"about {format_duration(entries / 1e6)} at the rate measured here\n"
    )
    monkeypatch.setattr(compare_command, "measure_rate", lambda *args, **kwargs: 1e3)  # a slow machine
    warned = run_cli(*argv).err.strip()
    assert warned.startswith(f"contextual-loss: warning: this comparison is {entries:.2g} entries")
    # The option that shortens it: --max-points, with the time it would take.
    match = re.search(r"--max-points (\d+) compares \1 positions of the target, drawn at random .*in about", warned)
    assert match is not None and int(match[1]) < 576, warned
    assert warned.endswith("(Ctrl-C stops)")


def test_compare_shows_progress_on_a_terminal_unless_asked_not_to(run_cli, images, monkeypatch) -> None:
    monkeypatch.setattr(work, "PROGRESS_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(work, "REDRAW_SECONDS", 0.0)
    monkeypatch.setattr(compare_command.sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["compare", str(images.shifted), str(images.reference)]
    shown = run_cli(*argv).err
    assert "\rcomparing (CX): " in shown and "\rcomparing (CoBi): 100.0%" in shown and shown.endswith("\n")
    assert run_cli(*argv, "--no-progress").err == ""


def test_until_a_few_percent_are_done_the_time_left_is_the_estimate() -> None:
    stream, clock = io.StringIO(), Clock()
    clock.now = 50.0  # loading and calibrating before the first evaluation do not count
    line = ProgressLine(1.0, stream=stream, clock=clock, expected=40.0)
    with line.evaluation("CX", 1.0) as callback:
        clock.now = 50.0 + work.PROGRESS_AFTER_SECONDS + 2.0
        callback(1, 100)  # 1 %: the estimate, less the time spent
        assert stream.getvalue().split("\r")[-1].rstrip() == "comparing (CX):   1.0% | 4.0 s | about 36 s left"
