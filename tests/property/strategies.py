"""Hypothesis strategies for the property-based tests: feature maps with structure, and options.

A :class:`Case` holds two float64 master maps and the options of one comparison. The maps are
built from a drawn seed and a drawn *structure*, chosen to reach the inputs where contextual
losses are delicate: exact duplicates and ties (a few distinct vectors tiled), constant maps,
quantised values, clusters of near duplicates, flat regions, offsets much larger than the spread,
N or M = 1, and scales from 1e-3 to 1e3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_match

STRUCTURES = ("random", "tiled", "quantised", "clusters", "flat", "copy")
LOSS_TYPES = ("cosine", "l1", "l2")


@dataclass(frozen=True)
class Case:
    """Two float64 feature maps and the options of one comparison."""

    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    structure: str
    loss_type: str
    band_width: float
    eps: float = 1e-5
    center: str = "image"
    cobi: tuple[float, str] | None = None  # (weight_sp, form)

    def loss(self, x: torch.Tensor, y: torch.Tensor, **extra) -> torch.Tensor:
        """The (B,) losses of this case's options on ``x``, ``y`` (``extra``: engine, memory_budget, ...)."""
        kw = {"band_width": self.band_width, "loss_type": self.loss_type, "eps": self.eps, "center": self.center}
        if self.cobi is None:
            return contextual_loss(x, y, reduction="none", **kw, **extra)
        weight, form = self.cobi
        return contextual_bilateral_loss(x, y, weight, form=form, reduction="none", **kw, **extra)

    def match(self, x: torch.Tensor, y: torch.Tensor, **extra):
        """contextual_match with this case's options."""
        weight, form = self.cobi if self.cobi is not None else (None, "paper")
        kw = {"eps": self.eps, "center": self.center, "weight_sp": weight, "form": form}
        return contextual_match(x, y, self.band_width, self.loss_type, **kw, **extra)

    @property
    def m(self) -> int:
        """M, the number of target vectors per image."""
        return self.y.shape[-2] * self.y.shape[-1]


def _vectors(gen: torch.Generator, count: int, channels: int, normal: bool) -> torch.Tensor:
    return torch.randn(count, channels, generator=gen) if normal else torch.rand(count, channels, generator=gen)


def _maps(gen, structure, b, c, hw_x, hw_y, normal, levels) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled maps (values of order 1) with the given structure."""
    n, m = hw_x[0] * hw_x[1], hw_y[0] * hw_y[1]

    def to_map(v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # (B, P, C) -> (B, C, H, W)
        return v.transpose(1, 2).reshape(b, c, *hw)

    if structure == "tiled":  # a few distinct vectors: exact duplicates, ties, constant maps (levels = 1)
        base = torch.stack([_vectors(gen, levels, c, normal) for _ in range(b)])
        pick = lambda p: torch.randint(0, levels, (b, p), generator=gen)  # noqa: E731
        x = torch.gather(base, 1, pick(n).unsqueeze(-1).expand(-1, -1, c))
        y = torch.gather(base, 1, pick(m).unsqueeze(-1).expand(-1, -1, c))
        return to_map(x, hw_x), to_map(y, hw_y)
    if structure == "quantised":
        q = lambda p: torch.randint(0, levels + 1, (b, p, c), generator=gen).double() / levels  # noqa: E731
        return to_map(q(n), hw_x), to_map(q(m), hw_y)
    if structure == "clusters":  # near duplicates around a few centres, at distances near sqrt(eps)
        centres = torch.stack([_vectors(gen, levels, c, normal) for _ in range(b)])
        spread = 10.0 ** (-1 - 3 * float(torch.rand(1, generator=gen)))

        def around(p: int) -> torch.Tensor:
            idx = torch.randint(0, levels, (b, p), generator=gen).unsqueeze(-1).expand(-1, -1, c)
            return torch.gather(centres, 1, idx) + spread * torch.randn(b, p, c, generator=gen)

        return to_map(around(n), hw_x), to_map(around(m), hw_y)
    x = torch.stack([_vectors(gen, n, c, normal) for _ in range(b)])
    y = torch.stack([_vectors(gen, m, c, normal) for _ in range(b)])
    if structure == "flat":  # part of each map is one vector (a flat or saturated region)
        flat = y[:, :1].clone()
        x[:, torch.rand(n, generator=gen) < 0.5] = flat
        y[:, torch.rand(m, generator=gen) < 0.5] = flat
    elif structure == "copy":  # the prediction is a shuffled copy of (part of) the target
        source = y[:, torch.randint(0, m, (n,), generator=gen)]
        x = source + 1e-3 * torch.randn(b, n, c, generator=gen) * float(torch.rand(1, generator=gen) < 0.5)
    return to_map(x, hw_x), to_map(y, hw_y)


@st.composite
def feature_maps(
    draw,
    *,
    structures: tuple[str, ...] = STRUCTURES,
    max_side: int = 6,
    max_channels: int = 12,
    min_points: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x, y, structure): float64 maps (B, C, H, W) and (B, C, H', W') of one drawn structure."""
    structure = draw(st.sampled_from(structures))
    b = draw(st.integers(1, 2))
    c = draw(st.integers(1, max_channels))
    side = st.integers(1, max_side)
    hw_x = (draw(side), draw(side))
    hw_y = (draw(side), draw(side))
    if hw_x[0] * hw_x[1] < min_points or hw_y[0] * hw_y[1] < min_points:
        hw_x, hw_y = (max(hw_x[0], min_points), hw_x[1]), (max(hw_y[0], min_points), hw_y[1])
    normal = draw(st.booleans())
    levels = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e-1, 10.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 0.0, 3.0, -20.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x, y = _maps(gen, structure, b, c, hw_x, hw_y, normal, levels)
    x, y = x.double(), y.double()
    return (x + offset) * scale, (y + offset) * scale, structure


@st.composite
def cases(
    draw,
    *,
    loss_types: tuple[str, ...] = LOSS_TYPES,
    cobi: bool = True,
    band_widths: tuple[float, ...] = (0.02, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0),
    **map_options,
) -> Case:
    """A :class:`Case`: drawn maps and options (distance, band width, eps, centring, CoBi form and weight)."""
    x, y, structure = draw(feature_maps(**map_options))
    spatial = None
    if cobi and draw(st.booleans()):
        form = draw(st.sampled_from(["paper", "released"]))
        weight = draw(st.sampled_from([0.0, 0.1, 0.5] if form == "released" else [0.0, 0.1, 1.0]))
        spatial = (weight, form)
    return Case(
        x=x,
        y=y,
        structure=structure,
        loss_type=draw(st.sampled_from(loss_types)),
        band_width=draw(st.sampled_from(band_widths)),
        eps=draw(st.sampled_from([1e-5, 1e-5, 1e-3, 1e-8])),
        center=draw(st.sampled_from(["image", "batch"])),
        cobi=spatial,
    )


#: Strip budgets of the streaming engine: one row per strip (1 byte), a few rows, one strip (default).
BUDGETS = st.sampled_from([1, 300, 4096, None])


def log_m(case: Case) -> float:
    """log M, the largest contextual loss of the case."""
    return math.log(case.m)
