"""Train the card-enhancement U-Net from misaligned (camera, scan) pairs with L1, CX or CoBi.

One process::

    python experiments/card_enhancement/train.py --loss cx --out runs/cards

Several processes (one machine or many; gloo on CPU, nccl on GPU)::

    torchrun --nproc-per-node 2 experiments/card_enhancement/train.py --loss cx --out runs/cards

Each process takes its shard of the global batch and computes the per-image losses on it;
DistributedDataParallel averages the gradients. Because the losses are per image (CX and CoBi
centre each image on its own target mean), the result equals a single-process run on the same
global batch. Batches are a pure function of (seed, step), so a run resumed from its checkpoint
(``--resume``) continues exactly where it stopped.

The contextual losses compare n x n RGB patches (``ContextualLoss(patch_size=n)``), as in the
patch experiments of Mechrez et al. (ECCV 2018) and the RGB term of CoBi (Zhang et al., CVPR 2019).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from experiments.card_enhancement.data import make_dataset
from experiments.card_enhancement.model import UNetLite

__all__ = ["LOSSES", "TrainConfig", "build_loss", "load_checkpoint", "main", "train"]

LOSSES = ("l1", "cx", "cobi", "cobi+l1")
#: What ``--loss all`` trains, in order.
DEFAULT_RUNS = LOSSES
DEFAULT_OUT = Path(__file__).resolve().parent / "runs"
PerImageLoss = Callable[[Tensor, Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoint)."""

    loss: str = "cx"
    steps: int = 600
    batch_size: int = 8  # global, split over the processes
    crop: int = 48
    lr: float = 2e-3
    seed: int = 0
    train_cards: int = 192
    width: int = 16
    patch_size: int = 5
    band_width: float = 0.5
    loss_type: str = "l1"  # cosine ignores the contrast of centred RGB patches (see docs/training.md)
    weight_sp: float = 1.0
    l1_weight: float = 0.5
    max_points: int | None = 512

    def check(self) -> None:
        """Raise ValueError for options that cannot work."""
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.crop % 4 or self.crop < 8:
            raise ValueError(f"crop must be a multiple of 4 and >= 8, got {self.crop}")
        for name in ("steps", "batch_size", "train_cards", "width", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


QUICK = {"steps": 8, "batch_size": 4, "crop": 24, "train_cards": 4, "width": 8, "max_points": None, "lr": 3e-3}


# ----------------------------------------------------------------------------- losses


def build_loss(cfg: TrainConfig) -> PerImageLoss:
    """The training loss as a function (prediction, target, generator) -> (B,) per-image losses."""
    kwargs = {
        "patch_size": cfg.patch_size,
        "band_width": cfg.band_width,
        "loss_type": cfg.loss_type,
        "max_points": cfg.max_points,
    }
    cx = ContextualLoss(**kwargs, reduction="none")
    cobi = ContextualBilateralLoss(weight_sp=cfg.weight_sp, **kwargs, reduction="none")

    def l1(pred: Tensor, target: Tensor, _: torch.Generator) -> Tensor:
        return (pred - target).abs().flatten(1).mean(1)

    if cfg.loss == "l1":
        return l1
    if cfg.loss == "cx":
        return lambda pred, target, gen: cx(pred, target, generator=gen)
    if cfg.loss == "cobi":
        return lambda pred, target, gen: cobi(pred, target, generator=gen)
    return lambda pred, target, gen: cobi(pred, target, generator=gen) + cfg.l1_weight * l1(pred, target, gen)


# ----------------------------------------------------------------------------- data


def global_batch(cards: dict[str, Tensor], cfg: TrainConfig, step: int) -> tuple[Tensor, Tensor]:
    """The (camera, scan) crops of global step ``step``: a pure function of (seed, step).

    Both crops take the same window of their own frame, so they differ by the card's warp.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    count, _, rows, cols = cards["camera"].shape
    index = torch.randint(0, count, (cfg.batch_size,), generator=gen)
    top = torch.randint(0, rows - cfg.crop + 1, (cfg.batch_size,), generator=gen)
    left = torch.randint(0, cols - cfg.crop + 1, (cfg.batch_size,), generator=gen)
    out = []
    for key in ("camera", "scan"):
        crops = [cards[key][i, :, t : t + cfg.crop, s : s + cfg.crop] for i, t, s in zip(index, top, left, strict=True)]
        out.append(torch.stack(crops).float() / 255.0)
    return out[0], out[1]


def load_cards(count: int, seed: int, cache_dir: Path | None) -> dict[str, Tensor]:
    """The training cards, from ``cache_dir`` if generated before (generation takes ~0.1 s a card)."""
    if cache_dir is None:
        return make_dataset(count, seed)
    path = cache_dir / f"cards_n{count}_seed{seed}.pt"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(make_dataset(count, seed), tmp)
        tmp.replace(path)
    return torch.load(path)


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def init_distributed(force_cpu: bool) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE set), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not force_cpu
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return Dist(device=device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def _mean_over_processes(value: Tensor, info: Dist) -> float:
    value = value.detach()
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world
    return float(value)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(out: Path, loss: str) -> Path:
    """Where the run for ``loss`` keeps its checkpoint."""
    return out / loss.replace("+", "_") / "checkpoint.pt"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint: model, optimizer, step, history (list of [step, loss]), config, train_seconds."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, tmp)
    tmp.replace(path)  # atomic: an interrupted save never corrupts the previous checkpoint
    path.with_name("history.json").write_text(json.dumps(state["history"]))


# ----------------------------------------------------------------------------- training


def _lr(cfg: TrainConfig, step: int) -> float:
    """Short warm-up, then cosine decay to 5% (a function of the step, so resuming is exact)."""
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    info: Dist | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    ckpt_every: int = 100,
    cache_dir: Path | None = None,
    progress: bool = True,
    batches: Callable[[int], tuple[Tensor, Tensor]] | None = None,
    name: str | None = None,
    loss_fn: PerImageLoss | None = None,
) -> dict:
    """Train one model; returns its final checkpoint dictionary (also saved under ``out``).

    Args:
        cfg: the run's configuration (any dataclass with ``check()`` and the fields this loop
            reads: steps, batch_size, lr, seed, width, and those of :func:`build_loss`).
        out: the runs folder; the checkpoint goes to ``checkpoint_path(out, name or cfg.loss)``.
        info: rank, world size and device (single CPU process by default).
        resume: continue from the checkpoint if there is one (its configuration must match).
        stop_after: stop (and save) after this many steps in total, as an interruption would.
        ckpt_every: save every this many steps.
        cache_dir: where generated training cards are cached.
        progress: show a tqdm progress bar (rank 0 only).
        batches: ``batches(step)`` -> the global (input, target) batch of a step, a pure function of
            the step; the cards of ``cfg`` by default. Other experiments train on their own data.
        name: the run's name (its checkpoint folder and progress label); ``cfg.loss`` by default.
        loss_fn: the per-image loss; ``build_loss(cfg)`` by default.

    """
    from tqdm.auto import tqdm

    cfg.check()
    info = info or Dist()
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes {info.world}")
    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    model = UNetLite(cfg.width).to(info.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    name = name or cfg.loss
    path = checkpoint_path(out, name)
    # processes and threads change the order of floating-point sums, hence the trajectory slightly
    state = {"step": 0, "history": [], "config": asdict(cfg), "train_seconds": 0.0}
    state |= {"world": info.world, "threads": torch.get_num_threads()}
    if resume and path.exists():
        ckpt = load_checkpoint(path)
        if ckpt["config"] != asdict(cfg):
            raise ValueError(f"cannot resume {path}: it was trained with {ckpt['config']}, not {asdict(cfg)}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = {k: ckpt.get(k, v) for k, v in state.items()}
    if batches is None:
        cards = load_cards(cfg.train_cards, cfg.seed, cache_dir) if info.rank == 0 else None
        if info.world > 1:
            dist.barrier()  # rank 0 has written the cache; the others read it (or generate the same cards)
        cards = cards if cards is not None else load_cards(cfg.train_cards, cfg.seed, cache_dir)
        batches = partial(global_batch, cards, cfg)
    net: nn.Module = model
    if info.world > 1:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    loss_fn = loss_fn or build_loss(cfg)
    shard = cfg.batch_size // info.world
    last = min(cfg.steps, stop_after if stop_after is not None else cfg.steps)
    bar = tqdm(
        range(state["step"], last),
        initial=state["step"],
        total=cfg.steps,
        desc=name,
        disable=not progress or info.rank != 0,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    for step in bar:
        camera, scan = batches(step)
        lo, hi = info.rank * shard, (info.rank + 1) * shard
        camera, scan = camera[lo:hi].to(info.device), scan[lo:hi].to(info.device)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        # the same position sample in every process: the per-image losses do not depend on the split
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        loss = loss_fn(net(camera), scan, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = _mean_over_processes(loss, info)
        state["history"].append([step, value])
        state["step"] = step + 1
        bar.set_postfix(loss=f"{value:.4f}")
        if info.rank == 0 and (state["step"] % ckpt_every == 0 or state["step"] == last):
            state["train_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            _save(path, model, opt, state)
    bar.close()
    if info.world > 1:
        dist.barrier()
    return load_checkpoint(path) if info.rank == 0 else {"model": model.state_dict(), **state}


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; every TrainConfig field is an option of the same name."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = TrainConfig()
    parser.add_argument("--loss", default="all", help=f"one of {LOSSES}, a comma-separated list, or 'all'")
    for f in fields(TrainConfig):
        if f.name == "loss":
            continue
        kind = int if f.name == "max_points" else type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default {f.default}")
    parser.add_argument("--no-max-points", action="store_true", help="compare every patch (no sampling)")
    parser.add_argument("--quick", action="store_true", help="a tiny run taking seconds (for tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="runs folder (checkpoints, history)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache generated training cards here")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (resume later)")
    parser.add_argument("--ckpt-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if CUDA is available")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per requested loss: defaults, then --quick, then explicit options."""
    names = DEFAULT_RUNS if args.loss == "all" else tuple(args.loss.split(","))
    base = replace(TrainConfig(), **QUICK) if args.quick else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "loss"}
    base = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_max_points:
        base = replace(base, max_points=None)
    configs = [replace(base, loss=name) for name in names]
    for cfg in configs:
        cfg.check()
    return configs


def main(argv: Sequence[str] | None = None) -> int:
    """Train every requested loss in turn; prints one summary line per run."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.cpu)
    try:
        for cfg in configs_from_args(args):
            ckpt = train(
                cfg,
                args.out,
                info=info,
                resume=args.resume,
                stop_after=args.stop_after,
                ckpt_every=args.ckpt_every,
                cache_dir=args.cache_dir,
                progress=not args.no_progress,
            )
            if info.rank == 0:
                first, final = ckpt["history"][0][1], ckpt["history"][-1][1]
                print(
                    f"{cfg.loss}: {ckpt['step']} steps, loss {first:.4f} -> {final:.4f}, "
                    f"{ckpt['train_seconds']:.1f} s, {info.world} process(es), {checkpoint_path(args.out, cfg.loss)}"
                )
    finally:
        if info.world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
