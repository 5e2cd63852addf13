"""Measure what decides how the native strip kernels are built: build time, load time, code speed.

Three tables (docs/engine.md, "Building and loading the native kernels"):

1. **Build time** of ``kernels/_native/strip_kernels.c`` with the system compiler, for the flags
   used on first use (``-march=native``), for AVX2 + FMA (``-march=x86-64-v3``, what a wheel built
   for recent x86 could assume), for the generic target (``-O3`` alone, what a portable wheel
   gets) and for the generic target with the kernels multi-versioned (``target_clones`` for
   x86-64-v4, v3 and the default, chosen at load time: how a portable build keeps vector code),
   alternating the variants.
2. **Load time per process**, in fresh processes (without torch): ``load_library()`` on a warm
   cache (compiler version query, directory walk, hash, sealed memfd copy, dlopen), the compiler
   version query alone, and a plain ``ctypes.CDLL`` of the same file, alternating.
3. **Kernel speed** of the four builds on the engine's strip shape (512 x 16384 float32, the
   strips of S = 128): the forward kernel with the column update, and the backward kernel, in ns
   per entry (fastest of ``--calls`` calls, one thread by default), the variants interleaved.
4. **What it means for a loss:** forward + backward of the streaming loss (``--loss S,C,threads``)
   in fresh processes with each build and with the eager passes, interleaved.

Usage::

    python benchmarks/bench_native_build.py --repeats 7

Timings on a shared machine are noisy: read the ratios of variants measured side by side.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
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
    "fmv": ("-O3",),  # generic, with the exported kernels cloned for x86-64-v4 and v3 (see _fmv_sources)
}
CLONES = '__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) '


def _fmv_sources(build, where: Path) -> Path:
    """A copy of the sources whose kernels are multi-versioned, as an install-time build could ship them."""
    where.mkdir(exist_ok=True)
    for name in build.SOURCES:
        text = (build.SOURCE_DIR / name).read_text()
        for kernel in ("int NAME(cl_forward_strip)(", "int NAME(cl_backward_strip)("):
            text = text.replace(kernel, CLONES + kernel)
        (where / name).write_text(text)
    if CLONES not in (where / build.SOURCES[1]).read_text():
        sys.exit("could not mark the kernels for multi-versioning: the C sources changed")
    return where / build.SOURCES[0]


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
    plain, fmv = build.SOURCE_DIR / build.SOURCES[0], _fmv_sources(build, out_dir / "fmv-sources")
    for _ in range(repeats):
        for name, flags in VARIANTS.items():
            flags = build.FLAG_SETS[0] if flags is None else flags
            source = fmv if name == "fmv" else plain
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


def _declare(lib: ctypes.CDLL) -> None:
    """The float32 kernels' C signatures (kernels/_native/strip_kernels_body.h, ABI 2)."""
    p, i64, f64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.cl_forward_strip_f32.argtypes = [i64, i64, p, p, i, f64, f64, f64, p, p, p, p, p, i, p, p, i64, i]
    lib.cl_backward_strip_f32.argtypes = [i64, i64, p, p, p, p, p, f64, p, i]
    lib.cl_abi_version.restype = i64
    assert lib.cl_abi_version() == 2, "the kernels' ABI changed: update _declare"


def kernel_times(libs: dict[str, Path], repeats: int, calls: int) -> dict[str, dict[str, list[float]]]:
    import torch

    rows, m, threads = 512, 16384, torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    u0 = torch.rand(rows, m, generator=gen) * 2 - 1
    u, base = u0.clone(), torch.ones(rows)
    umax, scale, log_norm, entropy = (torch.empty(rows) for _ in range(4))
    argmin, clamped = torch.empty(rows, dtype=torch.long), torch.empty(rows, dtype=torch.bool)
    best, index = torch.empty(m), torch.empty(m, dtype=torch.long)
    loaded = {name: ctypes.CDLL(str(path)) for name, path in libs.items()}
    for lib in loaded.values():
        _declare(lib)

    def forward(lib: ctypes.CDLL) -> None:
        lib.cl_forward_strip_f32(
            rows, m, u.data_ptr(), base.data_ptr(), 1, 0.5, 1e-5, -87.0, umax.data_ptr(), argmin.data_ptr(),
            scale.data_ptr(), log_norm.data_ptr(), clamped.data_ptr(), 0, best.data_ptr(), index.data_ptr(), 0, threads,
        )  # fmt: skip

    def backward(lib: ctypes.CDLL) -> None:
        lib.cl_backward_strip_f32(
            rows, m, u.data_ptr(), umax.data_ptr(), scale.data_ptr(), argmin.data_ptr(), log_norm.data_ptr(), -87.0,
            entropy.data_ptr(), threads,
        )  # fmt: skip

    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "backward": []} for name in libs}
    for _ in range(repeats):
        for name, lib in loaded.items():
            for kernel, run in (("forward", forward), ("backward", backward)):
                samples = []
                for _ in range(calls):
                    u.copy_(u0)
                    best.fill_(-float("inf"))
                    if kernel == "backward":
                        forward(lib)  # the row statistics the backward kernel reads
                        u.copy_(u0)
                    start = time.perf_counter()
                    run(lib)
                    samples.append(time.perf_counter() - start)
                times[name][kernel].append(min(samples) / (rows * m))
    return times


