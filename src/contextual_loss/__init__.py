"""contextual-loss: the Contextual Loss (CX) and Contextual Bilateral loss (CoBi) for PyTorch.

Compare images that are not pixel-aligned as sets of feature vectors (Mechrez et al., ECCV 2018;
Zhang et al., CVPR 2019). ``contextual_loss.functional`` holds the functions on feature maps;
:class:`ContextualLoss` and :class:`ContextualBilateralLoss` add feature extractors.

The public names are imported on first use (PEP 562), so that ``import contextual_loss`` and
``contextual-loss --version`` do not load PyTorch; ``from contextual_loss import ContextualLoss``
and ``contextual_loss.ContextualLoss`` work as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from contextual_loss import functional
    from contextual_loss.functional import (
        contextual_bilateral_loss,
        contextual_loss,
        contextual_match,
        contextual_similarity,
    )
    from contextual_loss.modules import ContextualBilateralLoss, ContextualLoss

__all__ = [
    "ContextualBilateralLoss",
    "ContextualLoss",
    "__version__",
    "contextual_bilateral_loss",
    "contextual_loss",
    "contextual_match",
    "contextual_similarity",
    "functional",
]

#: Public name -> the module that defines it.
_LAZY = {
    "ContextualBilateralLoss": "contextual_loss.modules",
    "ContextualLoss": "contextual_loss.modules",
    "contextual_bilateral_loss": "contextual_loss.functional",
    "contextual_loss": "contextual_loss.functional",
    "contextual_match": "contextual_loss.functional",
    "contextual_similarity": "contextual_loss.functional",
}


def __getattr__(name: str) -> Any:
    """Import a public name, or a sub-module such as ``contextual_loss.engine``, on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
