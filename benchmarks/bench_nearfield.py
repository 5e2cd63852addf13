"""What the near field costs: the streaming engine of this tree against another source tree, A/B.

The near field (``contextual_loss.engine.nearfield``) evaluates the distances of sensitive rows
directly; how many rows are sensitive depends on the data, so this benchmark times realistic
inputs besides random ones, all with N = M = 4096 vectors (batch 1, float32):

- ``random``: Gaussian features, C = 64 and 256, cosine (few rows sensitive);
- ``patches``: 3 x 3 patches (C = 27) of scikit-image photographs at 64 x 64, the prediction a
  crop shifted by (2, 1) pixels, l2 and cosine (flat and saturated regions: many duplicates);
- ``vgg``: relu2_1 features (C = 128) of a 128 x 128 photograph from ``VGG19Features`` with random
  weights (pretrained weights cannot be downloaded here), cosine.

Every run is a fresh process: it builds the inputs, makes one warm-up call, then times
``--calls`` forward + backward passes of ``contextual_loss(engine="streaming")`` and reports their
median. The two trees' runs alternate (``base``, ``this``, ``base``, ...) so that both see the same
machine. Two tables: wall-clock time, and the process's CPU time (both threads; less disturbed by
other processes on a shared machine than the wall clock, as long as the threads do not spin:
``OMP_WAIT_POLICY=PASSIVE``). Each gives the median over ``--repeats`` runs with [min, max], the
ratio this/base of runs measured side by side (median [min, max]) and the share of rows the
forward pass found sensitive (this tree only).

Usage::

    git archive main | tar -x -C /tmp/main-tree
    python benchmarks/bench_nearfield.py --compare-src /tmp/main-tree/src
    python benchmarks/bench_nearfield.py --compare-src /tmp/main-tree/src --points patches-l2,vgg --repeats 3

Timings on a shared machine are noisy: only the ratios of runs measured side by side mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: name -> (input kind, channels, loss_type)
POINTS = {
    "random-64": ("random", 64, "cosine"),
    "random-256": ("random", 256, "cosine"),
    "patches-l2": ("patches", 27, "l2"),
    "patches-cosine": ("patches", 27, "cosine"),
    "vgg": ("vgg", 128, "cosine"),
}


# ----------------------------------------------------------------------------- worker side


def _photo(name: str, size: int):
    import torch
    import torch.nn.functional as F
    from skimage import data

    image = torch.tensor(getattr(data, name)(), dtype=torch.float32) / 255
    image = image.permute(2, 0, 1)[None] if image.ndim == 3 else image[None, None].expand(1, 3, -1, -1)
    side = min(image.shape[-2:])
    image = image[..., :side, :side]  # square, then area-downsampled
    return F.interpolate(image, size=(size + 2, size + 2), mode="area")


def _inputs(kind: str, channels: int):
    """(x, y) feature maps (1, C, 64, 64): the prediction x and the target y."""
    import torch

    if kind == "random":
        gen = torch.Generator().manual_seed(0)
        return torch.randn(1, channels, 64, 64, generator=gen), torch.randn(1, channels, 64, 64, generator=gen)
    if kind == "patches":
        from contextual_loss.features.patches import extract_patches

        image = _photo("astronaut", 64)
        x, y = image[..., 2:66, 1:65], image[..., 0:64, 0:64]
        return extract_patches(x, 3), extract_patches(y, 3)
    from contextual_loss.features import VGG19Features

    torch.manual_seed(0)
    vgg = VGG19Features("relu2_1", weights=None).eval()
    image = _photo("coffee", 128)
    with torch.no_grad():
        return vgg(image[..., 2:130, 1:129])["relu2_1"], vgg(image[..., 0:128, 0:128])["relu2_1"]


def _sensitive_share(x, y, loss_type: str) -> float | None:
    """The share of rows the forward pass refines, where this tree has the near field."""
    try:
        from contextual_loss.engine.streaming import _ops
    except ImportError:
        return None
    from contextual_loss import maths

    xs, ys = (t.flatten(2).transpose(1, 2).contiguous() for t in (x, y))
    xs, ys = maths.prepare_features(xs, ys, loss_type)
    outputs = _ops.streaming_forward(xs, ys, None, None, loss_type, 0.5, 1e-5, 0.0, "none", 64 * 2**20, "auto",
                                     True, False)  # fmt: skip
    if len(outputs) < 9:
        return None
    return float(outputs[7].float().mean())


def _worker(point: str, calls: int) -> dict:
    import torch

    from contextual_loss import contextual_loss

    kind, channels, loss_type = POINTS[point]
    x, y = _inputs(kind, channels)
    assert x.shape[1] == channels, (x.shape, channels)

    def step() -> None:
        xg = x.clone().requires_grad_(True)
        contextual_loss(xg, y, loss_type=loss_type, engine="streaming").backward()

    step()  # warm-up (and the native kernels' first load)
    times, cpu = [], []
    for _ in range(calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    share = _sensitive_share(x, y, loss_type)
    return {
        "seconds": statistics.median(times),
        "cpu": statistics.median(cpu),
        "sensitive": share,
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- parent side


def _run(src: Path, point: str, calls: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, __file__, "--worker", point, "--calls", str(calls)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{point} on {src}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def _table(results: dict[str, dict[str, list[dict]]], key: str) -> str:
    """One table of ``key``: "seconds" (wall clock) or "cpu" (the process's CPU time, both threads)."""
    what = "wall s" if key == "seconds" else "CPU s"
    lines = [
        f"| point | C | loss | base {what} | this {what} | this / base | rows sensitive |",
        "|---|---|---|---|---|---|---|",
    ]
    for point, runs in results.items():
        _, channels, loss_type = POINTS[point]
        cells = [_spread([r[key] for r in runs[tree]]) for tree in ("base", "this")]
        ratios = [t[key] / b[key] for b, t in zip(runs["base"], runs["this"], strict=True)]
        share = runs["this"][0]["sensitive"]
        shares = "-" if share is None else f"{100 * share:.0f}%"
        ratio = _spread(ratios, 2).replace(" [", "x [")
        lines.append(f"| {point} | {channels} | {loss_type} | {cells[0]} | {cells[1]} | {ratio} | {shares} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-src", type=Path, help="the other source tree (its src directory): 'base'")
    parser.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, of {', '.join(POINTS)}")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per point and tree")
    parser.add_argument("--calls", type=int, default=3, help="timed forward + backward passes per process (median)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.calls)))
        return
    if args.compare_src is None:
        parser.error("--compare-src is required (the tree to compare with)")
    results: dict[str, dict[str, list[dict]]] = {}
    for point in args.points.split(","):
        runs: dict[str, list[dict]] = {"base": [], "this": []}
        for repeat in range(args.repeats):  # alternate, and alternate which goes first
            order = (("base", args.compare_src), ("this", SRC))
            for tree, src in order if repeat % 2 == 0 else reversed(order):
                runs[tree].append(_run(src, point, args.calls, args.threads))
        results[point] = runs
        print(f"{point}: done", file=sys.stderr)
    print(_table(results, "seconds"))
    print()
    print(_table(results, "cpu"))


if __name__ == "__main__":
    main()
