"""Score the real-photo runs on held-out photos against the clean photo; write RESULTS.md and the figure.

    python experiments/real_photos/evaluate.py --out experiments/real_photos/runs

Metrics (those of the card experiment: ``card_enhancement.evaluate.image_metrics``), averaged
over the held-out photos and camera shots, against the clean photo in the camera's frame (never
against a misaligned target):

* PSNR and SSIM;
* sharpness ratios to the truth: mean Sobel gradient magnitude and Laplacian variance (1 = as
  sharp as the truth, below 1 blurrier);
* per-crop wins against L1: each held-out image is cut into non-overlapping ``TILE`` x ``TILE``
  crops, and a run wins a crop when its PSNR there is higher than that of L1 with the same seed.

Every number is the mean over the training seeds; the per-seed PSNR is listed beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.card_enhancement.evaluate import _save_small, image_metrics, predict
from experiments.card_enhancement.model import UNetLite, count_parameters
from experiments.card_enhancement.train import load_checkpoint
from experiments.real_photos.data import (
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    Warp,
    load_photo,
    random_warp,
    test_images,
    warp_window,
)
from experiments.real_photos.train import ABLATIONS, DEFAULT_OUT, RUNS, PhotoConfig, checkpoint, loss_settings

__all__ = ["DISTANCE_PAIRS", "LABELS", "TILE", "distance_table", "evaluate", "main", "tile_psnr", "write_report"]

HERE = Path(__file__).resolve().parent
TILE = 48
LABELS = {
    "l1": "L1",
    "cx": "CX (recommended)",
    "cobi": "CoBi (recommended)",
    "cx-defaults": "CX (library defaults)",
    "cobi-defaults": "CoBi (library defaults)",
    "cobi+l1": "CoBi + L1 (recommended)",
    "l1-aligned": "L1 on the aligned target (upper bound)",
}
#: The l2 distance (recommended, library defaults) against the earlier choices with the same loss:
#: (run, candidate it replaces).
DISTANCE_PAIRS = (
    ("cx", "cx-l1-512"),
    ("cobi", "cobi-l1-ws1-512"),
    ("cobi+l1", "cobi+l1-l1-ws1-512"),
    ("cx-defaults", "cx-cosine-all"),
    ("cobi-defaults", "cobi-cosine-ws0.1-all"),
)
#: Zoomed regions of the figure: (photo, top, left, side) in working pixels of the held-out image.
ZOOMS = (("chelsea", 30, 62, 56), ("chelsea", 92, 8, 56), ("coffee", 112, 158, 56), ("coffee", 150, 10, 56))


def label(name: str) -> str:
    """The table label of a run."""
    return LABELS.get(name, name)


def tile_psnr(pred: Tensor, truth: Tensor, tile: int = TILE) -> np.ndarray:
    """PSNR (dB) of every whole, non-overlapping ``tile`` x ``tile`` crop of (3, H, W) images in [0, 1]."""
    rows, cols = truth.shape[-2] // tile, truth.shape[-1] // tile
    if rows == 0 or cols == 0:
        raise ValueError(f"images of shape {tuple(truth.shape)} are smaller than one {tile} x {tile} crop")
    err = (pred.double() - truth.double())[:, : rows * tile, : cols * tile].pow(2)
    mse = err.reshape(3, rows, tile, cols, tile).mean(dim=(0, 2, 4)).clamp_min(1e-12)
    return (-10.0 * torch.log10(mse)).flatten().numpy()


def _hwc(image: Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).double().numpy()


def _misaligned_reference(image: dict) -> Tensor:
    """The held-out truth under a random training-like warp: what a misaligned target scores."""
    stored, work = load_photo(image["photo"])
    rows, cols = image["truth"].shape[-2:]
    top, left = (work.shape[-2] - rows) // 2, (work.shape[-1] - cols) // 2
    warp: Warp = random_warp(np.random.default_rng([11, image["shot"], rows, cols]))
    return warp_window(stored, top, left, (rows, cols), warp)


def _scores(outputs: list[Tensor], images: list[dict], tile: int) -> dict:
    per_image = [image_metrics(_hwc(o), _hwc(im["truth"])) for o, im in zip(outputs, images, strict=True)]
    scores = {key: float(np.mean([m[key] for m in per_image])) for key in per_image[0]}
    scores["tiles"] = np.concatenate([tile_psnr(o, im["truth"], tile) for o, im in zip(outputs, images, strict=True)])
    return scores


def evaluate(out: Path, names: Sequence[str], seeds: Sequence[int], *, shots: int = 2, size: int | None = None) -> dict:
    """Scores of every finished run (and of the input and a misaligned target) on the held-out photos.

    Returns ``{"scores": {name: {seed: metrics}}, "runs": {name: {seed: checkpoint}}, "outputs":
    {name: [images of the first seed]}, "images": the held-out images}``; the references have seed None.
    """
    images = test_images(TEST_PHOTOS, shots, size)
    tile = min(TILE, *(min(im["truth"].shape[-2:]) for im in images))
    scores: dict[str, dict] = {}
    outputs: dict[str, list[Tensor]] = {}
    runs: dict[str, dict] = {}
    references = {"input": [im["camera"] for im in images], "misaligned": [_misaligned_reference(im) for im in images]}
    for name, batch in references.items():
        scores[name] = {None: _scores(batch, images, tile)}
        outputs[name] = batch
    for name in names:
        for seed in seeds:
            path = checkpoint(out, name, seed)
            if not path.exists():
                continue
            ckpt = load_checkpoint(path)
            if ckpt["step"] < ckpt["config"]["steps"]:  # interrupted: left out (run.py resumes it)
                print(f"{name} seed {seed}: unfinished ({ckpt['step']} of {ckpt['config']['steps']} steps), left out")
                continue
            preds = [predict(ckpt, im["camera"][None])[0] for im in images]
            runs.setdefault(name, {})[seed] = ckpt
            scores.setdefault(name, {})[seed] = _scores(preds, images, tile)
            outputs.setdefault(name, preds)
    for name, by_seed in scores.items():  # crops won against L1 trained with the same seed
        for seed, s in by_seed.items():
            reference = scores.get("l1", {}).get(seed)
            s["wins"] = None if reference is None or name == "l1" else int((s["tiles"] > reference["tiles"]).sum())
    return {"scores": scores, "runs": runs, "outputs": outputs, "images": images, "tile": tile}


# ----------------------------------------------------------------------------- figure


def zoom_figure(result: dict, path: Path, columns: Sequence[str], zooms=ZOOMS, scale: int = 3) -> None:
    """Rows of zoomed regions of held-out photos (first shot); columns: input, each run, truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {im["photo"]: i for i, im in reversed(list(enumerate(result["images"])))}
    columns = ["input", *columns, "truth"]
    regions = []
    for photo, top, left, side in zooms:
        if photo not in first:
            continue
        truth = result["images"][first[photo]]["truth"]
        top, left = min(top, truth.shape[-2] - side), min(left, truth.shape[-1] - side)
        regions.append((first[photo], max(top, 0), max(left, 0), min(side, *truth.shape[-2:])))
    side = max(r[3] for r in regions)
    fig, axes = plt.subplots(
        len(regions),
        len(columns),
        figsize=(len(columns) * side * scale / 100, len(regions) * side * scale / 100 + 0.35),
        squeeze=False,
    )
    for r, (index, top, left, size) in enumerate(regions):
        for c, name in enumerate(columns):
            image = result["images"][index]["truth"] if name == "truth" else result["outputs"][name][index]
            crop = image[:, top : top + size, left : left + size].clamp(0, 1)
            ax = axes[r, c]
            ax.imshow(crop.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                title = {"input": "input (camera)", "truth": "ground truth"}.get(name, label(name))
                ax.set_title(title.replace(" (", "\n("), fontsize=8)
    fig.tight_layout(pad=0.2)
    _save_small(fig, path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- report


def _mean(by_seed: dict, key: str) -> float:
    return float(np.mean([s[key] for s in by_seed.values()]))


def _spread(by_seed: dict, key: str, digits: int) -> str:
    values = [s[key] for s in by_seed.values()]
    text = f"{np.mean(values):.{digits}f}"
    return text if len(values) < 2 else f"{text} ({' / '.join(f'{v:.{digits}f}' for v in values)})"


def results_table(result: dict, names: Sequence[str]) -> str:
    """The markdown table of the references and the given runs (means over seeds, per-seed PSNR).

    A run trained with fewer seeds than the others says which ones.
    """
    scores = result["scores"]
    seeds = {s for n in names if n in result["runs"] for s in result["runs"][n]}
    head = (
        "| output | PSNR (dB), mean (per seed) | SSIM | gradient ratio | Laplacian-variance ratio | crops won vs L1 |"
    )
    rows = [head, "|---|---|---|---|---|---|"]
    refs = {"input": "input (camera)", "misaligned": "misaligned clean photo (what the targets look like)"}
    for name in [*refs, *names]:
        if name not in scores:
            continue
        by_seed = scores[name]
        wins = [s["wins"] for s in by_seed.values() if s["wins"] is not None]
        total = sum(len(s["tiles"]) for s in by_seed.values())
        won = f"{sum(wins)} / {total}" if len(wins) == len(by_seed) else "-"
        only = "" if name in refs or set(by_seed) == seeds else f" (seed {', '.join(map(str, sorted(by_seed)))} only)"
        rows.append(
            f"| {refs.get(name, label(name))} | {_spread(by_seed, 'psnr', 2)}{only} | {_mean(by_seed, 'ssim'):.4f} | "
            f"{_mean(by_seed, 'grad_ratio'):.3f} | {_mean(by_seed, 'lap_ratio'):.3f} | {won} |"
        )
    return "\n".join(rows)


def settings_table(result: dict, names: Sequence[str]) -> str:
    """Each run's loss settings, steps, threads and training wall time per seed."""
    head = "| run | loss settings | steps x batch x crop | threads | train time per seed (min) |"
    rows = [head, "|---|---|---|---|---|"]
    for name in names:
        by_seed = result["runs"].get(name)
        if not by_seed:
            continue
        any_ckpt = next(iter(by_seed.values()))
        cfg = PhotoConfig(**any_ckpt["config"])
        settings = loss_settings(cfg)
        text = ", ".join(f"{k} {'None (all positions)' if v is None else v}" for k, v in settings.items()) or "-"
        if cfg.loss == "cobi+l1":
            text += f", + {cfg.l1_weight} x L1"
        if cfg.loss != "l1":
            text = f"{cfg.patch_size} x {cfg.patch_size} patches, " + text
        target = "aligned target" if cfg.target == "aligned" else "misaligned target"
        times = " / ".join(f"{c['train_seconds'] / 60:.1f}" for c in by_seed.values())
        threads = "/".join(sorted({str(c.get("threads", "?")) for c in by_seed.values()}))
        rows.append(
            f"| {label(name)} | {text}; {target} | {cfg.steps} x {cfg.batch_size} x {cfg.crop} | {threads} | {times} |"
        )
    return "\n".join(rows)


def distance_table(result: dict) -> str:
    """PSNR of each l2 run against the run it replaces (same loss, earlier distance), seed by seed."""
    head = "| l2 run | replaces | seed | PSNR l2 (dB) | PSNR replaced (dB) | difference (dB) |"
    rows = [head + " train time l2 / replaced (min) |"]
    rows.append("|---|---|---|---|---|---|---|")
    for new, old in DISTANCE_PAIRS:
        a, b = result["scores"].get(new, {}), result["scores"].get(old, {})
        seeds = sorted(set(a) & set(b))
        for seed in seeds:
            times = [result["runs"][n][seed]["train_seconds"] / 60 for n in (new, old)]
            diff = a[seed]["psnr"] - b[seed]["psnr"]
            rows.append(
                f"| {label(new)} | {old} | {seed} | {a[seed]['psnr']:.2f} | {b[seed]['psnr']:.2f} | {diff:+.2f} | "
                f"{times[0]:.1f} / {times[1]:.1f} |"
            )
        if len(seeds) > 1:
            diff = float(np.mean([a[s]["psnr"] - b[s]["psnr"] for s in seeds]))
            rows.append(
                f"| {label(new)} | {old} | mean | {_mean(a, 'psnr'):.2f} | {_mean(b, 'psnr'):.2f} | {diff:+.2f} | |"
            )
    return "\n".join(rows)


def write_report(result: dict, path: Path, figure: Path, note: str = "") -> str:
    """Write RESULTS.md beside the figure; returns the text."""
    table_runs = [n for n in RUNS if n in result["runs"]]
    ablations = [n for n in ABLATIONS if n in result["runs"]]
    seeds = sorted({s for n in table_runs for s in result["runs"][n]})
    any_ckpt = next(iter(result["runs"][table_runs[0]].values())) if table_runs else None
    width = any_ckpt["config"]["width"] if any_ckpt else 16
    images = result["images"]
    sizes = ", ".join(sorted({f"{im['photo']} {im['truth'].shape[-1]} x {im['truth'].shape[-2]}" for im in images}))
    crops = len(result["scores"]["input"][None]["tiles"])
    ablation_text = ""
    if ablations:
        ablation_seeds = ", ".join(str(s) for s in sorted({s for n in ablations for s in result["runs"][n]}))
        ablation_text = f"""
## Candidates for the defaults (same protocol, 5 x 5 patches; candidates trained with seed(s) {ablation_seeds})

The table's runs are repeated for comparison (their means over all seeds, per-seed values beside).
cx-l1-512 and cobi-l1-ws1-512 were the recommended settings before l2, cx-cosine-all and
cobi-cosine-ws0.1-all the library's defaults for patches before they followed the features.

{results_table(result, [*table_runs, *ablations])}

{settings_table(result, ablations)}

### The l2 distance against the one it replaces, seed by seed

{distance_table(result)}
"""
    text = f"""# Enhancing real photographs from misaligned pairs: results

Generated by `python experiments/real_photos/run.py` (this file is overwritten on each run).

A U-Net-lite ({count_parameters(UNetLite(width)):,} parameters, the card experiment's network,
residual) learns to undo a phone camera's rendering (defocus, colour cast, tone curve, noise,
JPEG) of real photographs. It trains on (camera crop, clean crop) pairs in which the clean crop is
NOT aligned: it is seen through a random shift (up to 2.5 px per axis), rotation (up to 1.5
degrees) and scale (+-2 %). Training photos: {", ".join(TRAIN_PHOTOS)} (scikit-image's sample
photos at half their stored size); held out: {", ".join(TEST_PHOTOS)} ({sizes} pixels), each taken
by {len(images) // max(1, len(TEST_PHOTOS))} random camera draws, scored against the clean photo.
Every run uses the same data, steps and seeds ({", ".join(map(str, seeds))}); each number is the
mean over the seeds. Crops won: the held-out images cut into {crops} crops of
{result["tile"]} x {result["tile"]} pixels per seed, counted where the run's PSNR beats L1's
(same seed), summed over seeds.

{results_table(result, table_runs)}

Settings (every run passes them explicitly; "library defaults" are what `ContextualLoss(patch_size=5)`
and `ContextualBilateralLoss(patch_size=5)` use for patch features: l2 distance, band width 0.5,
every position, CoBi's `weight_sp` 1.0):

{settings_table(result, table_runs)}

![zoomed details of the held-out photos]({figure.relative_to(path.parent).as_posix()})
{ablation_text}
{note}
"""
    path.write_text(text.rstrip("\n") + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the runs in --out, write the figure and the report, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="runs folder written by train.py")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--report", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--figure", type=Path, default=HERE / "figures" / "zoom.png")
    parser.add_argument("--shots", type=int, default=2, help="camera draws per held-out photo")
    parser.add_argument("--size", type=int, default=None, help="score only a centred window of this side (quick)")
    parser.add_argument("--note", default="", help="text appended to the report (e.g. wall times)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    result = evaluate(args.out, [*RUNS, *ABLATIONS], seeds, shots=args.shots, size=args.size)
    if not result["runs"]:
        print(f"no checkpoints under {args.out}; run train.py first", file=sys.stderr)
        return 1
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    zoom_figure(result, args.figure, [n for n in RUNS if n in result["runs"]])
    write_report(result, args.report, args.figure, args.note)
    print(results_table(result, [n for n in (*RUNS, *ABLATIONS) if n in result["runs"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
