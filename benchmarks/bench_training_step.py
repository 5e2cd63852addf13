"""What the contextual loss costs in a training step, and where its time goes.

A training step of the real-photo experiment's network (the card experiment's U-Net-lite, width
16) on a batch of B random crops of side S: forward, loss, backward, Adam. Each variant is timed
three ways in the same fresh process, after two warm-up steps:

* ``L1 step``: the step with an L1 loss (the network's own cost);
* ``step``: the step with the contextual loss, exactly as a user writes it (``loss(out, target)``);
* the same step in stages, each timed on its own: the features of prediction and target (RGB
  patches or VGG19 layers), their preparation (validation, flattening, position sampling,
  centring/normalising), the engine's forward (``contextual_loss.engine.evaluate``), the
  engine's backward (gradient on the prepared sets), the backward through the preparation and
  the features to the network's output, and the network's backward and Adam step.

``loss share`` = (step - L1 step) / step. Every number is the median over ``--steps`` steps in
a process and then over ``--repeats`` fresh processes (variants interleaved, so all see the same
load). The engine is forced with ``engine=`` for the A/B rows; ``auto`` rows say what it chose.

Usage::

    python benchmarks/bench_training_step.py --repeats 2 --steps 3  # the first table of docs/training.md
    python benchmarks/bench_training_step.py --points 8x48 --variants patches-l1-512:auto,patches-l1-512:dense
    python benchmarks/bench_training_step.py --quick                # seconds: one small point

Variants are ``FEATURES-DISTANCE-POINTS:ENGINE``: FEATURES ``patches`` (5 x 5 RGB patches) or
``vgg`` (VGG19 relu3_2 + relu4_2, random weights: the cost is that of ImageNet weights),
DISTANCE ``l1``, ``l2`` or ``cosine``, POINTS the sampled positions (``all`` for none), ENGINE
``auto``, ``dense`` or ``streaming``. Timings on a shared machine are noisy: compare rows
measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POINTS = "8x96,16x96,8x48,16x48"
DEFAULT_VARIANTS = (
    "patches-l2-512:auto,patches-l2-512:dense,patches-l1-512:auto,patches-l1-512:dense,"
    "vgg-cosine-all:auto,vgg-cosine-all:dense,vgg-cosine-all:streaming"
)
STAGES = ("features", "prepare", "engine_fwd", "engine_bwd", "features_bwd", "net")


def _parse_variant(text: str) -> dict:
    spec, _, engine = text.partition(":")
    features, distance, points = spec.split("-")
    if (
        features not in ("patches", "vgg")
        or distance not in ("l1", "l2", "cosine")
        or engine
        not in (
            "auto",
            "dense",
            "streaming",
        )
    ):
        raise ValueError(f"variant must look like patches-l1-512:auto, got {text!r}")
    return {
        "features": features,
        "distance": distance,
        "max_points": None if points == "all" else int(points),
        "engine": engine,
    }


# ----------------------------------------------------------------------------- worker


def _worker(args: argparse.Namespace) -> dict:
    """Time one variant at one point in this process; returns the medians in milliseconds."""
    import torch

    sys.path.insert(0, str(REPO))
    from experiments.card_enhancement.model import UNetLite

    from contextual_loss import ContextualLoss, engine
    from contextual_loss._pipeline import full_precision, prepare

    torch.set_num_threads(args.threads)
    variant = _parse_variant(args.variant)
    batch, side = (int(v) for v in args.point.split("x"))
    gen = torch.Generator().manual_seed(0)
    camera = torch.rand(batch, 3, side, side, generator=gen)
    target = torch.rand(batch, 3, side, side, generator=gen)
    torch.manual_seed(0)
    net = UNetLite(16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    common = {"loss_type": variant["distance"], "max_points": variant["max_points"], "engine": variant["engine"]}
    if variant["features"] == "patches":
        criterion = ContextualLoss(patch_size=5, band_width=0.5, reduction="none", **common)
    else:
        layers = {"relu3_2": 1.0, "relu4_2": 1.0}
        criterion = ContextualLoss(layers=layers, weights=None, reduction="none", **common)
    options = criterion.options  # exactly what the module hands the engine
    with torch.no_grad():
        weights = criterion.layer_weights or dict.fromkeys(criterion.features(camera[:1]), 1.0)

    def l1_step(step: int) -> None:
        out = net(camera)
        loss = (out - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loss_step(step: int) -> None:
        out = net(camera)
        loss = criterion(out, target, generator=torch.Generator().manual_seed(step)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    chosen: set[str] = set()
    sizes: set[str] = set()

    def staged_step(step: int) -> dict[str, float]:
        """The same step, cut at the prepared sets and the network's output (each stage timed)."""
        times = {}
        clock = time.perf_counter
        start = clock()
        out = net(camera)
        t0 = clock()
        feats_x, feats_y = criterion.features(out), criterion.features(target)
        t1 = clock()
        sampler = torch.Generator().manual_seed(step)
        prepared = [prepare(feats_x[name], feats_y[name], options, generator=sampler) for name in weights]
        t2 = clock()
        logs = []
        with full_precision(out.device):
            for sets in prepared:
                chosen.add(engine.choose_engine(sets.x, sets.y, options.engine, options.loss_type))
                sizes.add(f"{sets.x.shape[1]}")
                logs.append(engine.evaluate(sets.x, sets.y, options, sets.spatial).log_similarity)
        loss = sum(w * (-log).clamp_min(0.0) for w, log in zip(weights.values(), logs, strict=True)).mean()
        t3 = clock()
        grads = torch.autograd.grad(loss, [sets.x for sets in prepared])
        t4 = clock()
        (grad_out,) = torch.autograd.grad([sets.x for sets in prepared], out, grads)
        t5 = clock()
        opt.zero_grad(set_to_none=True)
        out.backward(grad_out)
        opt.step()
        t6 = clock()
        times.update(features=t1 - t0, prepare=t2 - t1, engine_fwd=t3 - t2, engine_bwd=t4 - t3)
        times.update(features_bwd=t5 - t4, net_fwd=t0 - start, net_bwd=t6 - t5)
        return times

    def timed(fn, steps: int) -> list[float]:
        out = []
        for step in range(steps):
            t0 = time.perf_counter()
            fn(step)
            out.append(time.perf_counter() - t0)
        return out

    for fn in (l1_step, loss_step, staged_step):  # warm-up: thread pool, allocator, native kernels
        timed(fn, 2)
    result = {
        "l1_step": statistics.median(timed(l1_step, args.steps)),
        "step": statistics.median(timed(loss_step, args.steps)),
    }
    stages = [staged_step(s) for s in range(args.steps)]
    for key in stages[0]:
        result[key] = statistics.median(s[key] for s in stages)
    result["engine"] = "/".join(sorted(chosen))
    result["points"] = "/".join(sorted(sizes, key=int, reverse=True))
    return {k: v * 1000 if isinstance(v, float) else v for k, v in result.items()}


