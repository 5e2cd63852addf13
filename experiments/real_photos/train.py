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
    "LIBRARY_DEFAULTS",
    "QUICK",
    "RECOMMENDED",
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

    The contextual losses use ``patch_size`` x ``patch_size`` RGB patches and the settings given
    here, passed explicitly to ``ContextualLoss`` / ``ContextualBilateralLoss``: a run never
    depends on the library's defaults at the time it is trained. The field defaults are the
    recommended settings (l2 patch distance, band width 0.5, 512 sampled positions, CoBi's
    ``weight_sp`` 1.0).
    """

    loss: str = "cx"
    target: str = "misaligned"
    steps: int = 800
    batch_size: int = 8
    crop: int = 48
    lr: float = 2e-3
    seed: int = 0
    width: int = 16
    patch_size: int = 5
    band_width: float = 0.5
    loss_type: str = "l2"
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


#: The recommended settings for pixel and patch features (docs/training.md, README).
RECOMMENDED: dict = {"loss_type": "l2", "band_width": 0.5, "max_points": 512}
#: The library's defaults for pixel and patch features once they follow the features (issue 14
#: item 9): the recommended settings on every position. CoBi's ``weight_sp`` is 1.0 for l1/l2.
LIBRARY_DEFAULTS: dict = {"loss_type": "l2", "band_width": 0.5, "max_points": None}

#: The runs of the results table, in order: name -> settings (every loss setting explicit).
RUNS: dict[str, dict] = {
    "l1": {"loss": "l1"},
    "cx": {"loss": "cx", **RECOMMENDED},
    "cobi": {"loss": "cobi", **RECOMMENDED, "weight_sp": 1.0},
    "cx-defaults": {"loss": "cx", **LIBRARY_DEFAULTS},
    "cobi-defaults": {"loss": "cobi", **LIBRARY_DEFAULTS, "weight_sp": 1.0},
    "cobi+l1": {"loss": "cobi+l1", **RECOMMENDED, "weight_sp": 1.0},
    "l1-aligned": {"loss": "l1", "target": "aligned"},
}
#: Candidates for the defaults of pixel and patch features, named by their settings: the distance,
#: CoBi's w_s, the band width h when not 0.5, and the positions compared (512 sampled or all).
#: cx-l1-512 and cobi-l1-ws1-512 are the earlier recommended settings, cx-cosine-all and
#: cobi-cosine-ws0.1-all the library's defaults before they followed the features.
ABLATIONS: dict[str, dict] = {
    "cx-l1-512": {"loss": "cx", "loss_type": "l1", "band_width": 0.5, "max_points": 512},
    "cobi-l1-ws1-512": {"loss": "cobi", "loss_type": "l1", "band_width": 0.5, "max_points": 512, "weight_sp": 1.0},
    "cobi+l1-l1-ws1-512": {
        "loss": "cobi+l1",
        "loss_type": "l1",
        "band_width": 0.5,
        "max_points": 512,
        "weight_sp": 1.0,
    },
    "cx-cosine-all": {"loss": "cx", "loss_type": "cosine", "band_width": 0.5, "max_points": None},
    "cobi-cosine-ws0.1-all": {
        "loss": "cobi",
        "loss_type": "cosine",
        "band_width": 0.5,
        "max_points": None,
        "weight_sp": 0.1,
    },
    "cx-cosine-512": {"loss": "cx", "loss_type": "cosine", "band_width": 0.5, "max_points": 512},
    "cx-l2-h1": {"loss": "cx", "loss_type": "l2", "band_width": 1.0, "max_points": 512},
    "cobi-l2-ws0.1": {"loss": "cobi", "loss_type": "l2", "band_width": 0.5, "max_points": 512, "weight_sp": 0.1},
    "cobi-l2-ws0.3": {"loss": "cobi", "loss_type": "l2", "band_width": 0.5, "max_points": 512, "weight_sp": 0.3},
    # l1's w_s = 1 scaled to the squared l2 distance: nearest-match distances of 5 x 5 patches are
    # about 26x smaller under l2 (median 0.053 against 1.40 on training crops), positions are not
    "cobi-l2-ws0.04": {"loss": "cobi", "loss_type": "l2", "band_width": 0.5, "max_points": 512, "weight_sp": 0.04},
}
ALL_RUNS = {**RUNS, **ABLATIONS}
#: Tiny runs for tests (seconds): smaller steps, batches, crops and network; the loss settings stay.
QUICK = {"steps": 4, "batch_size": 4, "crop": 24, "width": 8, "lr": 3e-3}


def config_for(name: str, seed: int, *, quick: bool = False, **overrides: object) -> PhotoConfig:
    """The configuration of run ``name`` with ``seed``: the run's settings, then QUICK, then ``overrides``."""
    if name not in ALL_RUNS:
        raise ValueError(f"run must be one of {tuple(ALL_RUNS)}, got {name!r}")
    cfg = replace(PhotoConfig(), **ALL_RUNS[name])
    cfg = replace(cfg, **(QUICK if quick else {}), **overrides, seed=seed)
    cfg.check()
    return cfg


def loss_settings(cfg: PhotoConfig) -> dict:
    """The settings the contextual loss of ``cfg`` uses, read back from the modules it builds."""
    if cfg.loss == "l1":
        return {}
    kwargs = {"patch_size": cfg.patch_size, "band_width": cfg.band_width, "loss_type": cfg.loss_type}
    kwargs["max_points"] = cfg.max_points
    if cfg.loss == "cx":
        module = ContextualLoss(**kwargs)
        return {"distance": module.loss_type, "band_width": module.band_width, "max_points": module.max_points}
    cobi = ContextualBilateralLoss(weight_sp=cfg.weight_sp, **kwargs)
    settings = {"distance": cobi.loss_type, "band_width": cobi.band_width, "max_points": cobi.max_points}
    return settings | {"weight_sp": cobi.weight_sp}


def build_loss(cfg: PhotoConfig) -> card_train.PerImageLoss:
    """The training loss (prediction, target, generator) -> (B,) per-image losses: the card experiment's."""
    return card_train.build_loss(cfg)


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
        if f.name in ("loss", "target", "seed"):
            continue
        kind = int if f.name == "max_points" else type(getattr(defaults, f.name))
        help_text = f"overrides the run's setting (default {f.default})"
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=help_text)
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


def overrides(args: argparse.Namespace) -> dict:
    """The PhotoConfig fields given on the command line (they win over the run's settings and --quick)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(PhotoConfig)}
    return {k: v for k, v in given.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Train every requested run for every seed (finished runs are kept); one line per run."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in run_names(args.runs):
            cfg = config_for(name, seed, quick=args.quick, **overrides(args))
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