_LOSS_WORKER = """
import json, time, torch
from contextual_loss.functional import contextual_loss
torch.set_num_threads({threads})
gen = torch.Generator().manual_seed(0)
x = torch.randn(1, {channels}, {size}, {size}, generator=gen, requires_grad=True)
y = torch.randn(1, {channels}, {size}, {size}, generator=gen)
contextual_loss(x[..., :8, :8], y[..., :8, :8], engine="streaming").backward()  # build/load, warm up
start = time.perf_counter()
contextual_loss(x, y, engine="streaming").backward()
print(json.dumps(time.perf_counter() - start))
"""


def loss_times(
    build, key_name: str, libs: dict[str, Path], point: tuple[int, int, int], repeats: int, root: Path
) -> dict[str, list[float]]:
    """Forward + backward of the streaming loss in fresh processes, with each build and the eager passes.

    Each build is placed in its own cache directory under the name of the first-use build (with
    its own hash, so the loader accepts it): the engine then runs exactly that code.
    """
    size, channels, threads = point
    code = _LOSS_WORKER.format(size=size, channels=channels, threads=threads)
    envs = {}
    for name, path in libs.items():
        cache = root / f"cache-{name}"
        cache.mkdir(mode=0o700)
        data = path.read_bytes()
        target = cache / f"{key_name}-{hashlib.sha256(data).hexdigest()}.so"
        target.write_bytes(data)
        target.chmod(0o600)
        envs[name] = {"CONTEXTUAL_LOSS_CACHE_DIR": str(cache)}
    envs["eager passes"] = {"CONTEXTUAL_LOSS_NATIVE": "0"}
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(repeats):
        for name, extra in envs.items():
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **extra}
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="kernel calls per variant and repeat (fastest kept)")
    parser.add_argument("--threads", type=int, default=1, help="threads for the kernel timings (1: code speed alone)")
    parser.add_argument("--loss", default="96,64,2", help="S,C,threads of the end-to-end loss timing")
    args = parser.parse_args()
    build = _load_build()
    argv, shown = build._compiler()
    if argv is None:
        sys.exit(shown)
    import torch

    torch.set_num_threads(args.threads)
    print(f"compiler: {shown}; kernel threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        builds = build_times(build, argv, tmp_dir, args.repeats)
        print("\n| variant | build time, s: median (min-max) |\n|---|---|")
        for name, values in builds.items():
            print(f"| {name} | {_spread(values)} |")

        cache = tmp_dir / "cache"
        os.environ["CONTEXTUAL_LOSS_CACHE_DIR"] = str(cache)
        start = time.perf_counter()
        result = build.build_and_load()
        print(f"\nfirst use (cold cache, build + publish + load): {time.perf_counter() - start:.2f} s")
        loads = load_times(cache, result.path, args.repeats)
        print("\n| warm-cache load in a fresh process | ms: median (min-max) |\n|---|---|")
        for name, values in loads.items():
            print(f"| {name} | {_spread(values, 1e3)} |")

        speeds = kernel_times({name: tmp_dir / f"{name}.so" for name in VARIANTS}, args.repeats, args.calls)
        print("\n| variant | forward ns/entry | backward ns/entry |\n|---|---|---|")
        for name, values in speeds.items():
            print(f"| {name} | {_spread(values['forward'], 1e9)} | {_spread(values['backward'], 1e9)} |")
        point = tuple(int(v) for v in args.loss.split(","))
        libs = {name: tmp_dir / f"{name}.so" for name in VARIANTS}
        key_name = result.path.name.rsplit("-", 1)[0]
        losses = loss_times(build, key_name, libs, point, max(3, args.repeats // 2), tmp_dir)
        print(f"\n| S = {point[0]}, C = {point[1]}, {point[2]} threads | streaming fwd+bwd, s |\n|---|---|")
        for name, values in losses.items():
            print(f"| {name} | {_spread(values)} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