def _crossover_worker(args: argparse.Namespace) -> dict:
    """Engine-only A/B at one (distance, B, N = M, C): dense and streaming fwd + bwd, interleaved."""
    import torch

    from contextual_loss import engine
    from contextual_loss.maths import prepare_features
    from contextual_loss.options import ContextualOptions

    torch.set_num_threads(args.threads)
    distance, batch, n, channels = args.crossover_point.split(":")
    batch, n, channels = int(batch), int(n), int(channels)
    gen = torch.Generator().manual_seed(0)
    x0, y0 = torch.rand(batch, n, channels, generator=gen), torch.rand(batch, n, channels, generator=gen)
    times: dict[str, list[float]] = {"dense": [], "streaming": []}
    for step in range(args.steps + 2):
        for name in times:
            x = x0.clone().requires_grad_(True)
            t0 = time.perf_counter()
            xs, ys = prepare_features(x, y0, distance)
            options = ContextualOptions(band_width=0.5, loss_type=distance, engine=name)
            log = engine.evaluate(xs, ys, options).log_similarity
            log.sum().backward()
            if step >= 2:  # the first two are warm-up
                times[name].append(time.perf_counter() - t0)
    chosen = engine.choose_engine(x0, y0, "auto", distance)
    return {name: 1000 * statistics.median(t) for name, t in times.items()} | {"auto": chosen}


def crossover_table(rows: list[tuple[str, dict | str]]) -> str:
    """The markdown table of the engine-only A/B."""
    lines = [
        "| distance | B | N = M | C | B N M | dense fwd+bwd (ms) | streaming fwd+bwd (ms) | faster | auto picks |",
        "|" + "---|" * 9,
    ]
    for point, r in rows:
        distance, batch, n, channels = point.split(":")
        entries = int(batch) * int(n) ** 2
        if isinstance(r, str):
            lines.append(f"| {distance} | {batch} | {n} | {channels} | {entries:,} | {r} | | | |")
            continue
        faster = "dense" if r["dense"] < r["streaming"] else "streaming"
        ratio = max(r["dense"], r["streaming"]) / min(r["dense"], r["streaming"])
        lines.append(
            f"| {distance} | {batch} | {n} | {channels} | {entries:,} | {_ms(r['dense'])} | {_ms(r['streaming'])} "
            f"| {faster} ({ratio:.2f}x) | {r['auto']} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def _run_child(point: str, variant: str | None, args: argparse.Namespace) -> dict | str:
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads), "--steps", str(args.steps)]
    cmd += ["--worker", "--point", point, "--variant", variant] if variant else ["--crossover-point", point]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=args.timeout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return f"failed ({tail[-1] if tail else done.returncode})"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_runs(runs: list[dict]) -> dict:
    merged = {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, float)}
    merged.update(engine=runs[0]["engine"], points=runs[0]["points"], runs=len(runs))
    return merged


