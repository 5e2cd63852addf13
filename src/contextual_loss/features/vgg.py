"""A frozen VGG19 (torchvision's architecture) that returns the activations of named layers.

Both papers compare VGG19 activations: Mechrez et al. (ECCV 2018) use ``conv3_2`` and ``conv4_2``
for style transfer and single-image animation, Zhang et al. (CVPR 2019) ``conv1_2``, ``conv2_2``
and ``conv3_2`` for CoBi. Their TensorFlow VGG applies the ReLU inside each "conv" layer and
averages instead of max-pooling, so their ``conv3_2`` is our ``relu3_2`` with ``pooling="avg"``.

Layer names: ``conv{b}_{k}`` is the output of the k-th convolution of block b *before* its ReLU,
``relu{b}_{k}`` the same activation after the ReLU, ``pool{b}`` the output of block b's pooling
(b in 1..5; blocks 1-2 have 2 convolutions, blocks 3-5 have 4). :data:`VGG19_LAYERS` maps each
name to its index in ``torchvision.models.vgg19().features``.

Checkpoints: weights the extractor can load again by itself (``weights="imagenet"`` or a path) are
left out of its ``state_dict``, so a model holding a VGG-based loss saves only its own weights and
its checkpoint loads into the same model without the loss. What the extractor cannot reload (random
weights, a state dict passed in memory, or weights changed after loading) is saved as usual.
Checkpoints that hold the weights, such as those written before this behaviour, load as before. The
state dict's metadata records the left-out weights' source and a fingerprint (per-tensor sums of
``|w|`` and ``w**2``): loading the checkpoint into an extractor with other weights raises instead of
silently computing another loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from contextual_loss._validation import check_choice
from contextual_loss.features.weights import (
    RELOADABLE_SOURCES,
    WeightsArg,
    WeightsSource,
    load_vgg19_state_dict,
    weights_source,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG19_LAYERS", "VGG19Features", "parse_vgg19_layers"]

Pooling = Literal["max", "avg"]
POOLINGS: tuple[str, ...] = get_args(Pooling)

#: torchvision's normalisation for its ImageNet weights (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision's VGG19 configuration ``cfgs["E"]``: channel counts, "M" for a 2x2 max pooling. Kept
#: here so that importing the package does not import torchvision; a test checks it against torchvision.
_VGG19_CONFIG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]  # fmt: skip


def _layer_table(config: Sequence[int | str]) -> dict[str, int]:
    """Name -> index in the ``nn.Sequential`` that ``make_layers(config)`` builds (conv, ReLU, ..., pool)."""
    table: dict[str, int] = {}
    index, block, conv = 0, 1, 0
    for item in config:
        if item == "M":
            table[f"pool{block}"] = index
            index, block, conv = index + 1, block + 1, 0
        else:
            conv += 1
            table[f"conv{block}_{conv}"] = index
            table[f"relu{block}_{conv}"] = index + 1
            index += 2
    return table


#: Layer name -> index in ``torchvision.models.vgg19().features`` (e.g. ``relu3_2`` -> 13).
VGG19_LAYERS: dict[str, int] = _layer_table(_VGG19_CONFIG)


def parse_vgg19_layers(layers: str | Sequence[str]) -> tuple[str, ...]:
    """Check VGG19 layer names and return them as a tuple without duplicates, in the given order.

    Args:
        layers: one name or a sequence of names (see :data:`VGG19_LAYERS`).

    Returns:
        The names, each once, in the order given.

    Raises:
        TypeError: ``layers`` is not a string or a sequence of strings.
        ValueError: an unknown name, or an empty sequence.

    Examples:
        >>> parse_vgg19_layers(["relu3_2", "conv4_2", "relu3_2"])
        ('relu3_2', 'conv4_2')

    """
    names = (layers,) if isinstance(layers, str) else layers
    if not isinstance(names, Sequence) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"layers must be a VGG19 layer name or a sequence of names, got {layers!r}")
    if not names:
        raise ValueError("layers must name at least one VGG19 layer, got an empty sequence")
    unknown = [name for name in names if name not in VGG19_LAYERS]
    if unknown:
        raise ValueError(
            f"unknown VGG19 layer name(s) {unknown}; expected conv{{b}}_{{k}} (before the ReLU), relu{{b}}_{{k}} "
            "(after it) or pool{b}, with block b in 1..5 and k in 1..2 for blocks 1-2, 1..4 for blocks 3-5 "
            "(e.g. 'relu3_2')"
        )
    return tuple(dict.fromkeys(names))


def _check_input_range(input_range: object) -> tuple[float, float]:
    valid = (
        isinstance(input_range, (tuple, list))
        and len(input_range) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in input_range)
        and input_range[0] < input_range[1]
    )
    if not valid:
        raise ValueError(
            f"input_range must be a pair (low, high) of finite numbers with low < high, such as (0, 1), (-1, 1) "
            f"or (0, 255), got {input_range!r}"
        )
    return float(input_range[0]), float(input_range[1])  # type: ignore[index]


def _config_prefix(last: int) -> list[int | str]:
    """The shortest prefix of the VGG19 configuration whose layers reach index ``last``."""
    prefix: list[int | str] = []
    length = 0
    for item in _VGG19_CONFIG:
        if length > last:
            break
        prefix.append(item)
        length += 1 if item == "M" else 2  # a pooling, or a convolution and its ReLU
    return prefix


def _torchvision_make_layers() -> Any:
    """The VGG builder of torchvision, imported here: the losses alone never need torchvision.

    Raises:
        ImportError: torchvision is missing or cannot be imported (a torchvision built for another
            torch fails with errors such as ``operator torchvision::nms does not exist``).

    """
    try:
        from torchvision.models.vgg import make_layers
    except Exception as error:  # ImportError, or the RuntimeError of a torchvision that does not match torch
        raise ImportError(
            f"VGG19 features need torchvision, which cannot be imported ({type(error).__name__}: {error}); "
            f"install the torchvision release that matches torch {torch.__version__.split('+')[0]}"
        ) from error
    return make_layers


def _build_body(last: int, pooling: str) -> nn.Sequential:
    """Build torchvision's VGG19 ``features`` up to index ``last``, on the meta device (no memory yet)."""
    make_layers = _torchvision_make_layers()

    # Only the needed prefix, and without initialising it: weights are either loaded or drawn later.
    with torch.device("meta"):
        body = make_layers(_config_prefix(last))[: last + 1]
    for index, layer in enumerate(body):
        if isinstance(layer, nn.ReLU):
            layer.inplace = False  # an in-place ReLU would overwrite the conv{b}_{k} output we return
        elif isinstance(layer, nn.MaxPool2d) and pooling == "avg":
            body[index] = nn.AvgPool2d(kernel_size=2, stride=2)
    return body


