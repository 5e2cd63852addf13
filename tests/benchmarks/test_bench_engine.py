"""benchmarks/bench_engine.py: what its tables count, and one worker run per option that changes the inputs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_engine.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_engine", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(batch: int, size: int, channels: int, seconds: float, rate: float) -> dict:
    run = {
        "forward": seconds / 2, "forward_backward": seconds, "peak_above": 0.0,
        "rate_before": rate, "rate_after": rate, "reruns": 0, "kernels": "native",
    }  # fmt: skip
    return {"size": size, "channels": channels, "batch": batch, "distance": "cosine",
            "runs": {("streaming", False): [run]}, "failed": {}}  # fmt: skip


@pytest.mark.parametrize("batch", [1, 3])
def test_matmul_share_counts_every_image_of_the_batch(bench: ModuleType, batch: int) -> None:
    # 6 B N M C flops: S = 10 (N = M = 100), C = 4: 2.4e-4 B GFLOP, so 1 s at 2.4e-4 B GFLOP/s is 100%.
    table = bench._gemm_table([_point(batch, 10, 4, 1.0, 2.4e-4 * batch)], ["streaming"], [False])
    assert table.splitlines()[2].split(" | ")[11] == "100%"
    table = bench._gemm_table([_point(batch, 10, 4, 1.0, 4.8e-4 * batch)], ["streaming"], [False])
    assert table.splitlines()[2].split(" | ")[11] == "50%"


def test_l1_entries_count_every_image_of_the_batch(bench: ModuleType) -> None:
    point = _point(3, 10, 4, 2.0, 1.0)
    point["runs"][("dense", False)] = point["runs"][("streaming", False)]
    row = bench._l1_table([point], [False]).splitlines()[2].split(" | ")
    assert row[7:9] == ["3e+04", "1.5e+04"]  # 3 * 100 * 100 entries in 1 s and in 2 s


def test_dense_memory_estimate_scales_with_the_batch(bench: ModuleType) -> None:
    args = argparse.Namespace(max_dense_gib=1.0, batch=1)
    assert bench._dense_fits(args, 64) is None  # 40 B * 64^4 = 0.63 GiB
    args.batch = 2
    assert bench._dense_fits(args, 64) == "skipped (needs ~1 GiB)"


def test_worker_times_a_batch(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--worker", "--size", "4", "--channels", "8", "--batch", "2",
               "--engine", "streaming", "--threads", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["forward_backward"] > 0 and result["rate_before"] > 0


def test_header_names_the_batch(bench: ModuleType) -> None:
    args = argparse.Namespace(batch=8, threads=2, omp_wait_policy="PASSIVE", repeats=5)
    assert bench._header(args, [])[0].startswith("Batch 8, float32, 2 threads")
