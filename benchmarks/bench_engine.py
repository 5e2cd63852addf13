"""Benchmark the streaming engine against the dense reference (time, peak memory, matmul rate).

For batch 1, float32, cosine distance and N = M = S * S feature vectors of C channels, every
run is a fresh subprocess (so its peak resident memory is its own) that times one forward pass
and one forward + backward through ``contextual_loss`` after a small warm-up. The runs of the
two engines alternate, so both see the same machine load; the table gives the median over the
runs and the largest peak resident set size. The dense engine runs only where its estimated
memory fits (it keeps several N x M float32 matrices for backward). The machine's float32
matmul rate is measured in the same run (a 2048^3 product, before and after the points), and
the table gives the streaming engine's share of it, counting 6 N M C flops for forward +
backward (the GEMM work of plain autograd: one product forward, two backward).

Usage::

    python benchmarks/bench_engine.py                      # the full table (takes a while)
    python benchmarks/bench_engine.py --sizes 64,128 --channels 256 --repeats 3
    python benchmarks/bench_engine.py --output docs/engine-benchmark.md
    python benchmarks/bench_engine.py --engines streaming,eager,dense   # also the eager baseline

``eager`` is the streaming engine with its native strip kernels turned off
(``CONTEXTUAL_LOSS_NATIVE=0``): the same algorithm as eager PyTorch passes. The header line says
whether the streaming runs used the kernels.

Timings on a shared machine are noisy: compare ratios measured side by side in one run. The runs
use ``OMP_WAIT_POLICY=PASSIVE`` by default (``--omp-wait-policy``): with GNU OpenMP's default
spin-waiting, every parallel operation can cost a scheduler time slice when other processes hold
the cores, which penalises code made of many operations (the streaming engine: about a dozen per
strip) far more than code made of a few large ones.
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
DENSE_BYTES_PER_ENTRY = 8 * 4  # dense autograd keeps about 8 float32 N x M matrices (measured 7.8 GiB at S=128)


def _worker(args: argparse.Namespace) -> None:
    """One point: time forward and forward + backward, report the peak RSS, print JSON."""
    import torch

    from contextual_loss.functional import contextual_loss

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, args.channels, args.size, args.size, generator=gen)
    y = torch.randn(1, args.channels, args.size, args.size, generator=gen)
    kwargs = {"band_width": 0.5, "engine": args.engine, "memory_budget": args.memory_budget}
    # Warm up the thread pool and BLAS on a tiny problem, outside the timings.
    small = torch.randn(1, args.channels, 8, 8, requires_grad=True)
    contextual_loss(small, small.detach(), **kwargs).backward()
    baseline = _max_rss()

    def forward() -> None:
        contextual_loss(x.requires_grad_(True), y, **kwargs)

    def forward_backward() -> None:
        xg = x.detach().requires_grad_(True)
        contextual_loss(xg, y, **kwargs).backward()

    from contextual_loss.engine import native

    result = {"baseline_rss": baseline, "native": native.status()}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        t0 = time.perf_counter()
        fn()
        result[name] = time.perf_counter() - t0
    result["peak_rss"] = _max_rss()
    print(json.dumps(result))


def _matmul_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    print(json.dumps({"gflops": 2 * n**3 / statistics.median(times) / 1e9}))


def _max_rss() -> float:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _available_memory() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


def _run_child(extra: list[str], timeout: float, wait_policy: str, env_extra: dict | None = None) -> dict | str:
    cmd = [sys.executable, os.path.abspath(__file__), *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), **(env_extra or {})}
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return f"failed ({tail[-1] if tail else done.returncode})"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _dense_fits(args: argparse.Namespace, size: int) -> str | None:
    """``None`` if the dense engine's estimated memory fits, else why the point is skipped."""
    need = DENSE_BYTES_PER_ENTRY * float(size) ** 4
    limit = min(args.max_dense_gib * GIB, 0.8 * _available_memory())
    return None if need <= limit else f"skipped (needs ~{need / GIB:.0f} GiB)"


def _point(args: argparse.Namespace, size: int, channels: int, engines: list[str]) -> dict[str, dict | str]:
    """Run the engines of one point alternately, one fresh process per run, so both see the same load."""
    runs: dict[str, list[dict]] = {engine: [] for engine in engines}
    results: dict[str, dict | str] = {}
    if "dense" in engines and (why := _dense_fits(args, size)) is not None:
        results["dense"] = why
    base = ["--worker", "--size", str(size), "--channels", str(channels), "--threads", str(args.threads)]
    if args.memory_budget is not None:
        base += ["--memory-budget", str(args.memory_budget)]
    for _ in range(args.repeats):
        for engine in engines:
            spent = sum(r["forward"] + r["forward_backward"] for r in runs[engine])
            if engine in results or (runs[engine] and spent > args.point_seconds):
                continue
            # "eager": the streaming engine without its native strip kernels (the baseline they replace).
            name, env = ("streaming", {"CONTEXTUAL_LOSS_NATIVE": "0"}) if engine == "eager" else (engine, None)
            outcome = _run_child([*base, "--engine", name], args.timeout, args.omp_wait_policy, env)
            if isinstance(outcome, str):
                results[engine] = outcome
            else:
                runs[engine].append(outcome)
    for engine, done in runs.items():
        if engine not in results and done:
            results[engine] = {
                "forward": statistics.median(r["forward"] for r in done),
                "forward_backward": statistics.median(r["forward_backward"] for r in done),
                "peak_rss": max(r["peak_rss"] for r in done),
                "baseline_rss": min(r["baseline_rss"] for r in done),
                "runs": len(done),
                "native": done[0]["native"],
            }
    return results


