"""Train the small residual U-Net on real photographs with each loss (the card experiment's loop).

    python experiments/real_photos/train.py --runs l1,cx --seeds 0,1 --out experiments/real_photos/runs

The training loop, the model and the losses are those of ``experiments/card_enhancement``
(``train.train`` with this experiment's batches); only the data and the list of runs differ.
Each run is a name in :data:`RUNS` (the table) or :data:`ABLATIONS` (the choice of defaults),
trained once per seed; seeds change the initial weights, the batches and the sampled positions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from experiments.card_enhancement import train as card_train
from experiments.real_photos.data import TRAIN_PHOTOS, training_batch

__all__ = [
    "ABLATIONS",
    "QUICK",
    "RUNS",
    "PhotoConfig",
    "build_loss",
    "config_for",
    "loss_settings",
    "main",
    "run_dir",
    "train_run",
]

DEFAULT_OUT = Path(__file__).resolve().parent / "runs"
TARGETS = ("misaligned", "aligned")


@dataclass(frozen=True)
class PhotoConfig:
    """Everything that determines a training run (stored in its checkpoint).

    The contextual losses use ``patch_size`` x ``patch_size`` RGB patches. With
    ``library_defaults`` they are built as ``ContextualLoss(patch_size=n)`` and
    ``ContextualBilateralLoss(patch_size=n)``, whatever the library's defaults are, and
    ``band_width``, ``loss_type``, ``weight_sp`` and ``max_points`` are not used.
    """

    loss: str = "cx"
    target: str = "misaligned"
    library_defaults: bool = False
    steps: int = 800
    batch_size: int = 8
    crop: int = 48
    lr: float = 2e-3
    seed: int = 0
    width: int = 16
    patch_size: int = 5
    band_width: float = 0.5
    loss_type: str = "l1"
    weight_sp: float = 1.0
    l1_weight: float = 0.5
    max_points: int | None = 512

    def check(self) -> None:
        """Raise ValueError for options that cannot work."""
        if self.loss not in card_train.LOSSES:
            raise ValueError(f"loss must be one of {card_train.LOSSES}, got {self.loss!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.crop % 4 or self.crop < 8:
            raise ValueError(f"crop must be a multiple of 4 and >= 8, got {self.crop}")
        for name in ("steps", "batch_size", "width", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


#: The runs of the results table, in order: name -> changes to :class:`PhotoConfig`.
RUNS: dict[str, dict] = {
    "l1": {"loss": "l1"},
    "cx": {"loss": "cx"},
    "cobi": {"loss": "cobi"},
    "cx-defaults": {"loss": "cx", "library_defaults": True},
    "cobi-defaults": {"loss": "cobi", "library_defaults": True},
    "cobi+l1": {"loss": "cobi+l1"},
    "l1-aligned": {"loss": "l1", "target": "aligned"},
}
#: Candidates for the defaults of pixel and patch features (distance, band width, CoBi's w_s).
#: (The l1 distance's own band width and w_s are not among them: its runs cost 2.5x those of l2 and
#: cosine, and the card experiment measured them; see docs/training.md.)
ABLATIONS: dict[str, dict] = {
    "cx-l2": {"loss": "cx", "loss_type": "l2"},
    "cx-l2-h1": {"loss": "cx", "loss_type": "l2", "band_width": 1.0},
    "cx-cosine-512": {"loss": "cx", "loss_type": "cosine"},
    "cobi-l2-ws0.1": {"loss": "cobi", "loss_type": "l2", "weight_sp": 0.1},
    "cobi-l2-ws0.3": {"loss": "cobi", "loss_type": "l2", "weight_sp": 0.3},
}
ALL_RUNS = {**RUNS, **ABLATIONS}
QUICK = {"steps": 4, "batch_size": 4, "crop": 24, "width": 8, "max_points": 256, "lr": 3e-3}


def config_for(name: str, seed: int, base: PhotoConfig | None = None) -> PhotoConfig:
    """The configuration of run ``name`` with ``seed``, on top of ``base`` (the defaults)."""
    if name not in ALL_RUNS:
        raise ValueError(f"run must be one of {tuple(ALL_RUNS)}, got {name!r}")
    cfg = replace(base or PhotoConfig(), **ALL_RUNS[name], seed=seed)
    cfg.check()
    return cfg


def _contextual_modules(cfg: PhotoConfig) -> tuple[ContextualLoss, ContextualBilateralLoss]:
    if cfg.library_defaults:
        return (
            ContextualLoss(patch_size=cfg.patch_size, reduction="none"),
            ContextualBilateralLoss(patch_size=cfg.patch_size, reduction="none"),
        )
    kwargs = {
        "patch_size": cfg.patch_size,
        "band_width": cfg.band_width,
        "loss_type": cfg.loss_type,
        "max_points": cfg.max_points,
        "reduction": "none",
    }
    return ContextualLoss(**kwargs), ContextualBilateralLoss(weight_sp=cfg.weight_sp, **kwargs)


def loss_settings(cfg: PhotoConfig) -> dict:
    """The settings the contextual loss of ``cfg`` actually uses (read back from the modules)."""
    if cfg.loss == "l1":
        return {}
    cx, cobi = _contextual_modules(cfg)
    module = cx if cfg.loss == "cx" else cobi
    settings = {"distance": module.loss_type, "band_width": module.band_width, "max_points": module.max_points}
    if cfg.loss != "cx":
        settings["weight_sp"] = cobi.weight_sp
    return settings


def build_loss(cfg: PhotoConfig) -> card_train.PerImageLoss:
    """The training loss (prediction, target, generator) -> (B,) per-image losses."""
    if not cfg.library_defaults:
        return card_train.build_loss(cfg)  # the card experiment's losses, with this run's settings
    cx, cobi = _contextual_modules(cfg)

    def l1(pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs().flatten(1).mean(1)

    if cfg.loss == "cx":
        return lambda pred, target, gen: cx(pred, target, generator=gen)
    if cfg.loss == "cobi":
        return lambda pred, target, gen: cobi(pred, target, generator=gen)
    if cfg.loss == "cobi+l1":
        return lambda pred, target, gen: cobi(pred, target, generator=gen) + cfg.l1_weight * l1(pred, target)
    return lambda pred, target, _: l1(pred, target)


def run_dir(out: Path, seed: int) -> Path:
    """The folder of one seed's runs."""
    return out / f"seed{seed}"


