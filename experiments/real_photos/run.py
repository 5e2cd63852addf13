"""Reproduce the real-photo experiment: train every run for every seed, then write the table and figure.

    python experiments/real_photos/run.py                    # the full experiment (see RESULTS.md for its time)
    python experiments/real_photos/run.py --runs table       # without the candidates for the defaults
    python experiments/real_photos/run.py --quick            # seconds: the pipeline end to end

Runs that already finished are kept: a second call only trains what is missing or was
interrupted (``--fresh`` retrains everything). A quick run writes to ``outputs/real_photos-quick``
unless told otherwise, so it never overwrites the committed results. Options after ``--`` go to
train.py (e.g. ``-- --steps 300``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.real_photos import evaluate, train

HERE = Path(__file__).resolve().parent
QUICK_OUT = HERE.parents[1] / "outputs" / "real_photos-quick"


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or resume) every run, then evaluate them; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs scored on small windows (seconds)")
    parser.add_argument("--runs", default="all", help="'table', 'ablations', 'all' or a comma-separated list")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--out", type=Path, default=None, help="runs folder (default: runs/, quick: outputs/)")
    parser.add_argument("--report", type=Path, default=None, help="default: RESULTS.md beside this script")
    parser.add_argument("--figure", type=Path, default=None, help="default: figures/zoom.png beside the report")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--fresh", action="store_true", help="delete the runs folder first")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("train_args", nargs="*", help="extra train.py options (after --)")
    args = parser.parse_args(argv)
    root = QUICK_OUT if args.quick else HERE
    out = args.out or (root / "runs" if args.quick else train.DEFAULT_OUT)
    report = args.report or root / "RESULTS.md"
    figure = args.figure or report.parent / "figures" / "zoom.png"
    if args.fresh and out.exists():
        shutil.rmtree(out)
    threads = torch.get_num_threads()
    start, load = time.perf_counter(), os.getloadavg()[0]
    train_argv = ["--runs", args.runs, "--seeds", args.seeds, "--out", str(out), "--threads", str(args.threads)]
    train_argv += [*args.train_args, *(["--quick"] if args.quick else []), *(["--no-progress"] * args.no_progress)]
    try:
        status = train.main(train_argv)
    finally:
        torch.set_num_threads(threads)
    if status:
        return status
    minutes = (time.perf_counter() - start) / 60
    note = (
        f"_This invocation of run.py: {minutes:.1f} min of training wall time with {args.threads} thread(s) "
        f"(load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end) on a 2-core machine shared "
        f"with other jobs; the per-run times above are as measured there, slower than on a quiet machine. "
        f"torch {torch.__version__}._"
    )
    eval_argv = ["--out", str(out), "--seeds", args.seeds, "--report", str(report), "--figure", str(figure)]
    eval_argv += ["--note", note]
    eval_argv += ["--shots", "1", "--size", "48"] if args.quick else []
    return evaluate.main(eval_argv)


if __name__ == "__main__":
    raise SystemExit(main())
