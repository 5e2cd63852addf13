"""The work of a comparison: how much, how long, and a progress line while it runs.

A comparison of N prediction positions with M target positions costs N * M *entries* (one
feature distance, one softmax term each) per layer and per loss; ``compare`` evaluates CX and
CoBi on every layer. Before a large comparison the command measures this machine's rate on a
small problem with the same features, distance and engine, estimates the time, and warns before
very long runs with the option that shortens them. While it runs, a line on stderr (when stderr
is a terminal) shows the share done, the time spent and the time left, fed by the engine's
``progress(done, total)`` callback.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

import torch
from torch import Tensor

from contextual_loss import engine as _engine
from contextual_loss._pipeline import evaluate_prepared, prepare
from contextual_loss.options import ContextualOptions

__all__ = [
    "CALIBRATION_COLUMNS",
    "CALIBRATION_ROWS",
    "ESTIMATE_ABOVE",
    "LONG_RUN_SECONDS",
    "MEASURED_SHARE",
    "PROGRESS_AFTER_SECONDS",
    "REDRAW_SECONDS",
    "Evaluation",
    "ProgressLine",
    "engine_for",
    "format_duration",
    "measure_rate",
]

#: Total entries above which the time is estimated up front (below, the run takes about a second
#: or less and measuring would cost a noticeable part of it).
ESTIMATE_ABOVE = 10**8

#: Estimated seconds above which a warning names the option that shortens the run.
LONG_RUN_SECONDS = 60.0

#: The progress line appears once a run has taken this long (shorter runs print nothing).
PROGRESS_AFTER_SECONDS = 2.0

#: Share of the work done from which the time left is measured rather than the up-front estimate.
MEASURED_SHARE = 0.03

#: Shortest time between two redraws of the progress line.
REDRAW_SECONDS = 0.25

#: The calibration problem that measures the rate: at most this many prediction rows ...
CALIBRATION_ROWS = 8192
#: ... and target columns (the strips' width, as in the real problem up to this size).
CALIBRATION_COLUMNS = 4096


@dataclass(frozen=True)
class Evaluation:
    """One loss on one layer: N x M entries on one engine.

    Attributes:
        label: e.g. ``"CX"`` or ``"CoBi relu3_2"``.
        n: prediction positions compared (after sampling).
        m: target positions compared (after sampling).
        channels: C, the length of each feature vector.
        engine: ``"dense"`` or ``"streaming"``.

    """

    label: str
    n: int
    m: int
    channels: int
    engine: str

    @property
    def entries(self) -> int:
        """N * M."""
        return self.n * self.m


def engine_for(options: ContextualOptions, n: int, m: int, channels: int, device: torch.device) -> str:
    """The engine ``options.engine`` runs an N x M problem on, for one image in float32 on ``device``."""
    if options.engine != "auto":
        return options.engine
    memory = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        memory = int(torch.cuda.get_device_properties(index).total_memory)
    return _engine.auto_engine(1, n, m, channels, torch.float32, device.type, memory, options.loss_type)


def measure_rate(
    options: ContextualOptions, channels: int, engine: str, device: torch.device, *, n: int, m: int
) -> float:
    """Entries per second of one forward evaluation with these options on this machine.

    Times a problem of random features with ``channels`` channels on ``engine``, of at most
    :data:`CALIBRATION_ROWS` x :data:`CALIBRATION_COLUMNS` entries, shaped like the N x M problem it
    stands for (after an untimed small run that loads and warms the kernels): the streaming
    engine's cost per entry depends on the strips' width M and on how many strips there are.
    """
    rows, cols = min(n, CALIBRATION_ROWS), min(m, CALIBRATION_COLUMNS)
    generator = torch.Generator().manual_seed(0)

    def problem(height: int, width: int) -> tuple[Tensor, Tensor]:
        x = torch.rand(1, channels, height, 1, generator=generator).to(device)
        return x, torch.rand(1, channels, width, 1, generator=generator).to(device)

    options = options.replace(engine=engine, max_points=None)
    with torch.inference_mode():
        evaluate_prepared(prepare(*problem(64, 64), options), options)  # loads the kernels
        sets = prepare(*problem(rows, cols), options)
        start = time.perf_counter()
        evaluate_prepared(sets, options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    return rows * cols / max(elapsed, 1e-9)


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min``, ``1.5 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class ProgressLine:
    """A one-line progress display on a stream, fed by the engine's progress callbacks.

    The time is counted from the start of the first evaluation. Until a few percent of the work
    are done, the time left is the up-front estimate (``expected``), if there is one.

    Args:
        total: units of work of the whole run (entries for one pair, pairs for folders).
        stream: where to draw (stderr).
        enabled: draw at all (``--no-progress`` and a stream that is not a terminal turn it off).
        clock: the time source (tests pass their own).
        expected: the estimated seconds of the whole run, or ``None``.

    """

    total: float
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    clock: Callable[[], float] = time.perf_counter
    expected: float | None = None
    done: float = 0.0
    _start: float | None = field(default=None, init=False)
    _last_draw: float = field(default=-math.inf, init=False)
    _drawn: bool = field(default=False, init=False)
    _label: str = field(default="", init=False)

    @contextmanager
    def evaluation(self, label: str, units: float) -> Iterator[_engine.ProgressCallback]:
        """A callback for one evaluation's ``progress(done, total)``, worth ``units`` of :attr:`total`.

        The evaluation counts as done when the block ends.
        """
        before, self._label = self.done, label
        if self._start is None:
            self._start = self.clock()

        def callback(done: int, total: int) -> None:
            self.done = before + units * done / max(total, 1)
            self._draw()

        yield callback
        self.done = before + units
        self._draw()

    def _draw(self) -> None:
        now = self.clock()
        elapsed = now - (now if self._start is None else self._start)
        if not self.enabled or elapsed < PROGRESS_AFTER_SECONDS or now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        share = min(self.done / max(self.total, 1), 1.0)
        if share >= MEASURED_SHARE:
            left = elapsed * (1 - share) / share
        else:  # too little done to measure: the up-front estimate, if any
            left = max(self.expected - elapsed, 0.0) if self.expected is not None else math.inf
        eta = f"about {format_duration(left)} left" if math.isfinite(left) else "estimating the time left"
        text = f"comparing ({self._label}): {100 * share:5.1f}% | {format_duration(elapsed)} | {eta}"
        self.stream.write(f"\r{text:<72}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line (if one was drawn), so that what follows starts on a fresh line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
