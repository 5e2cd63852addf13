"""Reproduce the card-enhancement experiment: train with each loss, then write the table and figures.

    python experiments/card_enhancement/run.py            # the full experiment (minutes per loss)
    python experiments/card_enhancement/run.py --quick    # seconds: checks the pipeline end to end

Runs that already finished are kept: a second call only retrains what is missing or was
interrupted (``--fresh`` retrains everything). Options after ``--`` go to train.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.card_enhancement import evaluate, train

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or resume) every run, then evaluate them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs and 2 test cards (seconds)")
    parser.add_argument("--out", type=Path, default=train.DEFAULT_OUT, help="runs folder")
    parser.add_argument("--report", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    parser.add_argument("--fresh", action="store_true", help="delete the runs folder first")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("train_args", nargs="*", help="extra train.py options (after --)")
    args = parser.parse_args(argv)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    train_argv = ["--out", str(args.out), "--cache-dir", str(args.out / "cache"), "--resume", *args.train_args]
    train_argv += ["--quick"] if args.quick else []
    train_argv += ["--no-progress"] if args.no_progress else []
    status = train.main(train_argv)
    if status:
        return status
    eval_argv = ["--out", str(args.out), "--report", str(args.report), "--figures", str(args.figures)]
    eval_argv += ["--test-cards", "2"] if args.quick else []
    return evaluate.main(eval_argv)


if __name__ == "__main__":
    raise SystemExit(main())
