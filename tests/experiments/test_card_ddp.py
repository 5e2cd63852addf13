"""Data-parallel training: 2 processes (torchrun, gloo on the loopback) equal 1 process on the same global batch."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from experiments.card_enhancement import train as T

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "card_enhancement" / "train.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    # CoBi + L1 with position sampling: the sampled positions must also agree across processes
    options = ["--quick", "--loss", "cobi+l1", "--steps", "3", "--max-points", "300"]
    cfg = dataclasses.replace(T.TrainConfig(), **{**T.QUICK, "loss": "cobi+l1", "steps": 3, "max_points": 300})
    cache = tmp_path / "cache"  # the processes read the cards the single run generated
    single = T.train(cfg, tmp_path / "single", progress=False, cache_dir=cache)

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # keep gloo on the loopback interface
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    out = tmp_path / "ddp"
    cmd = [
        *launcher,
        str(SCRIPT),
        *options,
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout

    ddp = T.load_checkpoint(T.checkpoint_path(out, "cobi+l1"))
    assert ddp["world"] == 2 and ddp["config"] == single["config"]
    # the logged loss is the mean over both shards: the global batch's mean
    assert [v for _, v in ddp["history"]] == pytest.approx([v for _, v in single["history"]], rel=1e-5)
    torch.manual_seed(cfg.seed)
    initial = T.UNetLite(cfg.width).state_dict()
    moved = 0.0
    for name, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-6)
        moved = max(moved, float((value - initial[name]).abs().max()))
    assert moved > 1e-4  # the parameters did change, so the comparison means something
