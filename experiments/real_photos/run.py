"""Reproduce the real-photo experiment: train every run for every seed, then write the table and figure.

    python experiments/real_photos/run.py --jobs 3           # the full experiment (see RESULTS.md for its time)
    python experiments/real_photos/run.py --runs table       # without the candidates for the defaults
    python experiments/real_photos/run.py --quick            # seconds: the pipeline end to end
    python experiments/real_photos/run.py --no-train         # rescore the finished runs, rewrite the report

With ``--jobs N`` the (run, seed) trainings are shared among N worker processes of one thread
each, the most expensive first; every training is a pure function of its run and seed, so the
results do not depend on N.

Runs that already finished are kept: a second call only trains what is missing or was
interrupted (``--fresh`` retrains everything). A quick run writes to ``outputs/real_photos-quick``
unless told otherwise, so it never overwrites the committed results. Options after ``--`` go to
train.py (e.g. ``-- --steps 300``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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


#: Relative cost of a training step per loss, from the 800-step runs' train times on one thread (L1
#: 0.17 s; CX/CoBi on 512 positions with l2 or cosine 0.2-0.3 s, with l1 (no GEMM) 0.6-0.8 s; on all
#: positions CX 1.1-1.3 s, CoBi 2.2 s): the longest runs start first.
def _cost(name: str) -> float:
    cfg = train.config_for(name, 0)
    if cfg.loss == "l1":
        return 1.0
    if cfg.max_points is None:
        return 7.0 if cfg.loss == "cx" else 13.0
    return 4.0 if cfg.loss_type == "l1" else 1.5


def _finished(out: Path, name: str, seed: str, train_args: Sequence[str], quick: bool) -> bool:
    """Whether run ``name`` of ``seed`` already has a checkpoint of all its steps."""
    path = train.checkpoint(out, name, int(seed))
    if not path.exists():
        return False
    args = train.build_parser().parse_args(["--runs", name, *train_args])
    cfg = train.config_for(name, int(seed), quick=quick, **train.overrides(args))
    return int(train.card_train.load_checkpoint(path)["step"]) >= cfg.steps


def _train_all(pairs: list[tuple[str, str]], common: list[str], jobs: int) -> int:
    """Train every (run, seed) pair: in this process, or shared among ``jobs`` worker processes."""
    if jobs <= 1:
        status = 0
        threads = torch.get_num_threads()
        try:
            for name, seed in pairs:
                status = status or train.main(["--runs", name, "--seeds", seed, *common])
        finally:
            torch.set_num_threads(threads)
        return status
    queue = sorted(pairs, key=lambda pair: -_cost(pair[0]))
    script = str(Path(train.__file__).resolve())
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    running: list[subprocess.Popen] = []
    status = 0
    while queue or running:
        while queue and len(running) < jobs:
            name, seed = queue.pop(0)
            command = [sys.executable, script, "--runs", name, "--seeds", seed, *common]
            running.append(subprocess.Popen(command, env=env))
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            status = status or proc.returncode
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or resume) every run, then evaluate them; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs scored on small windows (seconds)")
    parser.add_argument("--runs", default="all", help="'table', 'ablations', 'all' or a comma-separated list")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds of the table's runs")
    parser.add_argument("--ablation-seeds", default="0,1", help="comma-separated training seeds of the candidates")
    parser.add_argument("--out", type=Path, default=None, help="runs folder (default: runs/, quick: outputs/)")
    parser.add_argument("--report", type=Path, default=None, help="default: RESULTS.md beside this script")
    parser.add_argument("--figure", type=Path, default=None, help="default: figures/zoom.png beside the report")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: best when busy)")
    parser.add_argument("--jobs", type=int, default=1, help="training processes in parallel")
    parser.add_argument("--fresh", action="store_true", help="delete the runs folder first")
    parser.add_argument("--no-train", action="store_true", help="only score and report the runs already finished")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("train_args", nargs="*", help="extra train.py options (after --)")
    args = parser.parse_args(argv)
    root = QUICK_OUT if args.quick else HERE
    out = args.out or (root / "runs" if args.quick else train.DEFAULT_OUT)
    report = args.report or root / "RESULTS.md"
    figure = args.figure or report.parent / "figures" / "zoom.png"
    if args.fresh and out.exists():
        shutil.rmtree(out)
    start, load = time.perf_counter(), os.getloadavg()[0]
    common = ["--out", str(out), "--threads", str(args.threads), *args.train_args]
    common += [*(["--quick"] if args.quick else []), *(["--no-progress"] * (args.no_progress or args.jobs > 1))]
    names = train.run_names(args.runs)
    pairs = [(n, seed) for seed in args.seeds.split(",") for n in names if n in train.RUNS]
    pairs += [(n, seed) for seed in args.ablation_seeds.split(",") for n in names if n not in train.RUNS]
    todo = [] if args.no_train else [pair for pair in pairs if not _finished(out, *pair, args.train_args, args.quick)]
    status = _train_all(todo, common, args.jobs)
    if status:
        return status
    minutes = (time.perf_counter() - start) / 60
    note = (
        f"_This invocation of run.py trained {len(todo)} of the {len(pairs)} (run, seed) pairs (the rest were "
        f"already finished in the runs folder; each run's own train time is in the tables): {minutes:.1f} min of "
        f"training wall time, {args.jobs} process(es) x "
        f"{args.threads} thread(s) (load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end) on a "
        f"2-core machine shared with other jobs; the times above are as measured there, slower than on a quiet "
        f"machine. torch {torch.__version__}._"
    )
    seeds = ",".join(sorted({*args.seeds.split(","), *args.ablation_seeds.split(",")}, key=int))
    eval_argv = ["--out", str(out), "--seeds", seeds, "--report", str(report), "--figure", str(figure)]
    eval_argv += ["--note", note]
    eval_argv += ["--shots", "1", "--size", "48"] if args.quick else []
    return evaluate.main(eval_argv)


if __name__ == "__main__":
    raise SystemExit(main())