#: Key of the state-dict metadata (``state_dict._metadata[prefix]``) that records left-out weights.
_METADATA_KEY = "vgg19_weights"

#: Relative tolerance of fingerprint comparisons: converting the extractor to float16 or bfloat16 stays
#: well within it; other weights (random, another checkpoint) are orders of magnitude outside.
_FINGERPRINT_RTOL = 1e-3


def _fingerprint(body: nn.Module) -> dict[str, list[float]]:
    """Per tensor, [sum |w|, sum w^2] in float64: the same for the same weights on any device, in any dtype."""
    prints: dict[str, list[float]] = {}
    for key, value in body.state_dict().items():
        l1 = torch.linalg.vector_norm(value, 1, dtype=torch.float64)
        l2 = torch.linalg.vector_norm(value, 2, dtype=torch.float64)
        prints[key] = [float(l1), float(l2) ** 2]
    return prints


def _same_weights(a: dict[str, list[float]], b: dict[str, list[float]]) -> bool:
    """Whether two fingerprints agree on the tensors they share (within :data:`_FINGERPRINT_RTOL`)."""
    shared = a.keys() & b.keys()
    return all(math.isclose(u, v, rel_tol=_FINGERPRINT_RTOL) for k in shared for u, v in zip(a[k], b[k], strict=True))


