"""Evaluate the trained card-enhancement models on held-out cards against the aligned ground truth.

Writes ``RESULTS.md`` (the table, the settings, the timings) and the figures: loss curves and a
side-by-side comparison (input | L1 | CX | CoBi | ground truth)::

    python experiments/card_enhancement/evaluate.py --out experiments/card_enhancement/runs

Metrics, averaged over the held-out cards, all against the *aligned* clean card (the scan warped
by the camera's known geometry), never against the misaligned scan the networks trained on:

* PSNR and SSIM (scikit-image);
* sharpness as ratios to the ground truth on the grey image: mean gradient magnitude (Sobel)
  and variance of the Laplacian; 1.0 means as sharp as the ground truth, below 1 blurrier.
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

from experiments.card_enhancement.data import make_dataset
from experiments.card_enhancement.model import UNetLite, count_parameters
from experiments.card_enhancement.train import DEFAULT_OUT, LOSSES, checkpoint_path, load_checkpoint

__all__ = ["evaluate", "image_metrics", "main", "sharpness"]

HERE = Path(__file__).resolve().parent
LABELS = {"l1": "L1", "cx": "CX", "cobi": "CoBi", "cobi+l1": "CoBi + L1"}
TEST_SEED = 1  # the training cards come from seed 0: distinct card seeds


def _grey(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114])


def sharpness(image: np.ndarray) -> tuple[float, float]:
    """(mean Sobel gradient magnitude, variance of the Laplacian) of an (H, W, 3) image in [0, 1]."""
    from scipy import ndimage

    grey = _grey(image)
    grad = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    return float(grad.mean()), float(ndimage.laplace(grey).var())


def image_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and the two sharpness ratios of ``pred`` against ``truth``, (H, W, 3) in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    grad_p, lap_p = sharpness(pred)
    grad_t, lap_t = sharpness(truth)
    return {
        "psnr": float(peak_signal_noise_ratio(truth, pred, data_range=1.0)),
        "ssim": float(structural_similarity(truth, pred, data_range=1.0, channel_axis=-1)),
        "grad_ratio": grad_p / grad_t,
        "lap_ratio": lap_p / lap_t,
    }


def _hwc(batch: Tensor) -> list[np.ndarray]:
    return [img.permute(1, 2, 0).double().numpy() for img in batch]


@torch.no_grad()
def predict(ckpt: dict, camera: Tensor) -> Tensor:
    """The model's outputs, clamped to [0, 1], for photos (B, 3, H, W) in [0, 1]."""
    model = UNetLite(ckpt["config"]["width"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model(camera).clamp(0, 1)


def evaluate(out: Path, test_cards: int = 24) -> dict:
    """Metrics of every run found in ``out`` plus the input and the misaligned scan as references."""
    cards = make_dataset(test_cards, TEST_SEED)
    camera, scan, truth = (cards[k].double() / 255.0 for k in ("camera", "scan", "aligned"))
    images = {"camera": camera, "scan": scan}
    runs = {}
    for loss in LOSSES:
        path = checkpoint_path(out, loss)
        if path.exists():
            runs[loss] = load_checkpoint(path)
            images[loss] = predict(runs[loss], camera.float()).double()
    truth_np = _hwc(truth)
    table = {}
    for name, batch in images.items():
        per_card = [image_metrics(p, t) for p, t in zip(_hwc(batch), truth_np, strict=True)]
        table[name] = {key: float(np.mean([m[key] for m in per_card])) for key in per_card[0]}
    return {"table": table, "runs": runs, "images": images, "truth": truth}


# ----------------------------------------------------------------------------- figures


def _save_small(fig, path: Path, dpi: int) -> None:
    """Save a figure as an optimised RGB PNG (no alpha channel; colours are kept exactly)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    Image.open(buffer).convert("RGB").save(path, optimize=True)


def loss_curves_figure(runs: dict, path: Path) -> None:
    """One panel per run: the training loss per step and its running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 2.6), squeeze=False)
    for ax, (loss, ckpt) in zip(axes[0], runs.items(), strict=True):
        steps, values = np.asarray(ckpt["history"]).T
        window = max(1, len(values) // 25)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps, values, color="0.75", linewidth=0.6)
        ax.plot(steps[window - 1 :], smooth, color="C0")
        ax.set_title(f"{LABELS[loss]} training loss", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    _save_small(fig, path, dpi=110)
    plt.close(fig)


def comparison_figure(result: dict, path: Path, cards: Sequence[int] = (0, 1, 2), zoom: tuple | None = None) -> None:
    """Rows of held-out cards; columns input | each run | ground truth. ``zoom`` = (top, left, h, w)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["camera", *result["runs"], "truth"]
    titles = ["input (photo)", *(LABELS[c] for c in result["runs"]), "ground truth"]
    images = {**result["images"], "truth": result["truth"]}
    top, left, rows, cols = zoom or (0, 0, *result["truth"].shape[-2:])
    scale = 1.0 if zoom is None else 3.0  # integer scales: every output pixel stays a square block
    fig, axes = plt.subplots(
        len(cards), len(columns), figsize=(len(columns) * cols * scale / 100, len(cards) * rows * scale / 100 + 0.3)
    )
    for r, card in enumerate(cards):
        for c, (name, title) in enumerate(zip(columns, titles, strict=True)):
            ax = axes[r, c]
            crop = images[name][card, :, top : top + rows, left : left + cols]
            ax.imshow(crop.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    _save_small(fig, path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- report


def _settings(runs: dict) -> str:
    head = ("run", "steps", "batch", "crop", "lr", "patch", "distance", "band width", "w_s", "L1 weight", "max points")
    lines = ["| " + " | ".join((*head, "processes x threads", "train time")) + " |", "|---" * (len(head) + 2) + "|"]
    for loss, ckpt in runs.items():
        c = ckpt["config"]
        ws = c["weight_sp"] if "cobi" in loss else "-"
        l1w = c["l1_weight"] if loss == "cobi+l1" else "-"
        contextual = loss != "l1"
        lines.append(
            f"| {LABELS[loss]} | {ckpt['step']} | {c['batch_size']} | {c['crop']} | {c['lr']} | "
            f"{c['patch_size'] if contextual else '-'} | {c['loss_type'] if contextual else '-'} | "
            f"{c['band_width'] if contextual else '-'} | {ws} | {l1w} | "
            f"{c['max_points'] if contextual else '-'} | {ckpt['world']} x {ckpt.get('threads', '?')} | "
            f"{ckpt['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def write_report(result: dict, out_md: Path, figures: dict[str, Path], test_cards: int) -> str:
    """Write the results markdown and return it."""
    runs, table = result["runs"], result["table"]
    names = {"camera": "input (camera photo)", "scan": "misaligned scan (the training target)"}
    rows = ["| output | PSNR (dB) | SSIM | gradient ratio | Laplacian-variance ratio |", "|---|---|---|---|---|"]
    for key, m in table.items():
        label = names.get(key, f"U-Net trained with {LABELS.get(key, key)}")
        rows.append(f"| {label} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['grad_ratio']:.3f} | {m['lap_ratio']:.3f} |")
    any_run = next(iter(runs.values()), None)
    cfg = any_run["config"] if any_run else {}
    params = count_parameters(UNetLite(cfg.get("width", 16)))
    rel = {k: p.relative_to(out_md.parent).as_posix() for k, p in figures.items()}
    text = f"""# Business-card enhancement from misaligned pairs: results

Generated by `python experiments/card_enhancement/run.py` (this file is overwritten on each run).

A U-Net-lite ({params:,} parameters) learns to turn synthetic phone photos of business cards
into scans. It trains on (photo, scan) pairs that are NOT aligned (the photo is warped by a
few pixels of perspective, rotation, translation and bend), with the same data, steps and seed
for each loss. Evaluation: {test_cards} held-out cards, against the scan warped by the photo's
known geometry (the aligned ground truth). Sharpness ratios are the output's mean gradient
magnitude and Laplacian variance divided by the ground truth's (1 = as sharp as the truth).

{chr(10).join(rows)}

Settings (same data, steps and seed for every run; CX and CoBi compare n x n RGB patches of
the output and of the scan with the given distance; train time is wall-clock on a shared machine):

{_settings(runs)}

![side by side]({rel["comparison"]})

![zoom]({rel["zoom"]})

![loss curves]({rel["curves"]})
"""
    out_md.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the runs in --out, write the figures and the report, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="runs folder written by train.py")
    parser.add_argument("--report", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    parser.add_argument("--test-cards", type=int, default=24)
    args = parser.parse_args(argv)
    result = evaluate(args.out, args.test_cards)
    if not result["runs"]:
        print(f"no checkpoints under {args.out}; run train.py first", file=sys.stderr)
        return 1
    args.figures.mkdir(parents=True, exist_ok=True)
    figures = {k: args.figures / f"{k}.png" for k in ("comparison", "zoom", "curves")}
    cards = range(min(3, args.test_cards))
    comparison_figure(result, figures["comparison"], cards)
    comparison_figure(result, figures["zoom"], cards, zoom=(10, 30, 48, 96))
    loss_curves_figure(result["runs"], figures["curves"])
    print(write_report(result, args.report, figures, args.test_cards).split("\n\n")[3])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
