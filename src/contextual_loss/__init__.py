"""contextual-loss: the Contextual Loss (CX) and Contextual Bilateral loss (CoBi) for PyTorch.

Compare images that are not pixel-aligned as sets of feature vectors (Mechrez et al., ECCV 2018;
Zhang et al., CVPR 2019). ``contextual_loss.functional`` holds the functions on feature maps;
:class:`ContextualLoss` and :class:`ContextualBilateralLoss` add feature extractors.
"""

from contextual_loss import functional
from contextual_loss.functional import (
    contextual_bilateral_loss,
    contextual_loss,
    contextual_match,
    contextual_similarity,
)
from contextual_loss.modules import ContextualBilateralLoss, ContextualLoss

__version__ = "0.1.0.dev0"

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
