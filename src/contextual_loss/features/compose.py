"""Choosing and combining feature extractors for the loss modules.

A loss module compares one or several named feature maps and sums the weighted per-layer losses.
:func:`select_features` turns the modules' arguments (``layers``, ``use_vgg``/``vgg_layer``,
``patch_size``, ``features`` and the VGG options) into one extractor and the per-layer weights;
:class:`FeatureUnion` runs several extractors side by side, e.g. the RGB patches and VGG19 layers
of CoBi in Zhang et al. (CVPR 2019).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from contextual_loss._validation import check_nonnegative_number, check_positive_int
from contextual_loss.features.patches import IdentityFeatures, PatchFeatures
from contextual_loss.features.vgg import VGG19_LAYERS, VGG19Features, parse_vgg19_layers
from contextual_loss.features.weights import WeightsArg

__all__ = ["FeatureUnion", "LayersArg", "normalize_layers", "select_features"]

#: What ``layers=`` accepts: a name, a sequence of names (weight 1 each) or a dict of weights.
LayersArg = str | Sequence[str] | Mapping[str, float] | None

#: The ``vgg_layer`` default of contextual_loss_pytorch's signature, kept for compatibility.
DEFAULT_VGG_LAYER = "relu3_4"


class FeatureUnion(nn.Module):
    """Several extractors applied to the same image; their named maps merged into one dict.

    Args:
        extractors: modules mapping an image to ``dict[str, Tensor]``; their names must not clash.

    Examples:
        >>> import torch
        >>> from contextual_loss.features import PatchFeatures, VGG19Features
        >>> union = FeatureUnion(PatchFeatures(3), VGG19Features("relu1_2", weights=None))
        >>> sorted(union(torch.rand(1, 3, 16, 16)))
        ['patches', 'relu1_2']

    """

    def __init__(self, *extractors: nn.Module) -> None:
        super().__init__()
        if not extractors or not all(isinstance(e, nn.Module) for e in extractors):
            raise TypeError(f"FeatureUnion needs one or more nn.Module extractors, got {extractors!r}")
        self.extractors = nn.ModuleList(extractors)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Return the union of the extractors' outputs."""
        merged: dict[str, Tensor] = {}
        for extractor in self.extractors:
            maps = extractor(image)
            clash = sorted(set(maps) & set(merged))
            if clash:
                raise ValueError(f"two feature extractors both return the layer name(s) {clash}; rename one of them")
            merged.update(maps)
        return merged


def normalize_layers(layers: LayersArg) -> dict[str, float] | None:
    """``layers=`` as a dict of name -> weight (>= 0); a name or a list gives weight 1 to each.

    Args:
        layers: a layer name, a sequence of names, a mapping of name -> weight, or ``None``.

    Returns:
        The dict of name -> float weight, or ``None`` for ``None``.

    Raises:
        TypeError: not a name, a sequence of names or a mapping with string keys.
        ValueError: an empty collection or a negative weight.

    Examples:
        >>> normalize_layers(["relu3_2", "relu4_2"])
        {'relu3_2': 1.0, 'relu4_2': 1.0}
        >>> normalize_layers({"relu3_2": 2})
        {'relu3_2': 2.0}

    """
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = {layers: 1.0}
    elif isinstance(layers, Sequence):
        layers = dict.fromkeys(layers, 1.0)
    if not isinstance(layers, Mapping) or not all(isinstance(name, str) for name in layers):
        raise TypeError(
            "layers must be a layer name, a list of names or a dict of name -> weight, e.g. "
            f"{{'relu3_2': 1.0, 'relu4_2': 1.0}}, got {layers!r}"
        )
    if not layers:
        raise ValueError("layers must name at least one layer, got an empty collection")
    return {name: check_nonnegative_number(f"layers[{name!r}]", weight) for name, weight in layers.items()}


def _is_default_vgg_options(weights: WeightsArg, pooling: str, input_range: Any) -> bool:
    default_range = isinstance(input_range, (tuple, list)) and tuple(input_range) == (0.0, 1.0)
    return isinstance(weights, str) and weights == "imagenet" and pooling == "max" and default_range


def _compat_layers(use_vgg: bool, vgg_layer: str, layer_weights: dict[str, float] | None) -> dict[str, float] | None:
    """Map contextual_loss_pytorch's ``use_vgg=True, vgg_layer=name`` onto ``layers={name: 1.0}``."""
    if not isinstance(use_vgg, bool):
        raise TypeError(f"use_vgg must be a bool, got {type(use_vgg).__name__} {use_vgg!r}")
    if not use_vgg:
        if vgg_layer != DEFAULT_VGG_LAYER:
            raise ValueError(f"vgg_layer={vgg_layer!r} is only used with use_vgg=True; or pass layers={vgg_layer!r}")
        return layer_weights
    if layer_weights is not None:
        raise ValueError(
            f"use_vgg=True (vgg_layer={vgg_layer!r}) and layers={layer_weights!r} both choose the VGG layers; "
            "pass layers only"
        )
    return {parse_vgg19_layers(vgg_layer)[0]: 1.0}