def train_run(
    name: str, cfg: PhotoConfig, out: Path, *, photos: Sequence[str] = TRAIN_PHOTOS, progress: bool = True, **kwargs
) -> dict:
    """Train (or resume) run ``name``; the checkpoint goes to ``run_dir(out, cfg.seed)/name``.

    ``kwargs`` go to the card experiment's ``train.train`` (``resume``, ``stop_after``, ...).
    """
    key = "aligned" if cfg.target == "aligned" else "target"

    def batches(step: int) -> tuple[Tensor, Tensor]:
        batch = training_batch(cfg.seed, step, cfg.batch_size, cfg.crop, photos)
        return batch["camera"], batch[key]

    return card_train.train(
        cfg,
        run_dir(out, cfg.seed),
        batches=batches,
        name=name,
        loss_fn=build_loss(cfg),
        progress=progress,
        **kwargs,
    )


def checkpoint(out: Path, name: str, seed: int) -> Path:
    """Where run ``name`` of ``seed`` keeps its checkpoint."""
    return card_train.checkpoint_path(run_dir(out, seed), name)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; every PhotoConfig field but the run's own is an option of the same name."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="table", help="'table', 'ablations', 'all' or a comma-separated list of runs")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    defaults = PhotoConfig()
    for f in fields(PhotoConfig):
        if f.name in ("loss", "target", "library_defaults", "seed"):
            continue
        kind = int if f.name == "max_points" else type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default {f.default}")
    parser.add_argument("--quick", action="store_true", help="tiny runs taking seconds (for tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="runs folder (checkpoints, history)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_names(spec: str) -> list[str]:
    """The run names of ``--runs``."""
    groups = {"table": list(RUNS), "ablations": list(ABLATIONS), "all": list(ALL_RUNS)}
    names = groups.get(spec, spec.split(","))
    unknown = [n for n in names if n not in ALL_RUNS]
    if unknown:
        raise ValueError(f"unknown runs {unknown}; choose from {tuple(ALL_RUNS)} or table/ablations/all")
    return names


def base_config(args: argparse.Namespace) -> PhotoConfig:
    """Defaults, then --quick, then explicit options."""
    base = replace(PhotoConfig(), **QUICK) if args.quick else PhotoConfig()
    overrides = {f.name: getattr(args, f.name, None) for f in fields(PhotoConfig)}
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    """Train every requested run for every seed (finished runs are kept); one line per run."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = base_config(args)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in run_names(args.runs):
            cfg = config_for(name, seed, base)
            ckpt = train_run(name, cfg, args.out, progress=not args.no_progress, resume=True)
            first, final = ckpt["history"][0][1], ckpt["history"][-1][1]
            print(
                f"{name} seed {seed}: {ckpt['step']} steps, loss {first:.4f} -> {final:.4f}, "
                f"{ckpt['train_seconds']:.1f} s, {ckpt['threads']} thread(s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
