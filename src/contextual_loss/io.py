"""Reading and writing images as float tensors, and pairing the images of two folders.

Images are (1, C, H, W) float32 tensors with values in [0, 1], RGB by default, the layout every
feature extractor of the package expects. Pillow does the decoding; 16-bit images keep their
precision. Errors a user can act on (a missing file, a file Pillow cannot decode) are
:class:`ImageReadError`, a ``ValueError`` that names the path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from contextual_loss._validation import check_positive_int

__all__ = [
    "IMAGE_SUFFIXES",
    "ImagePairs",
    "ImageReadError",
    "find_images",
    "load_image",
    "pair_images",
    "resize_max_side",
    "save_image",
]

#: File name endings treated as images when a folder is scanned (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """An image file is missing or cannot be decoded; the message names the path."""


def _to_array(image: Image.Image, mode: str) -> np.ndarray:
    """Decode to a float32 (H, W, C) array in [0, 1], keeping 16-bit precision."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: Pillow's convert("RGB") would clip it to 8 bits.
        grey = np.asarray(image, dtype=np.float32) / (65535.0 if image.mode.startswith("I;16") else 255.0)
        grey = np.clip(grey, 0.0, 1.0)[..., None]
        return grey if mode == "L" else np.repeat(grey, 3, axis=-1)
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def load_image(path: PathLike, *, mode: str = "RGB", max_side: int | None = None) -> Tensor:
    """Read an image file as a (1, C, H, W) float32 tensor in [0, 1].

    Args:
        path: a PNG, JPEG or any other file Pillow can decode.
        mode: ``"RGB"`` (3 channels; grey images are repeated, alpha is dropped) or ``"L"`` (grey).
        max_side: if set, shrink the image (antialiased, aspect ratio kept) so that its longer
            side is at most this many pixels; smaller images are left alone. Shrinking turns
            integer shifts between two images into sub-pixel ones (see docs/cli.md).

    Returns:
        The image tensor.

    Raises:
        ImageReadError: the file does not exist or is not an image Pillow can read.
        ValueError: unknown ``mode`` or ``max_side`` < 1.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> file = Path(tempfile.mkdtemp()) / "photo.png"
        >>> _ = save_image(torch.rand(1, 3, 96, 128), file)
        >>> load_image(file).shape, load_image(file, max_side=64).shape
        (torch.Size([1, 3, 96, 128]), torch.Size([1, 3, 48, 64]))

    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    file = Path(path)
    if not file.exists():
        raise ImageReadError(f"no such file: {file}")
    if file.is_dir():
        raise ImageReadError(f"expected an image file, got the folder {file}")
    try:
        with Image.open(file) as image:
            image.load()
            array = _to_array(image, mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read {file} as an image ({type(error).__name__}: {error})") from error
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)
    return resize_max_side(tensor, max_side) if max_side is not None else tensor


def resize_max_side(image: Tensor, max_side: int) -> Tensor:
    """Shrink a (B, C, H, W) image so that max(H, W) <= ``max_side``, keeping the aspect ratio.

    Uses antialiased bilinear interpolation; an image that already fits is returned unchanged.

    Args:
        image: (B, C, H, W), values in [0, 1].
        max_side: the longest side allowed, >= 1.

    Returns:
        (B, C, H', W') with max(H', W') <= ``max_side``, values clamped to [0, 1].

    Raises:
        TypeError, ValueError: ``max_side`` is not an int >= 1.

    Examples:
        >>> import torch
        >>> resize_max_side(torch.rand(1, 3, 100, 50), 40).shape
        torch.Size([1, 3, 40, 20])

    """
    check_positive_int("max_side", max_side)
    height, width = image.shape[-2:]
    longest = max(height, width)
    if longest <= max_side:
        return image
    size = (max(1, round(height * max_side / longest)), max(1, round(width * max_side / longest)))
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)


def save_image(image: Tensor, path: PathLike) -> Path:
    """Write a (1, C, H, W) or (C, H, W) tensor with values in [0, 1] as an 8-bit image file.

    The format follows the file name's ending (PNG recommended). Values are clamped to [0, 1]. An
    existing file is overwritten.

    Args:
        image: (1, C, H, W) or (C, H, W) with C = 1 (grey) or 3 (RGB).
        path: the file to write.

    Returns:
        The path written.

    Raises:
        ValueError: ``image`` holds more than one image or has another shape.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> save_image(torch.rand(3, 8, 8), Path(tempfile.mkdtemp()) / "noise.png").name
        'noise.png'

    """
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"image must hold one image, got shape {tuple(image.shape)}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1, C, H, W) or (C, H, W) with C in (1, 3), got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    file = Path(path)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(file)
    return file


def find_images(folder: PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (by :data:`IMAGE_SUFFIXES`), sorted by name.

    Args:
        folder: the folder to scan (not its sub-folders).

    Returns:
        The paths of its image files.

    Raises:
        ImageReadError: ``folder`` is not a folder.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.jpg"):
        ...     _ = save_image(torch.rand(3, 4, 4), folder / name)
        >>> (folder / "notes.txt").write_text("not an image")
        12
        >>> [path.name for path in find_images(folder)]
        ['a.jpg', 'b.png']

    """
    directory = Path(folder)
    if not directory.is_dir():
        raise ImageReadError(f"no such folder: {directory}")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ImagePairs:
    """Images of two folders paired by name.

    Attributes:
        pairs: (prediction, target) paths, sorted by the prediction's name.
        unpaired_predictions: prediction images without a target.
        unpaired_targets: target images without a prediction.

    Examples:
        >>> from pathlib import Path
        >>> found = ImagePairs([(Path("p/a.png"), Path("t/a.jpg"))], [], [Path("t/b.png")])
        >>> [target.name for target in found.unpaired_targets]
        ['b.png']

    """

    pairs: list[tuple[Path, Path]]
    unpaired_predictions: list[Path]
    unpaired_targets: list[Path]


def _index_by_stem(files: Sequence[Path], folder: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for file in files:
        if file.stem in by_stem:
            raise ImageReadError(
                f"two images in {folder} share the name {file.stem!r} ({by_stem[file.stem].name}, {file.name}); "
                "rename one so that files can be paired by name"
            )
        by_stem[file.stem] = file
    return by_stem


def pair_images(prediction_folder: PathLike, target_folder: PathLike) -> ImagePairs:
    """Pair the images of two folders by file name without its ending (``a.png`` with ``a.jpg``).

    Args:
        prediction_folder: the folder of predictions.
        target_folder: the folder of targets.

    Returns:
        An :class:`ImagePairs`: the pairs, and the images of either folder without a partner.

    Raises:
        ImageReadError: a folder is missing, or two images of one folder share a name.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> pred, target = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
        >>> for folder, name in ((pred, "a.png"), (target, "a.jpg"), (target, "b.png")):
        ...     _ = save_image(torch.rand(3, 4, 4), folder / name)
        >>> found = pair_images(pred, target)
        >>> [(p.name, t.name) for p, t in found.pairs], [t.name for t in found.unpaired_targets]
        ([('a.png', 'a.jpg')], ['b.png'])

    """
    pred_dir, target_dir = Path(prediction_folder), Path(target_folder)
    preds = _index_by_stem(find_images(pred_dir), pred_dir)
    targets = _index_by_stem(find_images(target_dir), target_dir)
    common = sorted(preds.keys() & targets.keys())
    return ImagePairs(
        pairs=[(preds[name], targets[name]) for name in common],
        unpaired_predictions=sorted(preds[name] for name in preds.keys() - targets.keys()),
        unpaired_targets=sorted(targets[name] for name in targets.keys() - preds.keys()),
    )