def _leave_out_reloadable_weights(
    module: VGG19Features, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict[str, object]
) -> None:
    """``state_dict`` hook: drop the weights the extractor reloads by itself and record their fingerprint."""
    if module.weights_source not in RELOADABLE_SOURCES:
        return
    current = _fingerprint(module.body)
    if not _same_weights(current, module._loaded_fingerprint):
        return  # changed since construction (trained, or loaded from a checkpoint): only the state dict has them
    body = prefix + "body"
    for key in [key for key in state_dict if key.startswith(body + ".")]:
        del state_dict[key]
    metadata = getattr(state_dict, "_metadata", {})  # the body's own entries describe what was left out
    for key in [key for key in metadata if key == body or key.startswith(body + ".")]:
        del metadata[key]
    local_metadata[_METADATA_KEY] = {"source": module.weights_source, "fingerprint": current}


def _random_init(body: nn.Sequential) -> None:
    """The initialisation of ``torchvision.models.vgg19(weights=None)``, on the CPU."""
    body.to_empty(device="cpu")
    for layer in body:
        if isinstance(layer, nn.Conv2d) and layer.bias is not None:  # VGG19's convolutions all have a bias
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)


def _load(body: nn.Sequential, state: dict[str, Tensor], deepest: str) -> None:
    """Copy the needed entries of a torchvision ``features`` state dict into ``body`` as float32."""
    expected = body.state_dict()
    missing = [f"features.{key}" for key in expected if key not in state]
    if missing:
        raise ValueError(f"the VGG19 state dict lacks {missing}, needed for layer {deepest!r} and those before it")
    for key, param in expected.items():
        if not isinstance(state[key], Tensor) or state[key].shape != param.shape:
            got = tuple(state[key].shape) if isinstance(state[key], Tensor) else type(state[key]).__name__
            raise ValueError(
                f"the VGG19 state dict entry features.{key} is {got}, expected a tensor of shape "
                f"{tuple(param.shape)} (torchvision's vgg19)"
            )
    # A private float32 copy: never alias the caller's tensors, whatever dtype they were saved in.
    body.load_state_dict({key: state[key].detach().to(torch.float32, copy=True) for key in expected}, assign=True)


