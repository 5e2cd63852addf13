"""Random sampling of feature positions, to cap the size of the sets compared.

Mechrez et al. (ECCV 2018) compare at most 65 x 65 = 4225 positions per layer, drawn at random
without replacement and shared by prediction and target. The streaming engine removes the
memory reason for this; sampling remains a way to trade accuracy for speed.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_indices", "sample_positions", "sample_sets"]


def sample_indices(
    count: int, max_points: int | None, *, generator: torch.Generator | None = None, device: torch.device | None = None
) -> Tensor | None:
    """``max_points`` distinct indices in ``range(count)`` in random order, or ``None`` if no cap applies.

    The permutation is drawn on the generator's device (CPU by default) so that a CPU generator
    gives the same indices whatever the device of the features, then moved to ``device``.

    Args:
        count: how many positions there are.
        max_points: the cap, or ``None``.
        generator: ``torch.Generator`` for the draw (the global generator by default).
        device: where the indices go.

    Returns:
        (max_points,) int64 indices, or ``None`` when ``max_points`` is ``None`` or >= ``count``.

    Examples:
        >>> import torch
        >>> sample_indices(10, 3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3])
        >>> sample_indices(10, 20) is None
        True

    """
    if max_points is None or count <= max_points:
        return None
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(count, generator=generator, device=gen_device)
    return perm[:max_points].to(device)


def sample_positions(
    n: int,
    m: int,
    max_points: int | None,
    *,
    shared: bool,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    sample: str = "both",
) -> tuple[Tensor | None, Tensor | None]:
    """The positions :func:`sample_sets` keeps of N prediction and M target vectors.

    Args:
        n: prediction positions N.
        m: target positions M.
        max_points: the cap, or ``None``.
        shared: draw one set of indices for both (the maps have the same shape).
        generator: ``torch.Generator`` for the draws; the prediction's are drawn first.
        device: where the indices go.
        sample: ``"both"`` (default) or ``"target"``: then every prediction position is kept.

    Returns:
        ``(idx_x, idx_y)``: at most ``max_points`` indices each (``None`` where all are kept);
        ``idx_y`` is ``idx_x`` when ``shared``; ``idx_x`` is ``None`` for ``sample="target"``.

    Examples:
        >>> import torch
        >>> idx_x, idx_y = sample_positions(100, 100, 5, shared=True, generator=torch.Generator().manual_seed(0))
        >>> idx_x is idx_y, idx_x.shape
        (True, torch.Size([5]))

    """
    if sample == "target":
        return None, sample_indices(m, max_points, generator=generator, device=device)
    idx_x = sample_indices(n, max_points, generator=generator, device=device)
    idx_y = idx_x if shared else sample_indices(m, max_points, generator=generator, device=device)
    return idx_x, idx_y


def sample_sets(
    x: Tensor,
    y: Tensor,
    pos_x: Tensor,
    pos_y: Tensor,
    *,
    max_points: int | None,
    shared: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keep at most ``max_points`` vectors of each set, with their positions.

    Args:
        x: (B, N, C) prediction set. y: (B, M, C) target set.
        pos_x: (N, 2) positions of x. pos_y: (M, 2) positions of y.
        max_points: the cap, or ``None`` for no sampling.
        shared: use the same indices for x and y (their maps have the same shape), as the
            authors do; otherwise each set is sampled independently.
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        The sampled ``(x, y, pos_x, pos_y)``; the same indices serve every batch element.

    Examples:
        >>> import torch
        >>> x, y = torch.rand(1, 100, 8), torch.rand(1, 100, 8)
        >>> pos = torch.rand(100, 2)
        >>> sx, sy, px, py = sample_sets(x, y, pos, pos, max_points=10, shared=True)
        >>> sx.shape, torch.equal(px, py)
        (torch.Size([1, 10, 8]), True)

    """
    idx_x, idx_y = sample_positions(
        x.shape[1], y.shape[1], max_points, shared=shared, generator=generator, device=x.device
    )
    if idx_x is not None:
        x, pos_x = x[:, idx_x], pos_x[idx_x]
    if idx_y is not None:
        y, pos_y = y[:, idx_y], pos_y[idx_y]
    return x, y, pos_x, pos_y
