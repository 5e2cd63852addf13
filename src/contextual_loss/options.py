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
    "CENTERS",
    "COBI_FORMS",
    "DEFAULTS",
    "DEFAULT_WEIGHT_SP",
    "ENGINES",
    "LOSS_TYPES",
    "REDUCTIONS",
    "Center",
    "CoBiForm",
    "ContextualOptions",
    "Distance",
    "EngineName",
    "Reduction",
    "check_reduction",
]

EngineName = Literal["auto", "dense", "streaming"]
Reduction = Literal["mean", "sum", "none"]

#: The allowed values of each choice, derived from the ``Literal`` types (one declaration each).
LOSS_TYPES: tuple[str, ...] = get_args(Distance)
CENTERS: tuple[str, ...] = get_args(Center)
COBI_FORMS: tuple[str, ...] = get_args(CoBiForm)
ENGINES: tuple[str, ...] = get_args(EngineName)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)

#: CoBi's default spatial weight w_s (the functions' and modules' ``weight_sp`` default).
DEFAULT_WEIGHT_SP = 0.1


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
        engine: ``"auto"``, ``"dense"`` or ``"streaming"``.
        memory_budget: bytes of strip workspace for the streaming engine, or ``None`` (default).

    """

    band_width: float = 0.5
    loss_type: Distance = "cosine"
    eps: float = 1e-5
    center: Center = "image"
    weight_sp: float | None = None
    form: CoBiForm = "paper"
    max_points: int | None = None
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
    """Return ``reduction``, raising ``ValueError`` unless it is ``"mean"``, ``"sum"`` or ``"none"``."""
    check_choice("reduction", reduction, REDUCTIONS)
    return cast(Reduction, reduction)