class VGG19Features(nn.Module):
    """Frozen VGG19 activations of the named layers, for images in ``input_range`` (RGB).

    The network is torchvision's ``vgg19().features``, cut after the deepest requested layer so
    that nothing deeper is computed. It normalises its input with ImageNet's mean and standard
    deviation (non-persistent buffers), never trains (``train()`` keeps it in eval mode) and its
    parameters do not require gradients, while gradients flow to the input. One instance can be
    shared by several losses.

    Args:
        layers: one name or a sequence of names (see :data:`VGG19_LAYERS`), e.g.
            ``("relu3_2", "relu4_2")``.
        weights: ``"imagenet"`` (default: torchvision's ``VGG19_Weights.IMAGENET1K_V1`` from the
            torch hub cache), a path to a state dict in torchvision's format, a state dict, or
            ``None`` for random weights; see :mod:`contextual_loss.features.weights`. ImageNet and
            file weights are left out of ``state_dict()`` (see the module's "Checkpoints").
        pooling: ``"max"`` (torchvision's network) or ``"avg"`` (the papers' VGG).
        input_range: the (low, high) range of the input pixels, mapped to [0, 1] before the
            ImageNet normalisation: (0, 1) by default, (-1, 1) for tanh outputs, (0, 255) for
            8-bit values.
        download: download the ImageNet weights if they are not cached (``weights="imagenet"``).

    Examples:
        >>> import torch
        >>> vgg = VGG19Features(["conv1_2", "relu1_2"], weights=None)
        >>> feats = vgg(torch.rand(1, 3, 32, 32))
        >>> feats["relu1_2"].shape
        torch.Size([1, 64, 32, 32])

    """

    mean: Tensor
    std: Tensor
    #: Where the weights came from at construction; ``"imagenet"`` and ``"file"`` weights are left out of
    #: checkpoints while they are unchanged.
    weights_source: WeightsSource

    def __init__(
        self,
        layers: str | Sequence[str],
        *,
        weights: WeightsArg = "imagenet",
        pooling: Pooling = "max",
        input_range: tuple[float, float] = (0.0, 1.0),
        download: bool = True,
    ) -> None:
        super().__init__()
        self.layers = parse_vgg19_layers(layers)
        check_choice("pooling", pooling, POOLINGS)
        self.pooling = pooling
        self.input_range = _check_input_range(input_range)
        self._outputs = {VGG19_LAYERS[name]: name for name in self.layers}  # index -> name
        self.body = _build_body(max(self._outputs), pooling)
        state = load_vgg19_state_dict(weights, download=download)
        if state is None:
            _random_init(self.body)
        else:
            _load(self.body, state, max(self.layers, key=VGG19_LAYERS.__getitem__))
        self.weights_source = weights_source(weights)
        self._loaded_fingerprint = _fingerprint(self.body) if self.weights_source in RELOADABLE_SOURCES else {}
        # A private hook (the public register_state_dict_post_hook is missing from older torch releases).
        self._register_state_dict_hook(_leave_out_reloadable_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accept checkpoints without the weights when this extractor holds the same ones (see "Checkpoints")."""
        body = prefix + "body."
        if not any(key.startswith(body) for key in state_dict):
            saved = local_metadata.get(_METADATA_KEY)
            if saved is not None and not _same_weights(saved["fingerprint"], _fingerprint(self.body)):
                where, ours = prefix[:-1] or "the extractor", _describe(self.weights_source)
                error_msgs.append(
                    f"the checkpoint was written with VGG19 weights from {_describe(saved['source'])}, left out of "
                    f"it, and {where} holds other weights (from {ours}); construct the loss with the same weights= "
                    "as when the checkpoint was written"
                )
            elif saved is not None or self.weights_source in RELOADABLE_SOURCES:
                # Left out on saving (or a checkpoint written without this loss): keep the weights loaded at
                # construction, so that neither strict loading nor load_state_dict(assign=True) sees a gap.
                state_dict.update({body + key: value for key, value in self.body.state_dict(keep_vars=True).items()})
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def train(self, mode: bool = True) -> VGG19Features:
        """Stay in eval mode whatever ``mode`` is: the extractor is frozen."""
        return super().train(False)

    def _check_image(self, image: Tensor) -> None:
        if not isinstance(image, Tensor):
            raise TypeError(f"image must be a torch.Tensor of shape (B, 3, H, W), got {type(image).__name__}")
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(
                f"VGG19 needs RGB images of shape (B, 3, H, W), got shape {tuple(image.shape)}; repeat a grayscale "
                "channel with image.expand(-1, 3, -1, -1)"
            )
        if not image.is_floating_point():
            raise TypeError(f"image must have a floating-point dtype, got {image.dtype}; convert it with .float()")
        if image.device != self.mean.device:
            raise ValueError(
                f"image is on {image.device} but the VGG19 extractor is on {self.mean.device}; move the loss with "
                ".to(device)"
            )

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Return ``{name: activation}`` for every requested layer, each of shape (B, C_l, H_l, W_l)."""
        self._check_image(image)
        low, high = self.input_range
        # The convolutions run in the weights' dtype (float32 unless the module was converted).
        h = ((image.to(self.mean.dtype) - low) / (high - low) - self.mean) / self.std
        out: dict[str, Tensor] = {}
        for index, layer in enumerate(self.body):
            h = layer(h)
            if index in self._outputs:
                out[self._outputs[index]] = h
        return {name: out[name] for name in self.layers}

    def extra_repr(self) -> str:
        """Summarise the options in ``repr``."""
        return (
            f"layers={self.layers}, pooling={self.pooling!r}, input_range={self.input_range}, "
            f"weights={self.weights_source!r}"
        )


def _describe(source: str) -> str:
    return {
        "imagenet": "the ImageNet checkpoint (weights='imagenet')",
        "file": "a file (weights=PATH)",
        "state_dict": "a state dict passed as weights",
        "random": "the random initialisation (weights=None)",
    }.get(source, repr(source))
