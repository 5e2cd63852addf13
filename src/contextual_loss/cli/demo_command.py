"""``contextual-loss demo``: what the contextual loss does, on built-in data, in under a minute.

1. The seed example of the definition: CX of three RGB pixels against three others is
   0.9878605414928291, whatever the order of the target's pixels (CX compares sets).
2. Misalignment (Mechrez et al., ECCV 2018): a texture against copies of itself shifted by
   0-8 pixels or rotated. L1 grows to a large fraction of its value for an unrelated texture
   within a pixel or two; the contextual loss on 5 x 5 patches stays a few percent of it.
3. Figures of both (needs matplotlib) and the images themselves, written to an output folder, so
   that ``contextual-loss compare`` and ``explain`` can be tried on them.

Nothing is downloaded. Exit status 1 if the seed example does not reproduce.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from contextual_loss.cli import COMMANDS
from contextual_loss.cli.parser import CommandError, check_output_folder, note
from contextual_loss.demo.misalignment import MisalignmentStudy, copy_labels, misalignment_study
from contextual_loss.demo.seed_example import SEED_BAND_WIDTH, SEED_CX, SEED_X, SEED_Y, seed_images, seed_permutations

__all__ = ["register", "run"]

#: Settings of the misalignment table: image side, patch side, band width, shifts, rotation.
SIZE, FAST_SIZE, PATCH_SIZE, BAND_WIDTH = 64, 32, 5, 0.5
SHIFTS, ANGLE = (0, 1, 2, 4, 8), 5.0
#: Largest deviation from the definition's value accepted for the seed example (float64).
SEED_TOLERANCE = 1e-12


def _print_seed() -> bool:
    """Print the seed example for the 6 orderings; True when all reproduce the definition's value."""
    print(f"1. Seed example: CX of 3 RGB pixels vs 3 others (cosine, band width {SEED_BAND_WIDTH}, float64)")
    print(f"   prediction pixels {list(SEED_X)}")
    print(f"   target pixels     {list(SEED_Y)}; definition's value CX = {SEED_CX!r}")
    print(f"   {'target order':<14} {'CX':<20} {'|CX - definition|':>18}")
    worst = 0.0
    for order, value in seed_permutations():
        worst = max(worst, abs(value - SEED_CX))
        print(f"   {order!s:<14} {value!r:<20} {abs(value - SEED_CX):>18.1e}")
    ok = worst <= SEED_TOLERANCE
    verdict = "reproduced" if ok else "NOT reproduced"
    print(f"   -> {verdict} for all 6 orderings: CX ignores where the pixels are (largest deviation {worst:.1e})")
    return ok


def _print_misalignment(study: MisalignmentStudy) -> None:
    print(
        f"\n2. Misalignment: a {study.size}x{study.size} texture vs shifted / rotated copies "
        f"(CX on {study.patch_size}x{study.patch_size} RGB patches, cosine, band width {study.band_width})"
    )
    print(f"   {'copy':<14} {'L1':>8} {'L1 / unrel.':>12} {'CX loss':>9} {'CX / unrel.':>12}")
    for row in study.rows:
        print(
            f"   {row.label:<14} {row.l1:8.4f} {100 * row.l1_fraction:11.1f}% "
            f"{row.cx_loss:9.4f} {100 * row.cx_fraction:11.1f}%"
        )
    worst_cx = max(row.cx_fraction for row in study.rows if row.label.startswith("shift") and row.shift <= 4)
    by_shift = {row.shift: row for row in study.rows if row.label.startswith("shift")}
    l1_text = ", ".join(f"{100 * by_shift[s].l1_fraction:.0f}% at {s} px" for s in (1, 2) if s in by_shift)
    print(f"   -> up to 4 px the CX loss stays at most {100 * worst_cx:.1f}% of its unrelated value; L1 is {l1_text}")


#: The figures the demo draws (with matplotlib), in the output folder.
FIGURES = ("seed_example.png", "misalignment.png", "texture_match.png")


def _image_files() -> dict[str, str]:
    """Copy label -> file name of the images the demo writes (the reference is ``texture.png``)."""
    names = {"shift 0 px": "texture.png"}  # the reference itself
    for label in copy_labels(SHIFTS, ANGLE):
        names.setdefault(label, f"texture_{label.replace(' ', '_').replace('°', 'deg')}.png")
    return names


