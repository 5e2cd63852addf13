"""The one script to run on a lent GPU: exactness of the Triton strip kernels, then engine speed and memory.

Steps, each printed as it finishes and all written to one markdown file (``--output``):

1. The card and the software (torch, Triton, CUDA, SMs, memory), and the card's float32 matmul
   rate with TF32 off (an n^3 product, medians of CUDA-event timings), before and after the table.
2. **Exactness first.** The Triton strip kernels against the eager reference on random strips of
   the device (row statistics, column maxima and their rows, the backward), then the streaming
   engine forced onto the Triton kernels against the dense engine (values, gradients, matches;
   CX for the three distances, CoBi in both forms), when the engine can force an implementation
   (``contextual_loss.engine.kernels.use``).
3. **One table**: S in {32, 64, 128, 256} (N = M = S^2 vectors), C in {64, 256}, B in {1, 8};
   engines dense, streaming-eager and streaming-triton; forward and forward + backward time
   (medians of CUDA events after a warm-up call that includes Triton's compilation), peak CUDA
   memory beyond the inputs (``torch.cuda.max_memory_allocated``), the share of the matmul rate
   (counting 2 B N M C flops forward, 6 B N M C forward + backward) and the engine ``auto`` picks.
   Dense points that cannot fit are skipped with the reason.
4. ``ContextualLoss(layers={"relu3_2": 1, "relu4_2": 1}, weights=None)`` on 16 RGB 128 x 128
   crops: forward + backward time and peak memory, per engine, and the ``auto`` choice per layer.
5. The targets of the GPU issue, met or not, from the numbers above.

Usage (from the repository root, with ``src`` on ``PYTHONPATH`` or the package installed)::

    python benchmarks/gpu_check.py --quick --output gpu_check.md   # under 2 minutes on an H100/H200
    python benchmarks/gpu_check.py --output gpu_check.md           # the full table, under 5 minutes
    python benchmarks/gpu_check.py --dry-run                       # tiny CPU problems, Triton interpreted (CI)

Both GPU modes keep to a time budget (``--budget``, 60 s quick and 220 s full by default, for
the measurements after the exactness checks): points left when it is spent are listed as skipped.
The most important points (the issue's targets) are measured first. The exit status is 1 when an
exactness check fails, 2 when there is no CUDA device (without ``--dry-run``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2.0**30
#: Float32 B x N x M matrices the dense engine keeps for its backward (7.8 GiB at S = 128, B = 1 on CPU), used
#: to skip dense points that cannot fit when the engine does not state its own count (``DENSE_MATRICES``).
DENSE_MATRICES = 8
ENGINES = ("dense", "streaming-eager", "streaming-triton")


@dataclass
class Config:
    device: str
    sizes: tuple[int, ...]
    channels: tuple[int, ...]
    batches: tuple[int, ...]
    repeats: int
    budget: float
    matmul_n: int
    vgg_batch: int
    vgg_side: int
    kernel_shapes: tuple[tuple[int, int], ...]
    engine_check: tuple[int, int, int]  # B, S, C of the engine exactness check
    priority: tuple[tuple[int, int, int], ...] = ()  # (S, C, B) measured first
    cap: float = 8.0  # seconds of timed calls per measurement, after which fewer repeats are taken


def _config(args: argparse.Namespace) -> Config:
    if args.dry_run:
        return Config("cpu", (4, 6), (8,), (1, 2), 1, math.inf, 256, 1, 16, ((1, 1), (5, 37), (9, 64)), (2, 4, 6))
    shapes = ((1, 1), (37, 1000), (300, 4099), (512, 16384))
    targets = ((128, 256, 8), (256, 256, 1))
    if args.quick:
        return Config("cuda", (32, 64, 128, 256), (256,), (1, 8), 3, args.budget or 60.0, 8192, 16, 128, shapes,
                      (2, 12, 32), targets, cap=3.0)  # fmt: skip
    return Config("cuda", (32, 64, 128, 256), (64, 256), (1, 8), 5, args.budget or 220.0, 8192, 16, 128, shapes,
                  (2, 12, 32), targets)  # fmt: skip


# ----------------------------------------------------------------------------- report


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: int = 0

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(row) + " |")
        self.add("")

    def check(self, rows: list[list[str]], name: str, ok: bool, detail: str) -> None:
        self.failures += not ok
        rows.append([name, "ok" if ok else "FAIL", detail])


# ----------------------------------------------------------------------------- timing


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device) -> float:
    """Seconds of one call: CUDA events on a GPU, the wall clock on CPU."""
    import torch

    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _median_time(fn: Callable[[], object], device, repeats: int, cap: float = 8.0) -> tuple[float, int]:
    """Median seconds over up to ``repeats`` calls (fewer once ``cap`` seconds are spent), and the count."""
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < cap):
        times.append(_time_once(fn, device))
    return statistics.median(times), len(times)


def _peak_beyond(fn: Callable[[], object], device) -> float | None:
    """Peak CUDA memory of one call beyond what was allocated before it (GiB), or None on CPU."""
    import torch

    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / GIB


def matmul_rate(device, n: int, repeats: int = 5) -> float:
    """Float32 (TF32 off) matmul rate in flop/s: an n x n x n product."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    seconds, _ = _median_time(lambda: a @ b, device, repeats)
    return 2.0 * n**3 / seconds


