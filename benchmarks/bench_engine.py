"""Benchmark the streaming engine against the dense reference: time, memory, matmul rate, load, compile.

Every run is a fresh subprocess on the benchmark's seeded random inputs (batch 1 unless
``--batch``, float32, N = M = S * S feature vectors of C channels per image, cosine distance
unless said otherwise). A run imports the library, makes a small warm-up call, measures the
float32 matmul rate (a 2048^3 product), times one forward pass and one forward + backward through
``contextual_loss``, measures the matmul rate again, and reports its peak resident memory above
its memory after the warm-up.
Runs whose matmul rate drifts by more than 10% between before and after are repeated (up to
``--retries`` times). The engines' runs are interleaved (the order rotates every repeat) so that
all see the same machine; tables give the median over ``--repeats`` runs with [min, max].

Columns: the speed-up of streaming over dense (fwd+bwd), the peak memory above the warm-up, and
the streaming engine's share of the run's matmul rate counting 6 B N M C flops for forward +
backward (the GEMM work of plain autograd). The L1 distance has no GEMM: its table gives distance
entries per second, B N M / time.

Modes:

- ``--load both`` runs every point quiet and beside one competing single-threaded busy loop
  (``--load busy``: only loaded), and a summary of how much each engine slows down; the target is a
  loaded speed-up of at least 85% of the quiet one.
- ``--engines streaming,eager,dense``: ``eager`` is the streaming engine on the eager strip kernels
  (``CONTEXTUAL_LOSS_KERNELS=eager``); ``--compare-src PATH`` adds ``base``, the streaming engine of
  another source tree (for example a checkout of an older commit), for alternating A/B runs.
- ``--compile``: compiled (``torch.compile``) against eager for the loss alone (forward + backward)
  and for a small training step (a few convolutions, the loss, an SGD step), steady-state medians
  and the first call's compile time.

Usage::

    python benchmarks/bench_engine.py                                    # the full table (takes a while)
    python benchmarks/bench_engine.py --sizes 128 --channels 64,256 --extra "" --l1 ""
    python benchmarks/bench_engine.py --sizes 64,128 --channels 256 --load both
    python benchmarks/bench_engine.py --batch 8 --sizes 32 --channels 512 --extra "" --l1 ""   # a training batch
    python benchmarks/bench_engine.py --compile --compile-size 32
    python benchmarks/bench_engine.py --sizes 16 --channels 32 --repeats 1 --extra "" --l1 16:32   # smoke

Timings on a shared machine are noisy: compare ratios measured side by side in one run. The runs
use ``OMP_WAIT_POLICY=PASSIVE`` by default (``--omp-wait-policy``): with GNU OpenMP's default
spin-waiting, idle threads hold their cores, which on a shared machine penalises everyone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GIB = 2.0**30
SRC = Path(__file__).resolve().parents[1] / "src"
#: Bytes per entry B N M the dense engine holds at its peak (float32): 7-10 matrices (docs/engine.md).
DENSE_BYTES_PER_ENTRY = 10 * 4
DRIFT = 0.10


# ----------------------------------------------------------------------------- worker side


def _rss() -> float:
    """Current resident set size of this process in bytes (Linux), else the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * float(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return _max_rss()


def _max_rss() -> float:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _matmul_rate(a, b, out, repeats: int = 5) -> float:
    """Float32 GEMM rate in GFLOP/s of a @ b (square) into ``out`` (no allocation), median of ``repeats``."""
    import torch

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * a.shape[0] ** 3 / statistics.median(times) / 1e9


def _worker(args: argparse.Namespace) -> None:
    """One run of one point: print a JSON line with times, rates and memory."""
    import torch

    from contextual_loss.functional import contextual_loss

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=gen)
    y = torch.randn(args.batch, args.channels, args.size, args.size, generator=gen)
    kwargs = {"band_width": 0.5, "loss_type": args.distance, "engine": args.engine, "memory_budget": args.memory_budget}
    small = torch.randn(1, args.channels, 8, 8, generator=gen, requires_grad=True)
    contextual_loss(small, small.detach(), **kwargs).backward()  # warm-up: threads, BLAS, kernels
    a, b = torch.randn(2048, 2048, generator=gen), torch.randn(2048, 2048, generator=gen)
    product = a @ b
    baseline = _rss()  # after import, the warm-up call and the matmul buffers
    rate_before = _matmul_rate(a, b, product)
    t0 = time.perf_counter()
    contextual_loss(x.requires_grad_(True), y, **kwargs)
    forward = time.perf_counter() - t0
    xg = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    contextual_loss(xg, y, **kwargs).backward()
    forward_backward = time.perf_counter() - t0
    peak = _max_rss()
    rate_after = _matmul_rate(a, b, product)
    result = {
        "forward": forward,
        "forward_backward": forward_backward,
        "peak_above": peak - baseline,
        "rate_before": rate_before,
        "rate_after": rate_after,
        "kernels": _kernels_line(),
    }
    print(json.dumps(result))


