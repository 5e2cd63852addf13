"""The options of a contextual comparison, declared and validated in one place.

:class:`ContextualOptions` holds everything that decides *what* is computed between two sets of
feature vectors (distance, band width, epsilon, centring, CoBi's spatial term, sampling) and *how*
(engine, strip memory). The public functions build one from their keyword arguments
(:meth:`ContextualOptions.from_arguments`), the modules store one, and the engine reads it. It is
frozen and checks every field when it is created, so code that receives one never validates
again. Its field defaults are the defaults of every public signature (:data:`DEFAULTS`), and the
allowed values of each choice derive from its ``Literal`` type.

Adding an option means: a field here (with its check in ``__post_init__``), the parameter in the
drop-in signatures that take it (:mod:`contextual_loss.functional`, :mod:`contextual_loss.modules`,
:mod:`contextual_loss.explain`) with its docstring line, and the code that reads it (the
preparation in ``contextual_loss._pipeline`` or the engine). ``tests/test_signatures.py`` checks
that the signatures and this class agree.

Examples:
    >>> from contextual_loss.options import ContextualOptions
    >>> opts = ContextualOptions(band_width=0.1, loss_type="l1")
    >>> opts.band_width, opts.is_bilateral
    (0.1, False)
    >>> ContextualOptions(band_width=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: band_width must be > 0, got -1.0

"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from contextual_loss._validation import (
    check_choice,
    check_nonnegative_number,
    check_positive_int,
    check_positive_number,
    check_unit_interval,
    describe,
)
from contextual_loss.maths import Center, CoBiForm, Distance

__all__ = [
    "AUTO",
    "CENTERS",
    "COBI_FORMS",
    "DEFAULTS",
    "DEFAULT_WEIGHT_SP",
    "DISTANCE_BY_FEATURES",
    "ENGINES",
    "FUNCTIONAL_COBI_BAND_WIDTH",
    "LOSS_TYPES",
    "PIXEL_FEATURE_DEFAULTS",
    "REDUCTIONS",
    "SAMPLES",
    "VGG_FEATURE_DEFAULTS",
    "WEIGHT_SP_BY_DISTANCE",
    "Center",
    "CoBiForm",
    "ContextualOptions",
    "Distance",
    "EngineName",
    "FeatureDefaults",
    "FeatureKind",
    "Reduction",
    "Sample",
    "check_reduction",
    "feature_defaults",
]

EngineName = Literal["auto", "dense", "streaming"]
Reduction = Literal["mean", "sum", "none"]
#: Which maps ``max_points`` samples: ``"both"`` (the same positions of both when their shapes
#: agree, as the authors do; for training) or only the ``"target"`` (every prediction position is
#: kept, so every sampled target feature still meets its true match: for comparing images).
Sample = Literal["both", "target"]

#: The allowed values of each choice, derived from the ``Literal`` types (one declaration each).
LOSS_TYPES: tuple[str, ...] = get_args(Distance)
CENTERS: tuple[str, ...] = get_args(Center)
COBI_FORMS: tuple[str, ...] = get_args(CoBiForm)
ENGINES: tuple[str, ...] = get_args(EngineName)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
SAMPLES: tuple[str, ...] = get_args(Sample)

#: CoBi's default spatial weight w_s per feature distance. The spatial distance D' lies in
#: [0, sqrt(2)] (positions scaled by 1 / max(H, W)); w_s is read against the distance of two similar
#: features: cosine distances lie in [0, 2] (Zhang et al.'s 0.1), while raw l1/l2 distances grow with
#: the channel count. 1.0 measured best with l1 on the cards (docs/training.md); with l2 on real
#: photos (800 steps, two seeds) 0.1, 0.3 and 1.0 trained alike (29.16, 29.04, 29.06 dB) and 0.04
#: worse (28.66 dB; experiments/real_photos), so l2 keeps 1.0.
WEIGHT_SP_BY_DISTANCE: Mapping[Distance, float] = MappingProxyType({"cosine": 0.1, "l1": 1.0, "l2": 1.0})

#: CoBi's default spatial weight w_s for the cosine distance: the functional API's and the drop-in
#: modules' ``weight_sp`` default.
DEFAULT_WEIGHT_SP = WEIGHT_SP_BY_DISTANCE["cosine"]

#: The band width default of the functional :func:`~contextual_loss.functional.contextual_bilateral_loss`:
#: 1.0, as in contextual_loss_pytorch's function (drop-in); the modules and every other function
#: default to ``DEFAULTS.band_width`` = 0.5, as its modules do.
FUNCTIONAL_COBI_BAND_WIDTH = 1.0

#: ``loss_type="auto"`` / ``weight_sp=None`` in the modules, ``--loss-type``/``--weight-sp`` left out
#: on the command line: the value follows the features (:func:`feature_defaults`).
AUTO: Literal["auto"] = "auto"

#: What the features are, for their defaults: raw ``"pixels"`` (pixels and n x n patches of the
#: image) or ``"deep"`` features (VGG19 layers, any extractor of yours, and the image itself in the
#: drop-in ``ContextualLoss()``).
FeatureKind = Literal["pixels", "deep"]


@dataclass(frozen=True)
class FeatureDefaults:
    """The options that follow the features when they are not given.

    Attributes:
        loss_type: the feature distance.
        weight_sp: CoBi's spatial weight w_s for that distance.

    Examples:
        >>> FeatureDefaults("l2", 1.0) == feature_defaults("pixels")
        True

    """

    loss_type: Distance
    weight_sp: float


#: The distance for each kind of features (:data:`FeatureKind`): cosine for deep features (the papers and
#: contextual_loss_pytorch), l2 for pixels and patches: on real photos identical crops give loss 0 and
#: the loss grows with the shift (as with l1; cosine cannot tell flat patches apart), it runs on a
#: matrix product (l1 has none: about 10x faster on a photo pair); trained on misaligned photos it ties
#: with l1 for CX and trails it by 0.14 dB for CoBi, within the seed spread (docs/definition.md section
#: 6.4, docs/training.md, experiments/real_photos).
DISTANCE_BY_FEATURES: Mapping[str, Distance] = MappingProxyType({"pixels": "l2", "deep": "cosine"})


def feature_defaults(kind: FeatureKind, loss_type: Distance | None = None) -> FeatureDefaults:
    """The distance and CoBi spatial weight used for ``kind`` features when they are not given.

    Args:
        kind: ``"pixels"`` (pixels and n x n patches) or ``"deep"`` (VGG19 or your own extractor).
        loss_type: the distance, if given: then only ``weight_sp`` follows it.

    Returns:
        A :class:`FeatureDefaults`.

    Raises:
        ValueError: unknown ``kind`` or ``loss_type``.

    Examples:
        >>> from contextual_loss.options import feature_defaults
        >>> feature_defaults("pixels")
        FeatureDefaults(loss_type='l2', weight_sp=1.0)
        >>> feature_defaults("deep")
        FeatureDefaults(loss_type='cosine', weight_sp=0.1)

    """
    check_choice("kind", kind, tuple(DISTANCE_BY_FEATURES))
    distance = DISTANCE_BY_FEATURES[kind] if loss_type is None else loss_type
    check_choice("loss_type", distance, LOSS_TYPES)
    return FeatureDefaults(distance, WEIGHT_SP_BY_DISTANCE[distance])


#: The defaults of pixel and patch features, and of deep features.
PIXEL_FEATURE_DEFAULTS = feature_defaults("pixels")
VGG_FEATURE_DEFAULTS = feature_defaults("deep")


@dataclass(frozen=True)
class ContextualOptions:
    """What a contextual comparison computes and how; validated on creation.

    Attributes:
        band_width: h > 0 of the softmax over the target index.
        loss_type: the feature distance, ``"cosine"``, ``"l1"`` or ``"l2"``.
        eps: epsilon > 0 of the relative distance d / (min d + eps).
        center: ``"image"`` or ``"batch"`` centring of the cosine distance.
        weight_sp: CoBi's spatial weight w_s (>= 0; in [0, 1] for ``form="released"``), or
            ``None`` for the plain contextual similarity.
        form: CoBi's form, ``"paper"`` or ``"released"`` (only read when ``weight_sp`` is set).
        max_points: compare at most this many randomly drawn positions per map, or ``None``.
        sample: which maps ``max_points`` samples, ``"both"`` or ``"target"`` (see :data:`Sample`).
        engine: ``"auto"``, ``"dense"`` or ``"streaming"``.
        memory_budget: bytes of strip workspace for the streaming engine, or ``None`` (default).

    Raises:
        TypeError, ValueError: a field of the wrong type or out of range, naming the field.

    Examples:
        >>> options = ContextualOptions(band_width=0.1, loss_type="l1", max_points=4096)
        >>> options.replace(band_width=0.2).band_width, options.is_bilateral
        (0.2, False)

    """

    band_width: float = 0.5
    loss_type: Distance = "cosine"
    eps: float = 1e-5
    center: Center = "image"
    weight_sp: float | None = None
    form: CoBiForm = "paper"
    max_points: int | None = None
    sample: Sample = "both"
    engine: EngineName = "auto"
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the validated values in place
        set_(self, "band_width", check_positive_number("band_width", self.band_width))
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        set_(self, "eps", check_positive_number("eps", self.eps))
        check_choice("center", self.center, CENTERS)
        check_choice("form", self.form, COBI_FORMS)
        if self.weight_sp is not None:
            check = check_unit_interval if self.form == "released" else check_nonnegative_number
            set_(self, "weight_sp", check("weight_sp", self.weight_sp))
        if self.max_points is not None:
            set_(self, "max_points", check_positive_int("max_points", self.max_points))
        check_choice("sample", self.sample, SAMPLES)
        check_choice("engine", self.engine, ENGINES)
        if self.memory_budget is not None:
            set_(self, "memory_budget", check_positive_int("memory_budget", self.memory_budget))

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], *, bilateral: bool = False) -> ContextualOptions:
        """The options among a public function's arguments, validated.

        The public functions and modules keep their drop-in signatures and pass ``locals()``
        here: every argument named like a field becomes that field, the others (``x``, ``y``,
        ``reduction``, ``generator``, the feature options, ...) are ignored.

        Args:
            arguments: argument name -> value.
            bilateral: the arguments are CoBi's, whose ``weight_sp`` must be a number (``None``
                would silently mean the plain contextual loss).

        Raises:
            TypeError, ValueError: an option is invalid (see the class).

        """
        if bilateral and arguments.get("weight_sp") is None:
            raise TypeError(f"weight_sp must be a real number, got {describe(arguments.get('weight_sp'))}")
        return cls(**{name: arguments[name] for name in _FIELDS if name in arguments})

    @property
    def is_bilateral(self) -> bool:
        """Whether this is CoBi (a spatial weight is set), rather than the plain contextual similarity."""
        return self.weight_sp is not None

    def replace(self, **changes: Any) -> ContextualOptions:
        """A copy with some fields changed (and validated)."""
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(field.name for field in dataclasses.fields(ContextualOptions))

#: The default options: the defaults of every public signature.
DEFAULTS = ContextualOptions()


def check_reduction(reduction: Any) -> Reduction:
    """Check a ``reduction`` argument.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        ``reduction``, typed as :data:`Reduction`.

    Raises:
        ValueError: any other value.

    Examples:
        >>> check_reduction("sum")
        'sum'

    """
    check_choice("reduction", reduction, REDUCTIONS)
    return cast(Reduction, reduction)