def _check_names(layer_weights: dict[str, float], patch_size: int | None, features: nn.Module | None) -> None:
    """Every requested name must be produced by one of the extractors that will be built."""
    if patch_size is not None and "patches" not in layer_weights:
        raise ValueError(
            f"patch_size={patch_size} adds the 'patches' features, but layers={layer_weights!r} has no 'patches' "
            "entry; add 'patches': weight to layers"
        )
    if patch_size is None and "patches" in layer_weights:
        raise ValueError("layers names 'patches' but patch_size is not set; pass patch_size=n")
    if isinstance(features, VGG19Features):
        available = set(features.layers) | ({"patches"} if patch_size is not None else set())
        missing = [name for name in layer_weights if name not in available]
        if missing:
            raise ValueError(
                f"layers {missing} are not computed by the VGG19Features passed as features, which returns "
                f"{list(features.layers)}; create it with those layers too"
            )
    elif features is None:
        unknown = [name for name in layer_weights if name not in VGG19_LAYERS and name not in ("patches", "input")]
        if unknown:
            parse_vgg19_layers(unknown)  # raises the VGG19 naming error
        if "input" in layer_weights and (len(layer_weights) > 1 or patch_size is not None):
            raise ValueError("layer 'input' (the image itself) cannot be combined with other layers; use patch_size=1")


def select_features(
    *,
    layers: LayersArg,
    use_vgg: bool,
    vgg_layer: str,
    features: nn.Module | None,
    patch_size: int | None,
    padding: str,
    weights: WeightsArg,
    pooling: str,
    input_range: tuple[float, float],
) -> tuple[nn.Module, dict[str, float] | None]:
    """Build the extractor a loss module compares, and its per-layer weights.

    Rules: ``patch_size`` adds :class:`PatchFeatures` (layer ``"patches"``); ``features`` adds the
    caller's extractor (e.g. a shared :class:`VGG19Features`); otherwise VGG19 names in
    ``layers`` build a :class:`VGG19Features` with ``weights``, ``pooling`` and ``input_range``;
    with none of these, the image itself is the feature map (layer ``"input"``).

    Returns:
        ``(extractor, layer_weights)``; ``layer_weights`` is ``None`` when ``features`` is given
        without ``layers``, meaning every map it returns, with weight 1.

    Args:
        layers, use_vgg, vgg_layer, features, patch_size, padding, weights, pooling, input_range:
            the loss modules' arguments of the same names (see
            :class:`~contextual_loss.modules.ContextualLoss`).

    Raises:
        TypeError, ValueError: arguments that contradict each other or name unknown layers.

    Examples:
        >>> extractor, weights = select_features(
        ...     layers=None, use_vgg=False, vgg_layer="relu3_4", features=None, patch_size=5,
        ...     padding="reflect", weights="imagenet", pooling="max", input_range=(0.0, 1.0))
        >>> type(extractor).__name__, weights
        ('PatchFeatures', {'patches': 1.0})

    """
    layer_weights = _compat_layers(use_vgg, vgg_layer, normalize_layers(layers))
    if patch_size is not None:
        check_positive_int("patch_size", patch_size)
    elif padding != "reflect":
        raise ValueError(f"padding={padding!r} is only used with patch_size=n")
    if features is not None and not isinstance(features, nn.Module):
        raise TypeError(
            f"features must be an nn.Module mapping an image to a dict of feature maps, got {type(features).__name__}"
        )
    if layer_weights is not None:
        _check_names(layer_weights, patch_size, features)
    vgg_names = [name for name in layer_weights or () if name in VGG19_LAYERS]
    if (features is not None or not vgg_names) and not _is_default_vgg_options(weights, pooling, input_range):
        where = "the extractor passed as features is used instead" if features is not None else "no VGG layer is used"
        raise ValueError(
            f"weights, pooling and input_range configure the built-in VGG19, but {where}; got weights={weights!r}, "
            f"pooling={pooling!r}, input_range={input_range!r}"
        )
    extractors: list[nn.Module] = []
    if patch_size is not None:
        extractors.append(PatchFeatures(patch_size, padding))  # type: ignore[arg-type]
    if features is not None:
        extractors.append(features)
    elif vgg_names:
        extractors.append(VGG19Features(vgg_names, weights=weights, pooling=pooling, input_range=input_range))  # type: ignore[arg-type]
    if not extractors:
        return IdentityFeatures(), {"input": 1.0} if layer_weights is None else layer_weights
    if layer_weights is None and features is None:
        layer_weights = {"patches": 1.0}
    return (extractors[0] if len(extractors) == 1 else FeatureUnion(*extractors)), layer_weights
