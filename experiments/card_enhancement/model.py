"""A small fully-convolutional U-Net (Ronneberger et al., MICCAI 2015) for photo-to-scan enhancement.

Two downsampling stages, no normalisation layers (so a sample's output never depends on the rest
of its batch, which keeps data-parallel training equal to single-process training), and a
residual output: the network predicts a correction to its input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["UNetLite", "count_parameters"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate"),
        nn.LeakyReLU(0.1),
        nn.Conv2d(cout, cout, 3, padding=1, padding_mode="replicate"),
        nn.LeakyReLU(0.1),
    )


class UNetLite(nn.Module):
    """U-Net with widths (w, 2w, 4w); H and W must be multiples of 4.

    Args:
        width: channels of the first stage (16 gives about 120k parameters, 24 about 270k).

    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc1 = _block(3, width)
        self.enc2 = _block(width, 2 * width)
        self.mid = _block(2 * width, 4 * width)
        self.down = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.reduce2 = nn.Conv2d(4 * width, 2 * width, 1)
        self.dec2 = _block(4 * width, 2 * width)
        self.reduce1 = nn.Conv2d(2 * width, width, 1)
        self.dec1 = _block(2 * width, width)
        self.out = nn.Conv2d(width, 3, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.out.weight)  # start as the identity: the first outputs are the photo itself
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Enhanced image (B, 3, H, W) from a photo (B, 3, H, W) in [0, 1]; H, W multiples of 4."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"x must have shape (B, 3, H, W) with H and W multiples of 4, got {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(self.down(e1))
        m = self.mid(self.down(e2))
        d2 = self.dec2(torch.cat((self.reduce2(self.up(m)), e2), dim=1))
        d1 = self.dec1(torch.cat((self.reduce1(self.up(d2)), e1), dim=1))
        return x + self.out(d1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