def matmul_rate(threads: int) -> float:
    """GFLOP/s of a float32 (1024 x 256) @ (256 x 1024) product on ``threads`` threads, median of 9."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(1024, 256), torch.rand(256, 1024)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 1024 * 256 * 1024 / statistics.median(times[1:]) / 1e9


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def table(rows: list[tuple[str, str, dict | str]]) -> str:
    """The markdown table of (point, variant, result) rows."""
    head = (
        "| B x crop | features, distance, sampled positions | engine | L1 step (ms) | step (ms) | loss share "
        "| features | prepare | engine fwd | engine bwd | features bwd | net fwd + bwd + Adam |"
    )
    lines = [head, "|" + "---|" * 12]
    for point, variant, r in rows:
        v = _parse_variant(variant)
        feats = "5 x 5 patches" if v["features"] == "patches" else "VGG19 relu3_2 + relu4_2"
        what = f"{feats}, {v['distance']}, {v['max_points'] or 'all'}"
        if isinstance(r, str):
            lines.append(f"| {point} | {what} | {v['engine']} | {r} |" + " |" * 8)
            continue
        engine_cell = v["engine"] if v["engine"] != "auto" else f"auto ({r['engine']})"
        share = (r["step"] - r["l1_step"]) / r["step"]
        net = r["net_fwd"] + r["net_bwd"]
        cells = [point.replace("x", " x "), f"{what} (N = {r['points']})", engine_cell, _ms(r["l1_step"])]
        cells += [_ms(r["step"]), f"{100 * share:.0f}%"]
        cells += [_ms(r[k]) for k in ("features", "prepare", "engine_fwd", "engine_bwd", "features_bwd")]
        cells.append(_ms(net))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default=DEFAULT_POINTS, help="comma-separated BxS: batch size x crop side")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated FEATURES-DISTANCE-POINTS:ENGINE")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per point and variant (median)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument(
        "--crossover",
        default=None,
        help="instead: engine-only A/B at comma-separated DISTANCE:B:N:C points (e.g. l1:8:512:75)",
    )
    parser.add_argument("--quick", action="store_true", help="one small point, two variants, one process")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--crossover-point", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.variants, args.repeats, args.steps = "2x24", "patches-l1-64:auto,vgg-cosine-all:dense", 1, 2
    for variant in args.variants.split(","):
        _parse_variant(variant)
    return args


def _repeat(runs: dict, failures: dict, launch: Callable[[Any], dict | str], repeats: int) -> None:
    """``repeats`` rounds over the keys of ``runs`` (interleaved), appending each fresh process's result.

    A key whose process fails (``launch`` returns a string) is recorded in ``failures`` and skipped after.
    """
    for _ in range(repeats):
        for key in runs:
            if key in failures:
                continue
            outcome = launch(key)
            if isinstance(outcome, str):
                failures[key] = outcome
            else:
                runs[key].append(outcome)
            print(f"{key}: {outcome}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run every (point, variant) in fresh processes and print the table."""
    args = _parse(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    if args.crossover_point:
        print(json.dumps(_crossover_worker(args)))
        return 0
    import torch

    if args.crossover:
        return _crossover_main(args)

    points, variants = args.points.split(","), args.variants.split(",")
    runs: dict[tuple[str, str], list[dict]] = {(p, v): [] for p in points for v in variants}
    failures: dict[tuple[str, str], str] = {}
    load, rate = [os.getloadavg()[0]], [matmul_rate(args.threads)]
    start = time.perf_counter()
    _repeat(runs, failures, lambda key: _run_child(*key, args), args.repeats)
    load.append(os.getloadavg()[0])
    rate.append(matmul_rate(args.threads))
    rows = [(p, v, failures.get((p, v)) or _median_runs(runs[(p, v)])) for p, v in runs]
    report = "\n".join(
        [
            f"U-Net-lite (width 16) training step on random crops, float32, {args.threads} thread(s), "
            f"OMP_WAIT_POLICY=PASSIVE; median of {args.steps} steps per process and of {args.repeats} fresh "
            f"processes; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end; "
            f"{time.perf_counter() - start:.0f} s; matmul rate {rate[0]:.0f} GFLOP/s at the start, "
            f"{rate[1]:.0f} at the end. Stage columns in ms.",
            "",
            table(rows),
        ]
    )
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    return 0


def _crossover_main(args: argparse.Namespace) -> int:
    import torch

    load, rate, start = [os.getloadavg()[0]], [matmul_rate(args.threads)], time.perf_counter()
    points = args.crossover.split(",")
    runs: dict[str, list[dict]] = {p: [] for p in points}
    failures: dict[str, str] = {}
    _repeat(runs, failures, lambda point: _run_child(point, None, args), args.repeats)
    load.append(os.getloadavg()[0])
    rate.append(matmul_rate(args.threads))
    rows = []
    for point, done in runs.items():
        merged = {k: statistics.median(r[k] for r in done) for k in ("dense", "streaming")} if done else {}
        rows.append((point, failures.get(point) or merged | {"auto": done[0]["auto"]}))
    report = (
        f"Engine only (prepared random sets, fwd + bwd), float32, {args.threads} thread(s), OMP_WAIT_POLICY=PASSIVE; "
        f"median of {args.steps} per process and of {args.repeats} fresh processes; torch {torch.__version__}; "
        f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end; matmul rate {rate[0]:.0f} GFLOP/s at "
        f"the start, {rate[1]:.0f} at the end; {time.perf_counter() - start:.0f} s.\n\n" + crossover_table(rows)
    )
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
