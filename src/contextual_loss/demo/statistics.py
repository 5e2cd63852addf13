"""Statistics of the demo and the experiments: one-to-one matches, rank correlation, Gaussian KL.

- :func:`unique_match_fraction` and :func:`distinct_match_fraction`: how many target features
  have a match of their own, the statistic Zhang et al. (CVPR 2019) use to motivate CoBi.
- :func:`spearman` and :func:`gaussian_kl`: for the claim of Mechrez et al. (ACCV 2018) that the
  contextual loss tracks the KL divergence between the feature distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from contextual_loss._validation import check_positive_int, check_positive_number, describe

__all__ = ["distinct_match_fraction", "gaussian_kl", "spearman", "unique_match_fraction"]


def _check_index(index: Tensor) -> Tensor:
    if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index must be an integer torch.Tensor of shape (B, M), got {describe(index)}")
    if index.ndim == 1:
        index = index.unsqueeze(0)
    if index.ndim != 2 or index.shape[1] == 0:
        raise ValueError(f"index must have shape (B, M) with M >= 1, got {tuple(index.shape)}")
    return index.long()


def unique_match_fraction(index: Tensor) -> Tensor:
    """Fraction of target features whose matched prediction feature matches no other target.

    With ``index`` the ``prediction_index`` of :func:`~contextual_loss.functional.contextual_match`
    (``index[b, j]`` is the prediction feature that target j matched), target j counts when no
    j' != j has the same match: a one-to-one match in the sense of Zhang et al. (CVPR 2019).

    Args:
        index: (B, M) or (M,) integer tensor.

    Returns:
        (B,) float tensor in [0, 1].

    """
    index = _check_index(index)
    size = int(index.max()) + 1
    counts = torch.zeros(index.shape[0], size, dtype=torch.long, device=index.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    return (counts.gather(1, index) == 1).double().mean(dim=1)


def distinct_match_fraction(index: Tensor) -> Tensor:
    """Number of distinct prediction features matched, divided by the number of targets M.

    Args:
        index: (B, M) or (M,) integer tensor, as in :func:`unique_match_fraction`.

    Returns:
        (B,) float tensor in (0, 1].

    """
    index = _check_index(index)
    return torch.tensor([row.unique().numel() / index.shape[1] for row in index], dtype=torch.float64)


def _ranks(values: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank."""
    order = values.argsort(stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, values.numel() + 1, dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor) -> float:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties).

    Raises:
        ValueError: lengths differ, fewer than 2 values, or one sequence is constant.

    """
    ta, tb = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if ta.numel() != tb.numel() or ta.numel() < 2:
        raise ValueError(f"a and b must have the same length >= 2, got {ta.numel()} and {tb.numel()}")
    ra, rb = _ranks(ta), _ranks(tb)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    if denominator == 0.0:
        raise ValueError("spearman is undefined when a sequence is constant")
    return float((ra * rb).sum()) / denominator


def gaussian_kl(mean_p: float, std_p: float, mean_q: float, std_q: float, dim: int) -> float:
    r"""KL(P || Q) for isotropic Gaussians in ``dim`` dimensions whose means differ along one axis.

    .. math::

        KL = d \log\frac{\sigma_q}{\sigma_p} + \frac{d \sigma_p^2 + (\mu_p - \mu_q)^2}{2 \sigma_q^2} - \frac{d}{2}

    for P = N(mu_p e_1, sigma_p^2 I), Q = N(mu_q e_1, sigma_q^2 I).
    """
    check_positive_int("dim", dim)
    check_positive_number("std_p", std_p)
    check_positive_number("std_q", std_q)
    return dim * math.log(std_q / std_p) + (dim * std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - dim / 2
