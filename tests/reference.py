"""A literal, independent transcription of docs/definition.md for tests (float64, exp form, no log space).

It follows the definition step by step (centre, distance, relative distance, exp, normalise,
max over the prediction, mean over the target) with none of the library's code, so agreement
with it checks the library's log-space reformulation. It overflows for small band widths by
design: use it with h >= 0.1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_distance(x: Tensor, y: Tensor, loss_type: str, mu: Tensor | None = None) -> Tensor:
    """d_ij for one image; x (N, C), y (M, C); ``mu`` is the centre for cosine (default: mean of y)."""
    if loss_type == "cosine":
        mu = y.mean(0) if mu is None else mu
        xc, yc = x - mu, y - mu
        xn = xc / xc.norm(dim=1, keepdim=True)
        yn = yc / yc.norm(dim=1, keepdim=True)
        return 1 - xn @ yn.T
    diff = x[:, None, :] - y[None, :, :]
    if loss_type == "l2":
        return (diff**2).sum(-1)
    return diff.abs().sum(-1)


def naive_cx_from_distance(d: Tensor, h: float, eps: float = 1e-5) -> Tensor:
    """CX(X, Y) from (N, M) distances: relative distance, softmax over j, max over i, mean over j."""
    d_tilde = d / (d.min(dim=1, keepdim=True).values + eps)
    w = torch.exp((1 - d_tilde) / h)
    cx = w / w.sum(dim=1, keepdim=True)
    return cx.max(dim=0).values.mean()


def naive_cx(x: Tensor, y: Tensor, h: float, loss_type: str = "cosine", eps: float = 1e-5, mu: Tensor | None = None):
    """CX(X, Y) for feature maps x (C, H, W), y (C, H', W')."""
    xs, ys = x.flatten(1).T, y.flatten(1).T
    return naive_cx_from_distance(naive_distance(xs, ys, loss_type, mu), h, eps)


def naive_positions(height: int, width: int) -> Tensor:
    """Pixel centres scaled by 1 / max(H, W), row-major (CoBi in docs/definition.md)."""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([r.flatten() + 0.5, c.flatten() + 0.5], 1).double() / max(height, width)


def naive_cobi(x: Tensor, y: Tensor, weight_sp: float, h: float, loss_type: str = "cosine", eps: float = 1e-5):
    """CoBi (paper form): CX machinery on d_ij + w_s * ||p_i - q_j||."""
    xs, ys = x.flatten(1).T, y.flatten(1).T
    d = naive_distance(xs, ys, loss_type)
    d_sp = torch.cdist(naive_positions(*x.shape[1:]), naive_positions(*y.shape[1:]))
    return naive_cx_from_distance(d + weight_sp * d_sp, h, eps)


def naive_cobi_released(x: Tensor, y: Tensor, weight_sp: float, h: float, eps: float = 1e-5):
    """The released code's CoBi, reduced in the CX direction: (1 - w) CX_feat + w CX_spatial."""

    def cx_matrix(d):
        d_tilde = d / (d.min(dim=1, keepdim=True).values + eps)
        w = torch.exp((1 - d_tilde) / h)
        return w / w.sum(dim=1, keepdim=True)

    def grid(height, width):
        r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return torch.stack([r.flatten() / (height + 1), c.flatten() / (width + 1)], 1).double()

    xs, ys = x.flatten(1).T, y.flatten(1).T
    d_sp = torch.cdist(grid(*x.shape[1:]), grid(*y.shape[1:])) ** 2
    mixed = (1 - weight_sp) * cx_matrix(naive_distance(xs, ys, "cosine")) + weight_sp * cx_matrix(d_sp)
    return mixed.max(dim=0).values.mean()