def _kernels_line() -> str:
    try:
        from contextual_loss.engine import kernels

        return kernels.status().splitlines()[0]
    except (ImportError, AttributeError):  # an older source tree (--compare-src)
        from contextual_loss.engine import native

        return "native: " + native.status()


def _compile_worker(args: argparse.Namespace) -> None:
    """One run of the compiled-vs-eager comparison: the loss alone or a small training step."""
    import torch

    from contextual_loss.functional import contextual_loss

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    s, c = args.size, args.channels
    kwargs = {"band_width": 0.5, "engine": args.engine}
    if args.task == "loss":
        x = torch.randn(1, c, s, s, generator=gen)
        y = torch.randn(1, c, s, s, generator=gen)

        def step() -> None:
            contextual_loss(x.detach().requires_grad_(True), y, **kwargs).backward()

    else:  # a small image-to-image network trained on the loss over its output features
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(c, c, 3, padding=1)
        )
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
        image = torch.rand(1, 3, s, s, generator=gen)
        target = torch.randn(1, c, s, s, generator=gen)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            contextual_loss(net(image), target, **kwargs).backward()
            optimizer.step()

    fn = torch.compile(step) if args.mode == "compiled" else step
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"first": first, "median": statistics.median(times)}))


# ----------------------------------------------------------------------------- driver side


class _BusyLoop:
    """A competing single-threaded busy process while the block runs."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> _BusyLoop:
        if self.active:
            self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.2)  # let it take its core
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def _run_child(argv: list[str], args: argparse.Namespace, env_extra: dict, busy: bool) -> dict | str:
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    env = {**os.environ, "PYTHONPATH": str(SRC), **env_extra}
    if args.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    with _BusyLoop(busy):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            return "timed out"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return f"failed ({tail[-1] if tail else done.returncode})"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _available_memory() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


def _dense_fits(args: argparse.Namespace, size: int) -> str | None:
    """``None`` if the dense engine's estimated memory fits, else why the point is skipped."""
    need = DENSE_BYTES_PER_ENTRY * args.batch * float(size) ** 4
    limit = min(args.max_dense_gib * GIB, 0.8 * _available_memory())
    return None if need <= limit else f"skipped (needs ~{need / GIB:.0f} GiB)"


def _engine_setup(engine: str, args: argparse.Namespace) -> tuple[str, dict]:
    """(the worker's --engine, extra environment) of a benchmark engine name."""
    if engine == "eager":
        return "streaming", {"CONTEXTUAL_LOSS_KERNELS": "eager"}
    if engine == "base":
        return "streaming", {"PYTHONPATH": str(Path(args.compare_src).resolve())}
    return engine, {}


def _one_run(argv: list[str], args: argparse.Namespace, env: dict, busy: bool) -> dict | str:
    """A run, repeated while its matmul rate drifts by more than 10% (at most ``--retries`` times)."""
    outcome: dict | str = "not run"
    for attempt in range(args.retries + 1):
        outcome = _run_child(argv, args, env, busy)
        if isinstance(outcome, str):
            return outcome
        outcome["reruns"] = attempt
        drift = abs(outcome["rate_after"] / outcome["rate_before"] - 1.0)
        if drift <= DRIFT:
            break
        outcome["drifted"] = drift
    return outcome


