"""Loss modules: a feature extractor plus the functional losses, summed over layers.

``ContextualLoss`` and ``ContextualBilateralLoss`` keep the constructor signatures of
contextual_loss_pytorch (``band_width``, ``loss_type``, ``use_vgg``, ``vgg_layer`` and, for CoBi,
``weight_sp``), and every argument is used. The maths lives in :mod:`contextual_loss.functional`.

Examples:
    >>> import torch
    >>> from contextual_loss import ContextualLoss
    >>> criterion = ContextualLoss(band_width=0.5, patch_size=5)
    >>> pred, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    >>> criterion(pred, target).shape
    torch.Size([])

"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contextual_loss import functional as CF
from contextual_loss._validation import check_choice, check_positive_int
from contextual_loss.features import IdentityFeatures, PatchFeatures

__all__ = ["ContextualBilateralLoss", "ContextualLoss"]


def _build_features(use_vgg: bool, vgg_layer: str, patch_size: int | None, padding: str) -> nn.Module:
    if not isinstance(use_vgg, bool):
        raise TypeError(f"use_vgg must be a bool, got {type(use_vgg).__name__} {use_vgg!r}")
    if use_vgg:
        raise NotImplementedError(
            f"use_vgg=True (vgg_layer={vgg_layer!r}) needs the VGG19 feature extractor, which this version does "
            "not include yet; use patch_size=n for patch features or pass your own features to "
            "contextual_loss.functional"
        )
    if patch_size is not None:
        check_positive_int("patch_size", patch_size)
        return PatchFeatures(patch_size, padding)  # type: ignore[arg-type]
    return IdentityFeatures()


class _ContextualModule(nn.Module):
    """Shared plumbing: argument checks, features, per-layer weighting and the batch reduction."""

    def __init__(
        self,
        band_width: float,
        loss_type: str,
        use_vgg: bool,
        vgg_layer: str,
        *,
        patch_size: int | None,
        padding: str,
        eps: float,
        center: str,
        reduction: str,
        max_points: int | None,
    ) -> None:
        super().__init__()
        CF._check_options(band_width, loss_type, eps, center, max_points)
        check_choice("reduction", reduction, CF.REDUCTIONS)
        self.band_width = float(band_width)
        self.loss_type = loss_type
        self.eps = float(eps)
        self.center = center
        self.reduction = reduction
        self.max_points = max_points
        self.features = _build_features(use_vgg, vgg_layer, patch_size, padding)
        self.layer_weights: dict[str, float] = {"patches" if patch_size is not None else "input": 1.0}

    def _layer_loss(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _common_kwargs(self, generator: torch.Generator | None) -> dict[str, Any]:
        return {
            "band_width": self.band_width,
            "loss_type": self.loss_type,
            "eps": self.eps,
            "center": self.center,
            "reduction": "none",
            "max_points": self.max_points,
            "generator": generator,
        }

    def forward(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Loss between prediction ``x`` and target ``y`` images (B, C, H, W).

        Args:
            x: prediction.
            y: target; its H, W may differ from the prediction's.
            generator: ``torch.Generator`` for the position sampling (``max_points``).

        Returns:
            The weighted sum over layers of the per-image losses, reduced over the batch.

        """
        for name, value in (("x", x), ("y", y)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(value).__name__}")
        feats_x, feats_y = self.features(x), self.features(y)
        total = sum(
            weight * self._layer_loss(feats_x[name], feats_y[name], generator)
            for name, weight in self.layer_weights.items()
        )
        return CF._reduce(total, self.reduction)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        """Summarise the options in ``repr``."""
        return (
            f"band_width={self.band_width}, loss_type={self.loss_type!r}, eps={self.eps}, center={self.center!r}, "
            f"reduction={self.reduction!r}, max_points={self.max_points}, layers={self.layer_weights}"
        )


class ContextualLoss(_ContextualModule):
    """Contextual Loss (Mechrez et al., ECCV 2018) on images, through a feature extractor.

    Args:
        band_width: h > 0 (0.5 in the paper's animation experiments, 0.1 for style transfer).
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``; see :func:`contextual_loss.functional.contextual_loss`.
        use_vgg: compare VGG19 features (contextual_loss_pytorch's argument).
        vgg_layer: the VGG19 layer used when ``use_vgg`` is true.
        patch_size: compare n x n patches of the image instead of its pixels.
        padding: patch padding, ``"reflect"``, ``"zero"`` or ``"none"``.
        eps, center, reduction, max_points: as in the functional form.

    Without ``use_vgg`` or ``patch_size``, the input itself is the feature map.

    """

    def __init__(
        self,
        band_width: float = 0.5,
        loss_type: str = "cosine",
        use_vgg: bool = False,
        vgg_layer: str = "relu3_4",
        *,
        patch_size: int | None = None,
        padding: str = "reflect",
        eps: float = 1e-5,
        center: str = "image",
        reduction: str = "mean",
        max_points: int | None = None,
    ) -> None:
        super().__init__(
            band_width,
            loss_type,
            use_vgg,
            vgg_layer,
            patch_size=patch_size,
            padding=padding,
            eps=eps,
            center=center,
            reduction=reduction,
            max_points=max_points,
        )

    def _layer_loss(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return CF.contextual_loss(x, y, **self._common_kwargs(generator))


class ContextualBilateralLoss(_ContextualModule):
    """Contextual Bilateral loss, CoBi (Zhang et al., CVPR 2019), through a feature extractor.

    Args:
        weight_sp: w_s, the weight of the spatial term (>= 0; in [0, 1] for ``form="released"``).
        band_width, loss_type, use_vgg, vgg_layer, patch_size, padding, eps, center, reduction,
            max_points: as in :class:`ContextualLoss`.
        form: ``"paper"`` (default) or ``"released"``; see
            :func:`contextual_loss.functional.contextual_bilateral_loss`.

    """

    def __init__(
        self,
        weight_sp: float = 0.1,
        band_width: float = 0.5,
        loss_type: str = "cosine",
        use_vgg: bool = False,
        vgg_layer: str = "relu3_4",
        *,
        form: str = "paper",
        patch_size: int | None = None,
        padding: str = "reflect",
        eps: float = 1e-5,
        center: str = "image",
        reduction: str = "mean",
        max_points: int | None = None,
    ) -> None:
        super().__init__(
            band_width,
            loss_type,
            use_vgg,
            vgg_layer,
            patch_size=patch_size,
            padding=padding,
            eps=eps,
            center=center,
            reduction=reduction,
            max_points=max_points,
        )
        self.weight_sp, self.form = CF._spatial_option(weight_sp, form)

    def _layer_loss(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return CF.contextual_bilateral_loss(x, y, self.weight_sp, form=self.form, **self._common_kwargs(generator))

    def extra_repr(self) -> str:
        """Summarise the options in ``repr``."""
        return f"weight_sp={self.weight_sp}, form={self.form!r}, " + super().extra_repr()