def _check_outputs(out: Path, figures: bool, force: bool) -> None:
    """Refuse to overwrite files of an earlier run unless ``--force``; the folder must be creatable.

    Runs before any work, so that a wrong ``--out`` is reported at once and alone.
    """
    check_output_folder("--out", out)
    planned = [*_image_files().values(), *(FIGURES if figures else ())]
    existing = [name for name in planned if (out / name).exists()]
    if existing and not force:
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise CommandError(
            f"--out {out} already holds {shown} (from an earlier run?); add --force to overwrite them, "
            "or choose another --out"
        )


def _write_outputs(study: MisalignmentStudy, out: Path, figures: bool) -> list[Path]:
    """The images of the study and, with matplotlib, the figures."""
    from contextual_loss.io import save_image

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"--out: cannot create the folder {out} ({error.strerror or error})") from error
    written = [save_image(study.reference, out / "texture.png")]
    for label, name in _image_files().items():
        if label != "shift 0 px":
            written.append(save_image(study.copies[label], out / name))
    if not figures:
        return written
    try:
        written += _figures(study, out)
    except ImportError as error:  # the viz extra is missing: the tables above still stand
        note(f"figures skipped: {error}")
    return written


def _figures(study: MisalignmentStudy, out: Path) -> list[Path]:
    from contextual_loss.demo.misalignment import plot_misalignment
    from contextual_loss.explain import explain_match
    from contextual_loss.features import extract_patches
    from contextual_loss.viz import plot_explanation, save_figure

    x, y = seed_images((1, 2, 0))
    seed = explain_match(x, y, band_width=SEED_BAND_WIDTH)
    files = [
        save_figure(plot_explanation(seed, x, y), out / "seed_example.png"),
        save_figure(plot_misalignment(study), out / "misalignment.png"),
    ]
    label = "shift 4 px" if "shift 4 px" in study.copies else next(iter(study.copies))
    moved = study.copies[label]
    patches = extract_patches(moved, study.patch_size), extract_patches(study.reference, study.patch_size)
    texture = explain_match(*patches, band_width=study.band_width)
    side = study.patch_size
    title = f"CX on {side}x{side} patches; prediction: the texture, {label}; CX = {texture.cx:.4f}"
    files.append(save_figure(plot_explanation(texture, moved, study.reference, title=title), out / "texture_match.png"))
    return files


def run(args: argparse.Namespace) -> int:
    """Print the seed example and the misalignment table, write the figures; 0 on success."""
    start = time.perf_counter()
    out = Path(args.out).expanduser()
    _check_outputs(out, figures=not args.no_figures, force=args.force)
    seed_ok = _print_seed()
    study = misalignment_study(
        size=FAST_SIZE if args.fast else SIZE, patch_size=PATCH_SIZE, shifts=SHIFTS, angle=ANGLE, band_width=BAND_WIDTH
    )
    _print_misalignment(study)
    print("\n3. Outputs")
    written = _write_outputs(study, out, figures=not args.no_figures)
    for file in written:
        print(f"   {file}")
    print(
        f"   try: contextual-loss compare {out / 'texture_shift_4_px.png'} {out / 'texture.png'}\n"
        f"        contextual-loss explain {out / 'texture_rotation_5deg.png'} {out / 'texture.png'} "
        f"--out {out / 'explain_rotation.png'}"
    )
    print(f"\nDone in {time.perf_counter() - start:.1f} s. Figures and images are in {out.resolve()}")
    return 0 if seed_ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description="Reproduce the definition's seed example and the misalignment experiment on built-in "
        "data, print the tables and write figures and images to an output folder.",
    )
    parser.add_argument(
        "--out",
        default="contextual-loss-demo",
        metavar="DIR",
        help="folder for figures and images (default: ./contextual-loss-demo)",
    )
    parser.add_argument(
        "--fast", action="store_true", help=f"a {FAST_SIZE}x{FAST_SIZE} texture instead of {SIZE}x{SIZE}"
    )
    parser.add_argument("--force", action="store_true", help="overwrite the files of an earlier run in --out")
    parser.add_argument("--no-figures", action="store_true", help="write the images but draw no figures")
    parser.set_defaults(func=run)