# ----------------------------------------------------------------------------- kernel selection


def _kernel_context(name: str, device) -> contextlib.AbstractContextManager | None:
    """A context running the streaming engine's strips on ``name`` ('eager'/'triton'), or None if impossible."""
    from contextual_loss.engine import kernels

    use = getattr(kernels, "use", None)
    if use is not None:
        return use(name)
    if name == "triton":
        return None  # an engine without kernel selection cannot run the Triton kernels
    if device.type == "cuda":
        return contextlib.nullcontext()  # (the engine's CUDA path was the eager passes)
    from contextual_loss.engine import native

    return native.disabled()


def _kernel_note(device) -> str:
    from contextual_loss.engine import kernels

    status = getattr(kernels, "status", None)
    if status is None:
        return "engine without kernel selection (kernels.status missing)"
    return "; ".join(line.strip() for line in status(device).splitlines())


# ----------------------------------------------------------------------------- exactness


def _row_stats(n: int, dtype, device):
    import torch

    from contextual_loss.engine.kernels.base import RowStats

    return RowStats(
        umax=torch.empty(n, dtype=dtype, device=device),
        argmin=torch.empty(n, dtype=torch.long, device=device),
        scale=torch.empty(n, dtype=dtype, device=device),
        log_norm=torch.empty(n, dtype=dtype, device=device),
        clamped=torch.empty(n, dtype=torch.bool, device=device),
    )