def _fmt_time(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _table(rows: list[dict], rate: float) -> str:
    """The markdown table; two more columns when the eager streaming baseline was run."""
    eager = any(isinstance(row.get("eager"), dict) for row in rows)
    head = (
        "| S | C | N = M | streaming fwd (s) | streaming fwd+bwd (s) | dense fwd (s) | dense fwd+bwd (s) "
        "| speed-up fwd+bwd | streaming peak RSS (GiB) | dense peak RSS (GiB) | memory ratio | % of matmul rate |"
    )
    if eager:
        head += " eager streaming fwd+bwd (s) | native kernels speed-up |"
    lines = [head, "|" + "---|" * (14 if eager else 12)]
    for row in rows:
        s, d = row["streaming"], row["dense"]
        s_ok, d_ok = isinstance(s, dict), isinstance(d, dict)
        n = row["size"] ** 2
        cells = [str(row["size"]), str(row["channels"]), str(n)]
        cells += [_fmt_time(s["forward"]), _fmt_time(s["forward_backward"])] if s_ok else [s, s]
        cells += [_fmt_time(d["forward"]), _fmt_time(d["forward_backward"])] if d_ok else [d, "-"]
        both = s_ok and d_ok
        cells.append(f"{d['forward_backward'] / s['forward_backward']:.1f}x" if both else "-")
        cells.append(f"{s['peak_rss'] / GIB:.2f}" if s_ok else "-")
        cells.append(f"{d['peak_rss'] / GIB:.2f}" if d_ok else "-")
        cells.append(f"{d['peak_rss'] / s['peak_rss']:.1f}x" if both else "-")
        flops = 6.0 * n * n * row["channels"]
        cells.append(f"{100 * flops / s['forward_backward'] / 1e9 / rate:.0f}%" if s_ok else "-")
        if eager:
            e = row.get("eager", "-")
            e_ok = isinstance(e, dict)
            cells.append(_fmt_time(e["forward_backward"]) if e_ok else str(e))
            cells.append(f"{e['forward_backward'] / s['forward_backward']:.2f}x" if e_ok and s_ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32,64,96,128,192,256", help="comma-separated S (N = M = S*S)")
    parser.add_argument("--channels", default="64,256", help="comma-separated C")
    parser.add_argument("--extra", default="384:64", help="extra S:C points, streaming only (comma-separated)")
    parser.add_argument(
        "--engines",
        default="streaming,dense",
        help="engines to run: streaming, dense, and eager (streaming without its native strip kernels)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per point and engine (median)")
    parser.add_argument("--point-seconds", type=float, default=150.0, help="no further runs of an engine after this")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        choices=["PASSIVE", "ACTIVE", "default"],
        help="OMP_WAIT_POLICY of the runs (both engines): PASSIVE keeps idle OpenMP threads from "
        "spinning, which on a shared machine otherwise costs a scheduler time slice per parallel operation",
    )
    parser.add_argument("--memory-budget", type=int, default=None, help="streaming workspace in bytes")
    parser.add_argument("--max-dense-gib", type=float, default=16.0, help="skip dense points needing more")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per point")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.worker:
        args.channels = int(args.channels)
        _worker(args)
        return
    if args.matmul:
        _matmul_worker(args)
        return
    engines = args.engines.split(",")
    points = [(int(s), int(c), engines) for c in args.channels.split(",") for s in args.sizes.split(",")]
    points += [(int(p.split(":")[0]), int(p.split(":")[1]), ["streaming"]) for p in args.extra.split(",") if p]
    matmul = ["--matmul", "--threads", str(args.threads)]
    loads = [os.getloadavg()[0]]
    rates = [_run_child(matmul, 600, args.omp_wait_policy)["gflops"]]
    rows = []
    for size, channels, point_engines in points:
        row = {"size": size, "channels": channels, "streaming": "-", "dense": "-", "eager": "-"}
        row.update(_point(args, size, channels, point_engines))
        print(f"S={size} C={channels}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    rates.append(_run_child(matmul, 600, args.omp_wait_policy)["gflops"])
    loads.append(os.getloadavg()[0])
    rate = max(rates)
    statuses = {row["streaming"]["native"] for row in rows if isinstance(row["streaming"], dict)}
    import torch

    report = "\n".join(
        [
            f"Batch 1, float32, cosine, {args.threads} threads (OMP_WAIT_POLICY={args.omp_wait_policy}), "
            f"median of up to {args.repeats} runs (fresh processes); "
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs.",
            f"float32 matmul rate (2048^3): {rates[0]:.1f} GFLOP/s before, {rates[1]:.1f} after; "
            f"the % column uses {rate:.1f}. Load average (1 min): {loads[0]:.1f} at the start, "
            f"{loads[1]:.1f} at the end.",
            f"Native strip kernels of the streaming runs: {'; '.join(sorted(statuses)) or '-'}.",
            "",
            _table(rows, rate),
        ]
    )
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
