"""Time the VGG19 extractor and the papers' recipes on CPU (random VGG weights: no download needed).

Prints a table: construction time of VGG19Features for several depths, and forward + backward time
of the recipes for one image pair, median of ``--repeats`` runs, with the peak resident memory of
the process. Usage: ``python benchmarks/bench_feature_recipes.py [--sizes 32 64] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.features import VGG19Features


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_construction(repeats: int) -> None:
    print(f"{'VGG19Features(layers, weights=None)':<40} {'layers kept':>11} {'time (ms)':>10}")
    for deepest in ("relu1_2", "relu3_2", "relu4_2", "relu5_4"):
        seconds = _median_seconds(lambda d=deepest: VGG19Features(d, weights=None), repeats)
        print(f"{deepest:<40} {len(VGG19Features(deepest, weights=None).body):>11} {1000 * seconds:>10.1f}")


def bench_recipes(sizes: list[int], repeats: int) -> None:
    recipes = {
        "zoom_recipe(4)": lambda: ContextualBilateralLoss.zoom_recipe(4, weights=None),
        "mechrez_recipe('animation')": lambda: ContextualLoss.mechrez_recipe("animation", weights=None),
    }
    print(f"\n{'recipe':<28} {'size':>6} {'fwd+bwd (s)':>12} {'peak RSS (MiB)':>15}")
    for name, build in recipes.items():
        loss_fn = build()
        for size in sizes:
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(1, 3, size, size, generator=gen, requires_grad=True)
            y = torch.rand(1, 3, size, size, generator=gen)
            seconds = _median_seconds(lambda f=loss_fn, a=x, b=y: f(a, b).backward(), repeats)
            print(f"{name:<28} {size:>6} {seconds:>12.3f} {_peak_rss_mib():>15.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    bench_construction(args.repeats)
    bench_recipes(args.sizes, args.repeats)


if __name__ == "__main__":
    main()
