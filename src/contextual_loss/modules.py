"""Loss modules: a feature extractor plus the functional losses, summed over layers.

``ContextualLoss`` and ``ContextualBilateralLoss`` keep the constructor signatures of
contextual_loss_pytorch (``band_width``, ``loss_type``, ``use_vgg``, ``vgg_layer`` and, for CoBi,
``weight_sp``), and every argument is used: the options go into one
:class:`~contextual_loss.options.ContextualOptions` (``module.options``; ``module.band_width`` etc.
read and write it), each compared layer runs the same computation as
:func:`contextual_loss.functional.contextual_loss`, and the feature extractors come from
:mod:`contextual_loss.features`. ``layers=`` chooses the compared maps
and their weights (VGG19 layers, ``"patches"``), ``features=`` lets several losses share one
extractor, and ``ContextualLoss.mechrez_recipe`` / ``ContextualBilateralLoss.zoom_recipe`` build
the papers' settings in one line.

Examples:
    >>> import torch
    >>> from contextual_loss import ContextualLoss
    >>> criterion = ContextualLoss(band_width=0.5, patch_size=5)
    >>> pred, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    >>> criterion(pred, target).shape
    torch.Size([])

"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from contextual_loss._pipeline import per_image_loss, reduce_batch
from contextual_loss._validation import check_choice, check_feature_pair, check_nonnegative_number
from contextual_loss.features.compose import DEFAULT_VGG_LAYER, LayersArg, select_features
from contextual_loss.features.patches import Padding
from contextual_loss.features.vgg import Pooling
from contextual_loss.features.weights import WeightsArg
from contextual_loss.options import (
    AUTO,
    DEFAULT_WEIGHT_SP,
    DEFAULTS,
    LOSS_TYPES,
    Center,
    CoBiForm,
    ContextualOptions,
    Distance,
    EngineName,
    FeatureKind,
    Reduction,
    Sample,
    check_reduction,
    feature_defaults,
)

__all__ = ["ContextualBilateralLoss", "ContextualLoss"]

#: The constructor arguments that choose the features (those of ``select_features``).
_FEATURE_ARGUMENTS = tuple(inspect.signature(select_features).parameters)


class _Option:
    """A module attribute that is one field of the module's :class:`ContextualOptions`.

    Reading it reads ``module.options``; assigning it replaces ``module.options`` by a validated
    copy, so ``loss.band_width = 0.2`` works as before and bad values raise at once.
    """

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, module: _ContextualModule | None, owner: type | None = None) -> Any:
        if module is None:
            return self
        return getattr(module.options, self.name)

    def __set__(self, module: _ContextualModule, value: Any) -> None:
        arguments = {**dataclasses.asdict(module.options), self.name: value}
        module.options = ContextualOptions.from_arguments(arguments, bilateral=module.options.is_bilateral)


class _ContextualModule(nn.Module):
    """Shared by both losses: the options, the features, per-layer losses and their weighted sum.

    Args:
        arguments: the subclass constructor's arguments by name (its ``locals()``): the options
            (see :class:`ContextualOptions`), ``reduction`` and the arguments of
            :func:`~contextual_loss.features.compose.select_features`.
        bilateral: the loss is CoBi (``weight_sp`` must be a number).

    """

    band_width = _Option()
    loss_type = _Option()
    eps = _Option()
    center = _Option()
    max_points = _Option()
    sample = _Option()
    engine = _Option()
    memory_budget = _Option()

    def __init__(self, arguments: Mapping[str, Any], *, bilateral: bool) -> None:
        super().__init__()
        self.reduction: Reduction = check_reduction(arguments["reduction"])
        self.features, weights_by_layer = select_features(**{name: arguments[name] for name in _FEATURE_ARGUMENTS})
        #: Layer name -> weight of its loss; ``None``: every map of ``features``, weight 1.
        self.layer_weights: dict[str, float] | None = weights_by_layer
        #: ``"pixels"`` for patches of the image, ``"deep"`` otherwise: chooses the defaults of
        #: ``loss_type="auto"`` and ``weight_sp=None`` (:func:`~contextual_loss.options.feature_defaults`).
        only_patches = arguments["features"] is None and set(weights_by_layer or ()) == {"patches"}
        self.feature_kind: FeatureKind = "pixels" if only_patches else "deep"
        #: What is compared and how (validated); the attributes ``band_width``, ``loss_type``, ... read it.
        self.options = ContextualOptions.from_arguments(self._resolve(arguments, bilateral), bilateral=bilateral)

    def _resolve(self, arguments: Mapping[str, Any], bilateral: bool) -> dict[str, Any]:
        """The arguments with ``loss_type="auto"`` and CoBi's ``weight_sp=None`` replaced by the features' defaults."""
        given = arguments["loss_type"]
        auto = isinstance(given, str) and given == AUTO
        if not auto:
            check_choice("loss_type", given, (*LOSS_TYPES, AUTO))
        defaults = feature_defaults(self.feature_kind, None if auto else given)
        resolved = {**arguments, "loss_type": defaults.loss_type}
        if bilateral and arguments["weight_sp"] is None:
            resolved["weight_sp"] = defaults.weight_sp
        return resolved

    def forward(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Loss between prediction ``x`` and target ``y`` images.

        Args:
            x: prediction images (B, C, H, W), floating point (RGB in ``input_range`` for VGG19).
            y: target images (B, C, H', W'); H', W' may differ from the prediction's.
            generator: ``torch.Generator`` for the position sampling (``max_points``).

        Returns:
            The weighted sum over layers of the per-image losses, reduced over the batch: a
            scalar for ``reduction="mean"`` or ``"sum"``, the (B,) per-image losses for
            ``reduction="none"``.

        Raises:
            TypeError, ValueError: the images are not two non-empty floating-point tensors of
                shape (B, C, H, W) with the same B and C on one device, or their features fail
                the checks of :func:`contextual_loss.functional.contextual_loss`.

        Examples:
            >>> import torch
            >>> loss = ContextualLoss(patch_size=3, reduction="none")
            >>> loss(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)).shape
            torch.Size([4])

        """
        return self.combine_layers(self.layer_losses(x, y, generator=generator))

    def layer_losses(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Each compared layer's (B,) per-image loss, before weighting and reduction.

        ``forward(x, y)`` is ``combine_layers(layer_losses(x, y))``; the two steps serve callers
        that report the layers one by one (the command line does).

        Raises:
            TypeError, ValueError: the images are not two non-empty floating-point tensors of
                shape (B, C, H, W) with the same B and C on one device, or a layer's features
                fail the checks of :func:`contextual_loss.functional.contextual_loss`.

        """
        check_feature_pair(x, y)  # the images themselves, before any extractor sees them
        feats_x, feats_y = self.features(x), self.features(y)
        return {
            name: per_image_loss(feats_x[name], feats_y[name], self.options, generator=generator)
            for name in self._weights_for(feats_x)
        }

    def combine_layers(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum over layers of (B,) per-layer losses, reduced with ``reduction``."""
        total = sum(weight * losses[name] for name, weight in self._weights_for(losses).items())
        return reduce_batch(cast(Tensor, total), self.reduction)

    def _weights_for(self, maps: Mapping[str, Tensor]) -> dict[str, float]:
        if self.layer_weights is None:
            return dict.fromkeys(maps, 1.0)
        missing = [name for name in self.layer_weights if name not in maps]
        if missing:
            raise ValueError(f"layers {missing} are not among the feature maps the extractor returned: {list(maps)}")
        return self.layer_weights

    def extra_repr(self) -> str:
        """Summarise the options in ``repr``."""
        return (
            f"band_width={self.band_width}, loss_type={self.loss_type!r}, eps={self.eps}, center={self.center!r}, "
            f"reduction={self.reduction!r}, max_points={self.max_points}, layers={self.layer_weights}"
        )


class ContextualLoss(_ContextualModule):
    """Contextual Loss (Mechrez et al., ECCV 2018) on images, through a feature extractor.

    ``loss(prediction, target)`` extracts the features of both images (B, 3, H, W) and returns the
    weighted sum over the compared layers of :func:`contextual_loss.functional.contextual_loss`,
    reduced over the batch. The distance follows the features unless given: cosine for VGG19
    layers and your own extractor (the papers, contextual_loss_pytorch), ``l2`` for patches of the
    image (``patch_size=n``: identical photos give loss 0 and the loss grows with misalignment,
    where cosine cannot tell flat patches apart, and it runs on a matrix product; docs/definition.md,
    section 6.4). Without any
    features argument the image itself is compared with cosine, as contextual_loss_pytorch's
    ``use_vgg=False`` does; ``patch_size=1`` compares pixels with the ``l2`` distance.

    Args:
        band_width: h > 0 (0.5 in the paper's animation experiments, 0.1 for style transfer).
        loss_type: ``"cosine"``, ``"l1"`` or ``"l2"``, or ``"auto"`` (default): chosen by the
            features as above (:func:`contextual_loss.options.feature_defaults`). ``loss.loss_type``
            reads the distance in use.
        use_vgg: contextual_loss_pytorch's switch: ``use_vgg=True, vgg_layer=name`` is
            ``layers={name: 1.0}``.
        vgg_layer: the VGG19 layer used when ``use_vgg`` is true.
        layers: the feature maps to compare and the weight of each loss, summed: a name, a list of
            names (weight 1 each) or a dict such as ``{"relu3_2": 1.0, "relu4_2": 1.0}``. Names are
            VGG19 layers (``conv{b}_{k}`` before the ReLU, ``relu{b}_{k}`` after it, ``pool{b}``),
            ``"patches"`` (with ``patch_size``) or those of the ``features`` extractor.
        features: your own extractor (an ``nn.Module`` mapping an image to a dict of maps), e.g. one
            :class:`~contextual_loss.features.VGG19Features` shared by several losses; it replaces
            the built-in VGG19. Without ``layers``, every map it returns is compared with weight 1.
        weights: VGG19 weights: ``"imagenet"`` (torch hub cache), a path to a torchvision state
            dict, or ``None`` (random); see :mod:`contextual_loss.features.weights`.
        pooling: VGG19 pooling, ``"max"`` (torchvision) or ``"avg"`` (the papers' VGG).
        input_range: the (low, high) range of the images given to VGG19, (0, 1) by default.
        patch_size: compare the n x n patches of the image (layer ``"patches"``).
        padding: patch padding, ``"reflect"``, ``"zero"`` or ``"none"``.
        eps, center, reduction, max_points, sample, engine, memory_budget: as in
            :func:`contextual_loss.functional.contextual_loss`.

    Shapes:
        ``forward(x, y)`` takes images (B, C, H, W) and (B, C, H', W') (C = 3 for VGG19) and
        returns a scalar for ``reduction="mean"``/``"sum"``, the (B,) per-image losses for
        ``"none"``.

    Raises:
        TypeError, ValueError: an invalid option (as the functional form), an unknown layer name,
            options that contradict each other (e.g. ``weights`` without any VGG19 layer).
        contextual_loss.features.WeightsNotFoundError: ``weights="imagenet"`` is neither cached
            nor downloadable (the message says what to do).

    Examples:
        >>> import torch
        >>> loss = ContextualLoss(patch_size=5)  # RGB patches: the l2 distance
        >>> loss.loss_type
        'l2'
        >>> pred, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        >>> loss(pred, target).shape, float(loss(target, target))
        (torch.Size([]), 0.0)
        >>> ContextualLoss(layers={"relu1_2": 1.0, "relu2_2": 0.5}, weights=None).loss_type  # VGG19: cosine
        'cosine'

    """

    def __init__(
        self,
        band_width: float = DEFAULTS.band_width,
        loss_type: Distance | Literal["auto"] = AUTO,
        use_vgg: bool = False,
        vgg_layer: str = DEFAULT_VGG_LAYER,
        *,
        layers: LayersArg = None,
        features: nn.Module | None = None,
        weights: WeightsArg = "imagenet",
        pooling: Pooling = "max",
        input_range: tuple[float, float] = (0.0, 1.0),
        patch_size: int | None = None,
        padding: Padding = "reflect",
        eps: float = DEFAULTS.eps,
        center: Center = DEFAULTS.center,
        reduction: Reduction = "mean",
        max_points: int | None = DEFAULTS.max_points,
        sample: Sample = DEFAULTS.sample,
        engine: EngineName = DEFAULTS.engine,
        memory_budget: int | None = DEFAULTS.memory_budget,
    ) -> None:
        super().__init__(locals(), bilateral=False)

    @classmethod
    def mechrez_recipe(
        cls, task: Literal["animation", "style_transfer"] = "animation", **kwargs: Any
    ) -> ContextualLoss:
        """CX on VGG19 as in Mechrez et al. (ECCV 2018): ``relu3_2`` + ``relu4_2``, cosine, average pooling.

        Provenance of the defaults: the layers are the authors' ``conv3_2`` and ``conv4_2`` (their
        released ``config.py``, ``CX.feat_layers``, weight 1 each), which their TensorFlow VGG
        computes *after* the ReLU, hence our ``relu3_2``/``relu4_2``; their VGG averages instead of
        max-pooling (``vgg_model.py``), hence ``pooling="avg"``; the distance is the cosine
        (``Distance.DotProduct``); h = 0.5 for single-image animation (``nn_stretch_sigma = 0.5``)
        and 0.1 for style transfer, as the paper states. Not copied: the authors sample at most
        65 x 65 positions per layer (pass ``max_points=65 * 65`` to do the same) and feed
        Caffe-style inputs (0-255 minus the mean) to MatConvNet weights, where we use torchvision's
        ImageNet weights and normalisation.

        Args:
            task: ``"animation"`` (h = 0.5) or ``"style_transfer"`` (h = 0.1).
            **kwargs: any argument of :class:`ContextualLoss`; it overrides the recipe's value
                (e.g. ``weights="vgg19.pth"``, ``features=shared_vgg``, ``band_width=0.2``).

        Examples:
            >>> loss = ContextualLoss.mechrez_recipe("style_transfer", weights=None)
            >>> loss.band_width, loss.layer_weights
            (0.1, {'relu3_2': 1.0, 'relu4_2': 1.0})

        """
        check_choice("task", task, ("animation", "style_transfer"))
        options: dict[str, Any] = {
            "band_width": 0.5 if task == "animation" else 0.1,
            "loss_type": "cosine",
            "layers": {"relu3_2": 1.0, "relu4_2": 1.0},
            "pooling": "avg",
        }
        return cls(**_recipe_options(options, kwargs))


class ContextualBilateralLoss(_ContextualModule):
    """Contextual Bilateral loss, CoBi (Zhang et al., CVPR 2019), through a feature extractor.

    The features' CoBi (:func:`contextual_loss.functional.contextual_bilateral_loss`), summed over
    the compared layers with their weights. The distance follows the features as in
    :class:`ContextualLoss`, and the spatial weight follows the distance
    (:data:`contextual_loss.options.WEIGHT_SP_BY_DISTANCE`: 0.1 for cosine, 1.0 for ``l1`` and ``l2``).

    Args:
        weight_sp: w_s, the weight of the spatial term (>= 0; in [0, 1] for ``form="released"``),
            or ``None`` (default): the value for the distance in use.
        band_width, loss_type, use_vgg, vgg_layer: as in :class:`ContextualLoss`.
        form: ``"paper"`` (default) or ``"released"``; see
            :func:`contextual_loss.functional.contextual_bilateral_loss`.
        layers, features, weights, pooling, input_range, patch_size, padding: the features, as in
            :class:`ContextualLoss`.
        eps, center, reduction, max_points, sample, engine, memory_budget: as in
            :func:`contextual_loss.functional.contextual_loss`.

    Shapes:
        As :class:`ContextualLoss`: a scalar, or (B,) for ``reduction="none"``.

    Raises:
        TypeError, ValueError, contextual_loss.features.WeightsNotFoundError: as
            :class:`ContextualLoss`; also ``weight_sp`` < 0 (> 1 for ``form="released"``).

    Examples:
        >>> import torch
        >>> loss = ContextualBilateralLoss(patch_size=5)
        >>> loss.loss_type, loss.weight_sp
        ('l2', 1.0)
        >>> loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)).shape
        torch.Size([])
        >>> both = ContextualBilateralLoss(patch_size=5, layers={"patches": 1.0, "relu1_2": 1.0}, weights=None)
        >>> both.loss_type, both.weight_sp  # VGG19 layers: cosine, as the paper
        ('cosine', 0.1)

    """

    weight_sp = _Option()
    form = _Option()

    def __init__(
        self,
        weight_sp: float | None = None,
        band_width: float = DEFAULTS.band_width,
        loss_type: Distance | Literal["auto"] = AUTO,
        use_vgg: bool = False,
        vgg_layer: str = DEFAULT_VGG_LAYER,
        *,
        form: CoBiForm = DEFAULTS.form,
        layers: LayersArg = None,
        features: nn.Module | None = None,
        weights: WeightsArg = "imagenet",
        pooling: Pooling = "max",
        input_range: tuple[float, float] = (0.0, 1.0),
        patch_size: int | None = None,
        padding: Padding = "reflect",
        eps: float = DEFAULTS.eps,
        center: Center = DEFAULTS.center,
        reduction: Reduction = "mean",
        max_points: int | None = DEFAULTS.max_points,
        sample: Sample = DEFAULTS.sample,
        engine: EngineName = DEFAULTS.engine,
        memory_budget: int | None = DEFAULTS.memory_budget,
    ) -> None:
        super().__init__(locals(), bilateral=True)

    @classmethod
    def zoom_recipe(
        cls, zoom: Literal[4, 8] | None = 4, *, vgg_weight: float = 1.0, **kwargs: Any
    ) -> ContextualBilateralLoss:
        r"""CoBi as in Zoom to Learn (Zhang et al., CVPR 2019): RGB patches + VGG19, cosine.

        .. math::

            L = \mathrm{CoBi}_{RGB}(n \times n \text{ patches}) + \lambda \sum_{l}
                \mathrm{CoBi}_{VGG}(l), \quad l \in \{relu1\_2, relu2\_2, relu3\_2\}

        Provenance of the defaults: n = 10 for 4x zoom and 15 for 8x (the paper; the released
        ``train.py`` uses n = 5); the VGG layers are the paper's ``conv1_2``, ``conv2_2``,
        ``conv3_2``, which its TensorFlow VGG (the one of Mechrez et al.) computes after the ReLU
        and with average pooling, hence ``relu*`` and ``pooling="avg"``; cosine distance for every
        term (the paper; ``Distance.DotProduct`` in the released code); h = 0.5
        (``nn_stretch_sigma`` in the released ``loss.py``). w_s = 0.1 is this library's default
        for the paper's additive spatial term; the released code's ``w_spatial`` (0.1 by default,
        0.5 in ``train.py``) weighs its mixed form instead (``form="released"``). lambda = 1 with
        equal layer weights is also our choice: the released code weighs the layers 1, 1, 0.5 and
        its ``train.py`` weighs the patch term 5 times the VGG term.

        Args:
            zoom: 4 (n = 10) or 8 (n = 15); ``None`` to give ``patch_size`` yourself.
            vgg_weight: lambda, the weight of each VGG layer's loss relative to the patch loss.
            **kwargs: any argument of :class:`ContextualBilateralLoss`; it overrides the recipe's
                value (e.g. ``weights="vgg19.pth"``, ``features=shared_vgg``, ``weight_sp=0.2``).

        Examples:
            >>> loss = ContextualBilateralLoss.zoom_recipe(8, weights=None)
            >>> loss.layer_weights
            {'patches': 1.0, 'relu1_2': 1.0, 'relu2_2': 1.0, 'relu3_2': 1.0}

        """
        sizes = {4: 10, 8: 15}
        if zoom is None and "patch_size" not in kwargs:
            raise ValueError("zoom=None needs patch_size=n (the paper uses n = 10 for 4x and n = 15 for 8x zoom)")
        if zoom is not None and (zoom not in sizes or "patch_size" in kwargs):
            raise ValueError(
                f"zoom must be 4 or 8 (patches of n = 10 or 15, as in the paper) or None with patch_size=n, "
                f"got zoom={zoom!r}{' and patch_size=' + repr(kwargs['patch_size']) if 'patch_size' in kwargs else ''}"
            )
        lam = check_nonnegative_number("vgg_weight", vgg_weight)
        options: dict[str, Any] = {
            "weight_sp": DEFAULT_WEIGHT_SP,
            "band_width": 0.5,
            "loss_type": "cosine",
            "layers": {"patches": 1.0, "relu1_2": lam, "relu2_2": lam, "relu3_2": lam},
            "pooling": "avg",
        }
        if zoom is not None:
            options["patch_size"] = sizes[zoom]
        return cls(**_recipe_options(options, kwargs))

    def extra_repr(self) -> str:
        """Summarise the options in ``repr``."""
        return f"weight_sp={self.weight_sp}, form={self.form!r}, " + super().extra_repr()


def _recipe_options(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The recipe's defaults updated by the caller's; a caller's extractor replaces the VGG options."""
    options = {**defaults, **overrides}
    if options.get("features") is not None and "pooling" not in overrides:
        del options["pooling"]  # the shared extractor carries its own pooling
    return options
