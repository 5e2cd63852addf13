"""Patch features: every n x n patch of the image itself is one feature vector.

The RGB-patch experiments of Mechrez et al. (ECCV 2018) and the n x n RGB patches of CoBi
(Zhang et al., CVPR 2019; n = 10 for 4x zoom, 15 for 8x, 5 in the released code).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from contextual_loss._validation import check_choice, check_positive_int

__all__ = ["IdentityFeatures", "PatchFeatures", "extract_patches"]

Padding = Literal["reflect", "zero", "none"]
PADDINGS: tuple[str, ...] = get_args(Padding)


def extract_patches(image: Tensor, size: int, padding: Padding = "reflect") -> Tensor:
    """All n x n patches of ``image`` at stride 1, as a feature map of C * n * n channels.

    Channel ``c * n * n + r * n + s`` of output position (i, j) is ``image[c, i + r - p, j + s - p]``
    with p = (n - 1) // 2, the order of ``torch.nn.functional.unfold``. ``reflect`` and ``zero``
    padding keep the size H x W; ``none`` keeps only whole patches, (H - n + 1) x (W - n + 1).

    Args:
        image: (B, C, H, W).
        size: patch side n >= 1.
        padding: ``"reflect"``, ``"zero"`` or ``"none"``.

    Returns:
        (B, C * n * n, H', W'); the only large tensor allocated is this one.

    Raises:
        TypeError: ``image`` is not a tensor, or ``size`` not an int.
        ValueError: ``image`` is not 4-d, ``size`` < 1, an unknown ``padding``, or patches that do
            not fit the image.

    Examples:
        >>> import torch
        >>> extract_patches(torch.rand(2, 3, 16, 12), 5).shape
        torch.Size([2, 75, 16, 12])
        >>> extract_patches(torch.rand(2, 3, 16, 12), 5, "none").shape
        torch.Size([2, 75, 12, 8])

    """
    check_positive_int("size", size)
    check_choice("padding", padding, PADDINGS)
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor of shape (B, C, H, W), got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"image must have shape (B, C, H, W), got shape {tuple(image.shape)}")
    if padding != "none" and size > 1:
        before, after = (size - 1) // 2, size // 2
        if padding == "reflect" and max(before, after) >= min(image.shape[-2:]):
            raise ValueError(
                f"reflect padding for size={size} patches needs H and W > {max(before, after)}, "
                f"got image of shape {tuple(image.shape)}; use padding='zero' or a smaller size"
            )
        image = F.pad(image, (before, after, before, after), mode="reflect" if padding == "reflect" else "constant")
    height, width = image.shape[-2] - size + 1, image.shape[-1] - size + 1
    if height < 1 or width < 1:
        raise ValueError(f"size={size} patches do not fit in an image of shape {tuple(image.shape)}")
    cols = F.unfold(image, kernel_size=size)
    return cols.view(image.shape[0], -1, height, width)


class PatchFeatures(nn.Module):
    """n x n patches of the image as features, under the layer name ``"patches"``.

    Args:
        size: patch side n >= 1.
        padding: ``"reflect"`` (default), ``"zero"`` or ``"none"``; see :func:`extract_patches`.

    Raises:
        TypeError, ValueError: as :func:`extract_patches`, for ``size`` and ``padding``.

    Examples:
        >>> import torch
        >>> PatchFeatures(3)(torch.rand(1, 3, 8, 8))["patches"].shape
        torch.Size([1, 27, 8, 8])

    """

    def __init__(self, size: int, padding: Padding = "reflect") -> None:
        super().__init__()
        check_positive_int("patch_size", size)
        check_choice("padding", padding, PADDINGS)
        self.size = size
        self.padding = padding

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Return ``{"patches": extract_patches(image, size, padding)}``."""
        return {"patches": extract_patches(image, self.size, self.padding)}

    def extra_repr(self) -> str:
        """Summarise the options in ``repr``."""
        return f"size={self.size}, padding={self.padding!r}"


class IdentityFeatures(nn.Module):
    """The input itself as the features, under the layer name ``"input"``.

    Takes no arguments: ``IdentityFeatures()(image)`` is ``{"input": image}`` for images
    (B, C, H, W).

    Attributes:
        (none): the module holds no parameters or buffers.

    Examples:
        >>> import torch
        >>> image = torch.rand(1, 3, 4, 4)
        >>> IdentityFeatures()(image)["input"] is image
        True

    """

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Return ``{"input": image}``."""
        return {"input": image}