def _point(args: argparse.Namespace, size: int, channels: int, engines: list[str], distance: str) -> dict:
    """All runs of one point: engines (and load conditions) interleaved, rotating the order each repeat."""
    loads = {"quiet": [False], "busy": [True], "both": [False, True]}[args.load]
    slots = [(engine, busy) for busy in loads for engine in engines]
    runs: dict[tuple[str, bool], list[dict]] = {slot: [] for slot in slots}
    failed: dict[tuple[str, bool], str] = {}
    if "dense" in engines and (why := _dense_fits(args, size)) is not None:
        for busy in loads:
            failed["dense", busy] = why
    base = ["--worker", "--size", str(size), "--channels", str(channels), "--threads", str(args.threads)]
    base += ["--batch", str(args.batch)]
    base += ["--distance", distance] + (["--memory-budget", str(args.memory_budget)] if args.memory_budget else [])
    for repeat in range(args.repeats):
        for engine, busy in slots[repeat % len(slots) :] + slots[: repeat % len(slots)]:
            spent = sum(r["forward"] + r["forward_backward"] for r in runs[engine, busy])
            if (engine, busy) in failed or (runs[engine, busy] and spent > args.point_seconds):
                continue
            name, env = _engine_setup(engine, args)
            outcome = _one_run([*base, "--engine", name], args, env, busy)
            if isinstance(outcome, str):
                failed[engine, busy] = outcome
            else:
                runs[engine, busy].append(outcome)
    point = {"size": size, "channels": channels, "batch": args.batch, "distance": distance}
    return {**point, "runs": runs, "failed": failed}