def _strip(n: int, m: int, dtype, device, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, m, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    base = u.amax(dim=1) + torch.rand(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    if n > 2:
        u[n - 1], base[n - 1] = u[0], base[0]  # a tie between rows: the first must win every column
        base[1] = u[1].amax() - 1e-3  # a clamped row
    return u, base


def _forward_pair(u, base, dtype, device):
    """(eager, triton) forward results on one strip: (stats, best, index, a)."""
    import torch

    from contextual_loss.engine.kernels.base import ColumnMax
    from contextual_loss.engine.kernels.eager import EagerKernels
    from contextual_loss.engine.kernels.triton import TritonKernels

    n, m = u.shape
    out = []
    for kernels in (EagerKernels(), TritonKernels()):
        stats = _row_stats(n, dtype, device)
        cols = ColumnMax(torch.full((m,), -math.inf, dtype=dtype, device=device), torch.zeros(m, dtype=torch.long,
                         device=device))  # fmt: skip
        kernels.forward(u.clone(), base, stats, clamp=True, band_width=0.3, eps=1e-5, columns=cols, row0=7,
                        write_a=False)  # fmt: skip
        a = u.clone()
        kernels.forward(a, base, _row_stats(n, dtype, device), clamp=True, band_width=0.3, eps=1e-5, columns=None,
                        row0=0, write_a=True)  # fmt: skip
        out.append((stats, cols.best, cols.index, a))
    return out


def check_kernels(cfg: Config, device, report: Report) -> None:
    """The Triton strip kernels against the eager reference on this device."""
    import torch

    from contextual_loss.engine.kernels.triton import availability

    rows: list[list[str]] = []
    why = availability(device)
    if why is not None:
        report.check(rows, "Triton kernels available", False, why)
        report.table(["check", "result", "detail"], rows)
        return
    shapes = [(dtype, n, m) for dtype in (torch.float32,) for n, m in cfg.kernel_shapes]
    shapes.append((torch.float64, *cfg.kernel_shapes[-1]))
    for dtype, n, m in shapes:
        try:
            _kernel_case(n, m, dtype, device, rows, report)
        except Exception as exc:
            report.check(rows, f"{str(dtype).removeprefix('torch.')} {n}x{m}", False,
                         f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")  # fmt: skip
    _sync(device)
    report.add("## Exactness: Triton strip kernels vs the eager reference (this device)", "")
    report.table(["check", "result", "detail"], rows)


def _kernel_case(n: int, m: int, dtype, device, rows: list[list[str]], report: Report) -> None:
    """Forward and backward of the Triton kernels against the eager reference on one random strip."""
    import torch

    from contextual_loss.engine.kernels.eager import EagerKernels
    from contextual_loss.engine.kernels.triton import TritonKernels

    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    u, base = _strip(n, m, dtype, device, seed=n + m)
    (es, eb, ei, ea), (ts, tb, ti, ta) = _forward_pair(u, base, dtype, device)
    name = f"forward {str(dtype).removeprefix('torch.')} {n}x{m}"
    same = all(torch.equal(getattr(es, f), getattr(ts, f)) for f in ("umax", "argmin", "clamped"))
    close = all(torch.allclose(x, y, **tol) for x, y in ((es.scale, ts.scale), (es.log_norm, ts.log_norm),
                                                          (eb, tb), (ea, ta)))  # fmt: skip
    differ = (ei != ti).nonzero().squeeze(1)
    # A different row is right only where the two rows' a are equal up to rounding.
    gaps = (ea[ei[differ] - 7, differ] - ea[ti[differ] - 7, differ]).abs() if differ.numel() else ea.new_zeros(0)
    ties_ok = bool((gaps <= tol["atol"] + tol["rtol"] * eb[differ].abs()).all())
    detail = f"max |dL| {float((es.log_norm - ts.log_norm).abs().max()):.2e}, rows differ in {differ.numel()} of {m}"
    report.check(rows, name, same and close and ties_ok, detail)
    # Backward on the same strip, every column owned by some row.
    gen = torch.Generator().manual_seed(n * m)
    owner = torch.sort(torch.randint(0, n, (m,), generator=gen)).values.to(device)
    cols = torch.randperm(m, generator=gen).to(device)
    args = {"gamma_base": torch.randn(n, generator=gen, dtype=torch.float64).to(device, dtype), "band_width": 0.3,
            "argmax_rows": owner, "argmax_cols": cols,
            "argmax_values": torch.randn(m, generator=gen, dtype=torch.float64).to(device, dtype)}  # fmt: skip
    want, got = u.clone(), u.clone()
    EagerKernels().backward(want, es, **args)
    TritonKernels().backward(got, es, **args)
    err = float((want - got).abs().max())
    report.check(
        rows, name.replace("forward", "backward"), bool(torch.allclose(got, want, **tol)), f"max |dG| {err:.2e}"
    )


def _engine_run(x, y, engine: str, kernels_name: str | None, device, cobi: str | None, loss_type: str):
    """(loss, dx, match index) of one engine run; None when the kernels cannot be selected."""
    import torch

    from contextual_loss import functional as CF

    context = contextlib.nullcontext() if kernels_name is None else _kernel_context(kernels_name, device)
    if context is None:
        return None
    xr = x.detach().clone().requires_grad_(True)
    with context:
        if cobi is None:
            loss = CF.contextual_loss(xr, y, band_width=0.3, loss_type=loss_type, engine=engine, reduction="sum")
        else:
            loss = CF.contextual_bilateral_loss(xr, y, weight_sp=0.2, band_width=0.3, loss_type=loss_type, form=cobi,
                                                engine=engine, reduction="sum")  # fmt: skip
        (dx,) = torch.autograd.grad(loss, xr)
        match = CF.contextual_match(x, y, band_width=0.3, loss_type=loss_type, engine=engine,
                                    weight_sp=None if cobi is None else 0.2, form=cobi or "paper")  # fmt: skip
    return loss.detach(), dx, match.index


def _engine_case(b: int, s: int, c: int, loss_type: str, cobi: str | None, dtype, device, gen) -> tuple[bool, str]:
    """One streaming-triton vs dense comparison: (ok, detail)."""
    import torch

    x = torch.randn(b, c, s, s + 1, generator=gen, dtype=torch.float64).to(device, dtype)
    y = torch.randn(b, c, s + 2, s, generator=gen, dtype=torch.float64).to(device, dtype)
    y[:, :, 0, : s // 2] = x[:, :, 1, : s // 2]  # exact duplicates: distance-0 matches
    want = _engine_run(x, y, "dense", None, device, cobi, loss_type)
    got = _engine_run(x, y, "streaming", "triton", device, cobi, loss_type)
    f64 = dtype == torch.float64
    loss_ok = torch.allclose(got[0], want[0], rtol=1e-9 if f64 else 1e-4, atol=1e-9 if f64 else 1e-5)
    grad_err = float((got[1] - want[1]).abs().max()) / max(float(want[1].abs().max()), 1e-30)
    same = float((got[2] == want[2]).double().mean())
    ok = bool(loss_ok) and grad_err <= (1e-7 if f64 else 1e-3) and (same == 1.0 or not f64)
    detail = (
        f"loss {float(got[0]):.6g} vs {float(want[0]):.6g}; max grad err / max grad {grad_err:.1e}; "
        f"matches equal {100 * same:.2f}%"
    )
    return ok, detail


def check_engine(cfg: Config, device, report: Report) -> None:
    """The streaming engine forced onto the Triton kernels against the dense engine."""
    import torch

    from contextual_loss.engine.kernels.triton import availability

    rows: list[list[str]] = []
    b, s, c = cfg.engine_check
    if availability(device) is not None or _kernel_context("triton", device) is None:
        why = availability(device) or "contextual_loss.engine.kernels.use is missing (engine without kernel selection)"
        rows.append(["streaming-triton vs dense", "skipped", why])
        report.add("## Exactness: streaming engine on the Triton kernels vs the dense engine", "")
        report.table(["check", "result", "detail"], rows)
        return
    gen = torch.Generator().manual_seed(0)
    cases = [(lt, None, torch.float64) for lt in ("cosine", "l2", "l1")]
    cases += [
        ("cosine", "paper", torch.float64),
        ("cosine", "released", torch.float64),
        ("cosine", None, torch.float32),
    ]
    for loss_type, cobi, dtype in cases:
        name = f"{'CX' if cobi is None else 'CoBi ' + cobi} {loss_type} {str(dtype).removeprefix('torch.')}"
        try:
            ok, detail = _engine_case(b, s, c, loss_type, cobi, dtype, device, gen)
        except Exception as exc:
            ok, detail = False, f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        report.check(rows, name, ok, detail)
    report.add("## Exactness: streaming engine on the Triton kernels vs the dense engine", "")
    report.table(["check", "result", "detail"], rows)


# ----------------------------------------------------------------------------- the table


@dataclass
class Point:
    size: int
    channels: int
    batch: int
    engine: str
    forward: float | None = None
    forward_backward: float | None = None
    repeats: int = 0
    peak: float | None = None
    note: str = ""


def _dense_fits(point: Point, device) -> str | None:
    """None when the dense engine's matrices fit the device with room to spare, else why not."""
    import torch

    if device.type != "cuda":
        return None
    from contextual_loss import engine

    n = point.size**2
    matrices = getattr(engine, "DENSE_MATRICES", DENSE_MATRICES)  # the engine's own count where it has one
    need = matrices * 4 * point.batch * n * n
    total = torch.cuda.get_device_properties(device).total_memory
    if need > 0.8 * total:
        return f"needs ~{need / GIB:.0f} GiB ({matrices} float32 B x N x M matrices) of {total / GIB:.0f} GiB"
    return None


def measure(point: Point, device, repeats: int, cap: float) -> None:
    """Fill ``point`` with its medians and peak memory (or a note saying why not)."""
    import torch

    from contextual_loss.functional import contextual_loss

    if point.engine == "dense":
        reason = _dense_fits(point, device)
        if reason:
            point.note = f"skipped: {reason}"
            return
    context = contextlib.nullcontext()
    if point.engine != "dense":
        context = _kernel_context(point.engine.removeprefix("streaming-"), device)
        if context is None:
            point.note = "skipped: contextual_loss.engine.kernels.use is missing (engine without kernel selection)"
            return
    engine = "dense" if point.engine == "dense" else "streaming"
    gen = torch.Generator().manual_seed(0)
    shape = (point.batch, point.channels, point.size, point.size)
    x = torch.randn(shape, generator=gen).to(device)
    y = torch.randn(shape, generator=gen).to(device)

    def forward() -> None:
        contextual_loss(x.requires_grad_(True), y, band_width=0.5, engine=engine)

    def forward_backward() -> None:
        contextual_loss(x.requires_grad_(True), y, band_width=0.5, engine=engine).backward()

    try:
        with context:
            forward_backward()  # warm-up: Triton compiles its kernels here
            _sync(device)
            point.forward, _ = _median_time(forward, device, repeats, cap)
            point.forward_backward, point.repeats = _median_time(forward_backward, device, repeats, cap)
            point.peak = _peak_beyond(forward_backward, device)
    except torch.cuda.OutOfMemoryError:
        point.note = "out of memory"
    except Exception as exc:
        point.note = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _release(device) -> None:
    """Free what the last measurement left (its tensors are gone with its frame)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _auto_choice(batch: int, n: int, m: int, channels: int, device) -> str:
    """The engine ``auto`` picks for prepared sets of these sizes on ``device`` (float32)."""
    import torch

    from contextual_loss.engine import choose_engine

    x = torch.empty(1, device=device).expand(batch, n, channels)  # (no memory: the rule reads shapes and device)
    y = torch.empty(1, device=device).expand(batch, m, channels)
    try:
        return choose_engine(x, y, "auto")
    except Exception as exc:
        return f"? ({type(exc).__name__})"


def run_table(cfg: Config, device, report: Report, rate: float, deadline: float) -> list[Point]:
    keys = [(s, c, b) for s in cfg.sizes for c in cfg.channels for b in cfg.batches]
    order = [k for k in cfg.priority if k in keys] + [k for k in keys if k not in cfg.priority]
    points = {(k, e): Point(*k, e) for k in keys for e in ENGINES}
    for key in order:
        for engine in ENGINES:
            point = points[(key, engine)]
            if time.monotonic() > deadline:
                point.note = "skipped: time budget spent"
                continue
            measure(point, device, cfg.repeats, cfg.cap)
            _release(device)
            report.failures += point.note.startswith("ERROR")
            print(f"  measured S={key[0]} C={key[1]} B={key[2]} {engine}: {_ms(point.forward_backward)} ms "
                  f"{point.note}", flush=True)  # fmt: skip
    header = ["S", "C", "B", "engine", "fwd ms", "fwd+bwd ms", "runs", "peak GiB", "fwd % rate", "fwd+bwd % rate",
              "auto", "note"]  # fmt: skip
    rows = []
    for key in keys:
        s, c, b = key
        auto = _auto_choice(b, s * s, s * s, c, device)
        for engine in ENGINES:
            p = points[(key, engine)]
            flops = b * (s * s) ** 2 * c
            rows.append([str(s), str(c), str(b), engine, _ms(p.forward), _ms(p.forward_backward), str(p.repeats or ""),
                         "" if p.peak is None else f"{p.peak:.3f}", _pct(2 * flops, p.forward, rate),
                         _pct(6 * flops, p.forward_backward, rate), auto, p.note])  # fmt: skip
    report.add("## Engines: float32, cosine, h = 0.5, N = M = S^2, default memory budget", "")
    report.table(header, rows)
    return list(points.values())


def _flops(rate: float) -> str:
    return f"{rate / 1e12:.2f} Tflop/s" if rate >= 1e11 else f"{rate / 1e9:.2f} Gflop/s"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.1f}"


def _pct(flops: float, seconds: float | None, rate: float) -> str:
    return "" if seconds is None else f"{100 * flops / seconds / rate:.0f}%"


# ----------------------------------------------------------------------------- the VGG loss


def run_vgg(cfg: Config, device, report: Report, deadline: float) -> None:
    import torch

    from contextual_loss import ContextualLoss

    rows = []
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.vgg_batch, 3, cfg.vgg_side, cfg.vgg_side)
    pred = torch.rand(shape, generator=gen).to(device)
    target = torch.rand(shape, generator=gen).to(device)
    choices = []
    for layer, poolings, channels in (("relu3_2", 2, 256), ("relu4_2", 3, 512)):
        n = (cfg.vgg_side // 2**poolings) ** 2
        choices.append(
            f"{layer} (B={cfg.vgg_batch}, N=M={n}, C={channels}): {_auto_choice(cfg.vgg_batch, n, n, channels, device)}"
        )
    auto = "; ".join(choices)
    engines = [("auto", None), ("dense", None), ("streaming", "eager"), ("streaming", "triton")]
    if device.type != "cuda":  # dry run: building VGG19 and running it on a CPU is slow; one engine shows the path
        engines = engines[3:]
    for engine, kernels_name in engines:
        label = engine if kernels_name is None else f"{engine}-{kernels_name}"
        if time.monotonic() > deadline:
            rows.append([label, "", "", "skipped: time budget spent"])
            continue
        context = contextlib.nullcontext() if kernels_name is None else _kernel_context(kernels_name, device)
        if context is None:
            rows.append([label, "", "", "skipped: contextual_loss.engine.kernels.use is missing"])
            continue
        try:
            loss_fn = ContextualLoss(layers={"relu3_2": 1, "relu4_2": 1}, weights=None, engine=engine).to(device)

            def step(loss_fn=loss_fn) -> None:
                loss_fn(pred.requires_grad_(True), target).backward()

            with context:
                step()
                _sync(device)
                seconds, runs = _median_time(step, device, max(1, cfg.repeats), cfg.cap)
                peak = _peak_beyond(step, device)
            rows.append([label, _ms(seconds), "" if peak is None else f"{peak:.3f}", f"{runs} runs"])
        except torch.cuda.OutOfMemoryError:
            rows.append([label, "", "", "out of memory"])
        except Exception as exc:
            report.failures += 1
            rows.append([label, "", "", f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"])
        finally:
            _release(device)
    report.add(f"## ContextualLoss(layers={{'relu3_2': 1, 'relu4_2': 1}}, weights=None) on {cfg.vgg_batch} RGB "
               f"{cfg.vgg_side} x {cfg.vgg_side} crops (fwd+bwd, includes VGG19)", "", f"auto: {auto}", "")  # fmt: skip
    report.table(["engine", "fwd+bwd ms", "peak GiB", "note"], rows)


# ----------------------------------------------------------------------------- targets


def targets(points: list[Point], rate: float, report: Report) -> None:
    """The GPU issue's targets from the table (unmeasured points say so)."""
    by = {(p.size, p.channels, p.batch, p.engine): p for p in points}
    lines = []
    tri, eager = by.get((128, 256, 8, "streaming-triton")), by.get((128, 256, 8, "streaming-eager"))
    if tri and tri.forward_backward:
        share = 6 * 8 * 16384**2 * 256 / tri.forward_backward / rate
        lines.append(f"- S=128, C=256, B=8 fwd+bwd, Triton at >= 50% of the matmul rate: {100 * share:.0f}% "
                     f"({'met' if share >= 0.5 else 'not met'})")  # fmt: skip
        if eager and eager.forward_backward:
            speedup = eager.forward_backward / tri.forward_backward
            lines.append(f"- same point, >= 3x faster than streaming-eager: {speedup:.2f}x "
                         f"({'met' if speedup >= 3 else 'not met'})")  # fmt: skip
    else:
        lines.append("- S=128, C=256, B=8: not measured")
    big = by.get((256, 256, 1, "streaming-triton"))
    if big and big.forward_backward:
        peak = "n/a" if big.peak is None else f"{big.peak:.2f} GiB"
        met = big.forward_backward < 1.0 and big.peak is not None and big.peak < 1.0
        lines.append(f"- S=256, C=256, B=1 fwd+bwd under 1 s and under 1 GiB beyond the inputs: "
                     f"{big.forward_backward:.2f} s, {peak} ({'met' if met else 'not met'})")  # fmt: skip
    else:
        lines.append("- S=256, C=256, B=1: not measured")
    slower = []
    for (s, c, b, engine), p in by.items():
        dense = by.get((s, c, b, "dense"))
        measured = engine == "streaming-triton" and p.forward_backward and dense and dense.forward_backward
        if measured and p.forward_backward > dense.forward_backward:
            slower.append(f"S={s} C={c} B={b} ({p.forward_backward / dense.forward_backward:.2f}x dense)")
    lines.append("- streaming-triton slower than dense where dense fits (what `auto` must avoid): "
                 + (", ".join(slower) if slower else "none"))  # fmt: skip
    report.add("## Targets of the GPU issue", "", *lines, "")


# ----------------------------------------------------------------------------- main


def _header(cfg: Config, device, args: argparse.Namespace) -> list[str]:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:
        triton_version = f"unavailable ({type(exc).__name__})"
    lines = [f"- command: `{' '.join(sys.argv)}`", f"- python {platform.python_version()}, torch {torch.__version__}, "
             f"triton {triton_version}, CUDA {torch.version.cuda}"]  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"- device: {props.name}, compute capability {props.major}.{props.minor}, "
                     f"{props.multi_processor_count} SMs, {props.total_memory / GIB:.0f} GiB")  # fmt: skip
    else:
        lines.append(f"- device: CPU ({platform.processor() or platform.machine()}), Triton interpreted: dry run, "
                     "numbers are not measurements")  # fmt: skip
    lines.append(f"- strip kernels: {_kernel_note(device)}")
    lines.append(f"- mode: {'dry-run' if args.dry_run else 'quick' if args.quick else 'full'}; time budget "
                 f"{cfg.budget:.0f} s after the exactness checks")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick table (under 2 minutes on an H100/H200)")
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU problems under TRITON_INTERPRET=1")
    parser.add_argument("--output", type=Path, default=Path("gpu_check.md"), help="markdown file to write")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the measurements after the checks")
    args = parser.parse_args(argv)
    if args.dry_run:  # must precede the first import of Triton (its language is wrapped at import)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    cfg = _config(args)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --dry-run", file=sys.stderr)
        return 2
    device = torch.device(cfg.device, 0) if cfg.device == "cuda" else torch.device("cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = Report()
    started = time.monotonic()
    report.add("# GPU check of the contextual-loss engines", "", *_header(cfg, device, args))
    rate = matmul_rate(device, cfg.matmul_n)
    report.add(f"- float32 matmul rate (TF32 off, {cfg.matmul_n}^3): {_flops(rate)}", "")
    check_kernels(cfg, device, report)
    check_engine(cfg, device, report)
    report.add(f"(exactness checks took {time.monotonic() - started:.0f} s, Triton's compilation included)", "")
    deadline = time.monotonic() + cfg.budget
    points = run_table(cfg, device, report, rate, deadline)
    run_vgg(cfg, device, report, deadline + 15.0)
    after = matmul_rate(device, cfg.matmul_n)
    report.add(f"- float32 matmul rate after the table: {_flops(after)} "
               f"({100 * (after - rate) / rate:+.0f}% drift)", "")  # fmt: skip
    if not args.dry_run:
        targets(points, rate, report)
    report.add(f"Total {time.monotonic() - started:.0f} s; exactness failures: {report.failures}.")
    args.output.write_text("\n".join(report.lines) + "\n")
    print(f"wrote {args.output}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
