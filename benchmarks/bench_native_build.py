"""Measure what decides how the native strip kernels are built: build time, load time, code speed.

Three tables (docs/engine.md, "Building and loading the native kernels"):

1. **Build time** of ``kernels/_native/strip_kernels.c`` with the system compiler, for the flags
   used on first use (``-march=native``), for AVX2 + FMA (``-march=x86-64-v3``, what a wheel built
   for recent x86 could assume) and for the generic target (``-O3`` alone, what a portable wheel
   gets), alternating the variants.
2. **Load time per process**, in fresh processes (without torch): ``load_library()`` on a warm
   cache (compiler version query, directory walk, hash, sealed memfd copy, dlopen), the compiler
   version query alone, and a plain ``ctypes.CDLL`` of the same file, alternating.
3. **Kernel speed** of the three builds on the engine's strip shape (512 x 16384 float32, the
   strips of S = 128): the forward kernel with the column update, and the backward kernel, in ns
   per entry, the variants interleaved call by call.

Usage::

    python benchmarks/bench_native_build.py --repeats 7

Timings on a shared machine are noisy: read the ratios of variants measured side by side.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = Path(__file__).resolve().parents[1] / "src" / "contextual_loss" / "engine" / "kernels" / "_build.py"
VARIANTS = {
    "native": None,  # the first flag set of _build (-march=native, 512-bit vectors, unrolled)
    "x86-64-v3": ("-O3", "-march=x86-64-v3"),
    "generic": ("-O3",),
}


def _load_build():
    """kernels/_build.py as a standalone module (it needs only the standard library)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_cl_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_cl_build"] = module
    spec.loader.exec_module(module)
    return module


def _spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    low, mid, high = (f"{v * scale:.{digits}g}" for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} ({low}-{high})"


def build_times(build, argv: list[str], out_dir: Path, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    source = build.SOURCE_DIR / build.SOURCES[0]
    for _ in range(repeats):
        for name, flags in VARIANTS.items():
            flags = build.FLAG_SETS[0] if flags is None else flags
            cmd = [*argv, *flags, *build.COMMON_FLAGS, str(source), "-o", str(out_dir / f"{name}.so"), "-lm"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            times[name].append(time.perf_counter() - start)
    return times


_LOAD_WORKER = """
import ctypes, json, sys, time
sys.path.insert(0, {here!r})
from bench_native_build import _load_build
build = _load_build()
if {mode!r} == "load_library":
    start = time.perf_counter()
    result = build.load_library()
    elapsed = time.perf_counter() - start
    assert result.path is not None, result.status
elif {mode!r} == "cc --version":
    argv, _ = build._compiler()
    start = time.perf_counter()
    build._run([*argv, "--version"], time.monotonic() + 60)
    elapsed = time.perf_counter() - start
else:
    start = time.perf_counter()
    ctypes.CDLL({path!r})
    elapsed = time.perf_counter() - start
print(json.dumps(elapsed))
"""


def load_times(cache: Path, cached: Path, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"load_library": [], "cc --version": [], "ctypes.CDLL": []}
    env = {**os.environ, "CONTEXTUAL_LOSS_CACHE_DIR": str(cache)}
    for _ in range(repeats):
        for mode in times:
            code = _LOAD_WORKER.format(here=str(Path(__file__).parent), mode=mode, path=str(cached))
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times[mode].append(json.loads(done.stdout))
    return times


def kernel_times(libs: dict[str, Path], repeats: int, calls: int) -> dict[str, dict[str, list[float]]]:
    import torch

    from contextual_loss.engine import native

    rows, m = 512, 16384
    gen = torch.Generator().manual_seed(0)
    u0 = torch.rand(rows, m, generator=gen) * 2 - 1
    base = torch.ones(rows)
    out = {name: torch.empty(rows, dtype=torch.long if name == "argmin" else torch.float32)
           for name in ("umax", "argmin", "scale", "log_norm")}  # fmt: skip
    out["clamped"] = torch.empty(rows, dtype=torch.bool)
    kernels = {}
    for name, path in libs.items():
        lib = ctypes.CDLL(str(path))
        native._declare(lib)
        kernels[name] = native.StripKernels(lib, "f32")
    u = u0.clone()
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "backward": []} for name in libs}
    for _ in range(repeats):
        for name, k in kernels.items():
            best = torch.full((m,), -float("inf"))
            index = torch.zeros(m, dtype=torch.long)
            samples = []
            for _ in range(calls):
                u.copy_(u0)
                start = time.perf_counter()
                k.forward(u, base, True, 0.5, 1e-5, -87.0, out, write_a=False, best=best, index=index, row0=0)
                samples.append(time.perf_counter() - start)
            times[name]["forward"].append(min(samples) / (rows * m))
            stats = (out["umax"].clone(), out["scale"].clone(), out["argmin"].clone(), out["log_norm"].clone())
            samples = []
            for _ in range(calls):
                u.copy_(u0)
                start = time.perf_counter()
                k.backward(u, *stats, -87.0)
                samples.append(time.perf_counter() - start)
            times[name]["backward"].append(min(samples) / (rows * m))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="kernel calls per variant and repeat (fastest kept)")
    args = parser.parse_args()
    build = _load_build()
    argv, shown = build._compiler()
    if argv is None:
        sys.exit(shown)
    import torch

    print(f"compiler: {shown}; torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        builds = build_times(build, argv, tmp_dir, args.repeats)
        print("\n| variant | build time, s: median (min-max) |\n|---|---|")
        for name, values in builds.items():
            print(f"| {name} | {_spread(values)} |")

        cache = tmp_dir / "cache"
        first = _load_build()
        os.environ["CONTEXTUAL_LOSS_CACHE_DIR"] = str(cache)
        start = time.perf_counter()
        result = first.build_and_load()
        print(f"\nfirst use (cold cache, build + publish + load): {time.perf_counter() - start:.2f} s")
        loads = load_times(cache, result.path, args.repeats)
        print("\n| warm-cache load in a fresh process | ms: median (min-max) |\n|---|---|")
        for name, values in loads.items():
            print(f"| {name} | {_spread(values, 1e3)} |")

        speeds = kernel_times({name: tmp_dir / f"{name}.so" for name in VARIANTS}, args.repeats, args.calls)
        print("\n| variant | forward ns/entry | backward ns/entry |\n|---|---|---|")
        for name, values in speeds.items():
            print(f"| {name} | {_spread(values['forward'], 1e9)} | {_spread(values['backward'], 1e9)} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