def _summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _fmt_time(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _fmt_spread(values: list[float]) -> str:
    mid, lo, hi = _summary(values)
    return f"{_fmt_time(mid)} [{_fmt_time(lo)}, {_fmt_time(hi)}]"


def _cell(point: dict, engine: str, busy: bool, key: str) -> str:
    runs = point["runs"].get((engine, busy), [])
    if runs:
        return _fmt_spread([r[key] for r in runs])
    return point["failed"].get((engine, busy), "-")


def _median(point: dict, engine: str, busy: bool, key: str) -> float | None:
    runs = point["runs"].get((engine, busy), [])
    return statistics.median(r[key] for r in runs) if runs else None


def _rate_cell(point: dict, busy: bool) -> tuple[str, float | None]:
    """(matmul rate before -> after, the rate the % column uses) over the point's streaming runs."""
    runs = point["runs"].get(("streaming", busy), [])
    if not runs:
        return "-", None
    before = statistics.median(r["rate_before"] for r in runs)
    after = statistics.median(r["rate_after"] for r in runs)
    reruns = sum(r["reruns"] for r in runs)
    note = f" ({reruns} reruns)" if reruns else ""
    return f"{before:.0f} -> {after:.0f}{note}", max(before, after)


def _gemm_table(points: list[dict], engines: list[str], loads: list[bool]) -> str:
    extra = [e for e in engines if e not in ("streaming", "dense")]
    head = [
        "S", "C", "N = M", "load", "streaming fwd (s)", "streaming fwd+bwd (s)", "dense fwd (s)", "dense fwd+bwd (s)",
        "speed-up fwd+bwd", "streaming peak above warm-up (GiB)", "dense peak above warm-up (GiB)",
        "% of matmul rate", "matmul GFLOP/s before -> after",
    ]  # fmt: skip
    head += [f"{e} fwd+bwd (s)" for e in extra] + [f"streaming vs {e}" for e in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in points:
        for busy in loads:
            n = point["size"] ** 2
            cells = [str(point["size"]), str(point["channels"]), str(n), "busy loop" if busy else "quiet"]
            for engine in ("streaming", "dense"):
                cells += [_cell(point, engine, busy, "forward"), _cell(point, engine, busy, "forward_backward")]
            s, d = (_median(point, e, busy, "forward_backward") for e in ("streaming", "dense"))
            cells.append(f"{d / s:.2f}x" if s and d else "-")
            for engine in ("streaming", "dense"):
                peak = _median(point, engine, busy, "peak_above")
                cells.append("-" if peak is None else f"{peak / GIB:.2f}")
            rate_text, rate = _rate_cell(point, busy)
            flops = 6.0 * point["batch"] * n * n * point["channels"]
            cells.append(f"{100 * flops / s / 1e9 / rate:.0f}%" if s and rate else "-")
            cells.append(rate_text)
            for engine in extra:
                cells.append(_cell(point, engine, busy, "forward_backward"))
            for engine in extra:
                e = _median(point, engine, busy, "forward_backward")
                cells.append(f"{e / s:.2f}x" if s and e else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _l1_table(points: list[dict], loads: list[bool]) -> str:
    head = ["S", "C", "N = M", "load", "engine", "fwd (s)", "fwd+bwd (s)", "fwd entries/s", "fwd+bwd entries/s",
            "peak above warm-up (GiB)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in points:
        n = point["size"] ** 2
        for busy in loads:
            for engine in ("streaming", "dense"):
                f, fb = (_median(point, engine, busy, k) for k in ("forward", "forward_backward"))
                peak = _median(point, engine, busy, "peak_above")
                cells = [str(point["size"]), str(point["channels"]), str(n), "busy loop" if busy else "quiet", engine]
                cells += [_cell(point, engine, busy, "forward"), _cell(point, engine, busy, "forward_backward")]
                entries = point["batch"] * n * n
                cells += [f"{entries / f:.3g}" if f else "-", f"{entries / fb:.3g}" if fb else "-"]
                cells.append("-" if peak is None else f"{peak / GIB:.2f}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_summary(points: list[dict]) -> str:
    """Quiet against loaded, per point: the speed-up kept under load (target >= 85%)."""
    head = [
        "S",
        "C",
        "streaming slowdown",
        "dense slowdown",
        "quiet speed-up",
        "loaded speed-up",
        "kept (target >= 85%)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in points:
        t = {(e, b): _median(point, e, b, "forward_backward") for e in ("streaming", "dense") for b in (False, True)}
        if None in t.values():
            continue
        quiet, busy = t["dense", False] / t["streaming", False], t["dense", True] / t["streaming", True]
        cells = [str(point["size"]), str(point["channels"])]
        cells += [
            f"{t['streaming', True] / t['streaming', False]:.2f}x",
            f"{t['dense', True] / t['dense', False]:.2f}x",
        ]
        cells += [f"{quiet:.2f}x", f"{busy:.2f}x", f"{100 * busy / quiet:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _compile_table(args: argparse.Namespace) -> str:
    """Compiled against eager, fresh processes, interleaved."""
    head = ["task", "engine", "eager (s)", "compiled (s)", "compiled / eager", "first compiled call (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in ("loss", "step"):
        for engine in args.compile_engines.split(","):
            results: dict[str, list[dict]] = {"eager": [], "compiled": []}
            errors: dict[str, str] = {}
            for repeat in range(args.repeats):
                for mode in ("eager", "compiled")[:: 1 if repeat % 2 == 0 else -1]:
                    argv = ["--compile-worker", "--task", task, "--mode", mode, "--engine", engine]
                    argv += ["--size", str(args.compile_size), "--channels", str(args.compile_channels)]
                    argv += ["--threads", str(args.threads), "--steps", str(args.steps)]
                    outcome = _run_child(argv, args, {}, False)
                    if isinstance(outcome, str):
                        errors[mode] = outcome
                    else:
                        results[mode].append(outcome)
            cells = [f"{task} (S = {args.compile_size}, C = {args.compile_channels})", engine]
            for mode in ("eager", "compiled"):
                values = [r["median"] for r in results[mode]]
                cells.append(_fmt_spread(values) if values else errors.get(mode, "-"))
            if results["eager"] and results["compiled"]:
                ratio = statistics.median(r["median"] for r in results["compiled"]) / statistics.median(
                    r["median"] for r in results["eager"]
                )
                cells.append(f"{ratio:.2f}")
                cells.append(_fmt_spread([r["first"] for r in results["compiled"]]))
            else:
                cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32,64,96,128,192,256", help="comma-separated S (N = M = S*S)")
    parser.add_argument("--channels", default="64,256", help="comma-separated C")
    parser.add_argument("--batch", type=int, default=1, help="images B per call (not the compile comparison)")
    parser.add_argument("--extra", default="384:64", help="extra S:C cosine points, streaming only")
    parser.add_argument("--l1", default="64:64,96:64", help="S:C points with the L1 distance (entries/s)")
    parser.add_argument("--engines", default="streaming,dense", help="streaming, dense, eager, base (--compare-src)")
    parser.add_argument("--compare-src", default=None, help="another source tree: engine 'base' runs it")
    parser.add_argument("--load", default="quiet", choices=["quiet", "busy", "both"], help="competing busy loop")
    parser.add_argument("--repeats", type=int, default=5, help="runs per point, engine and load (median)")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a run whose matmul rate drifts > 10%%")
    parser.add_argument("--point-seconds", type=float, default=300.0, help="no further runs of an engine after this")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"])
    parser.add_argument("--memory-budget", type=int, default=None, help="streaming workspace in bytes")
    parser.add_argument("--max-dense-gib", type=float, default=16.0, help="skip dense points needing more")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--compile", action="store_true", help="only the compiled-vs-eager table")
    parser.add_argument("--compile-size", type=int, default=32, help="S of the compile comparison")
    parser.add_argument("--compile-channels", type=int, default=64, help="C of the compile comparison")
    parser.add_argument("--compile-engines", default="dense,streaming", help="engines of the compile comparison")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per compile-comparison run")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    for hidden in ("--worker", "--compile-worker"):
        parser.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--size", "--engine", "--distance", "--task", "--mode"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engines and "base" in args.engines.split(",") and not args.compare_src:
        parser.error("engine 'base' needs --compare-src")
    return args


def _header(args: argparse.Namespace, points: list[dict]) -> list[str]:
    import torch

    kernels = sorted({r["kernels"] for p in points for runs in p["runs"].values() for r in runs})
    return [
        f"Batch {args.batch}, float32, {args.threads} threads (OMP_WAIT_POLICY={args.omp_wait_policy}), "
        f"median [min, max] of {args.repeats} runs (fresh processes, engines interleaved); torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average (1 min) "
        f"{os.getloadavg()[0]:.1f} at the end.",
        f"Strip kernels: {'; '.join(kernels) or '-'}.",
    ]


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.worker or args.compile_worker:
        args.size, args.channels = int(args.size), int(args.channels)
        args.distance = args.distance or "cosine"
        (_worker if args.worker else _compile_worker)(args)
        return
    if args.compile:
        report = _compile_table(args)
    else:
        engines = args.engines.split(",")
        loads = {"quiet": [False], "busy": [True], "both": [False, True]}[args.load]
        cosine = [(int(s), int(c), engines) for c in args.channels.split(",") for s in args.sizes.split(",") if s]
        cosine += [(int(p.split(":")[0]), int(p.split(":")[1]), ["streaming"]) for p in args.extra.split(",") if p]
        points = []
        for size, channels, point_engines in cosine:
            points.append(_point(args, size, channels, point_engines, "cosine"))
            print(f"cosine S={size} C={channels} done", file=sys.stderr, flush=True)
        l1_points = []
        for spec in filter(None, args.l1.split(",")):
            size, channels = (int(v) for v in spec.split(":"))
            l1_points.append(_point(args, size, channels, ["streaming", "dense"], "l1"))
            print(f"l1 S={size} C={channels} done", file=sys.stderr, flush=True)
        parts = [*_header(args, points + l1_points), "", _gemm_table(points, engines, loads)]
        if l1_points:
            parts += ["", "L1 distance (no GEMM): distance entries B N M per second.", "", _l1_table(l1_points, loads)]
        if args.load == "both":
            parts += ["", "Under one competing busy loop (fwd+bwd medians):", "", _load_summary(points)]
        report = "\n".join(parts)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
