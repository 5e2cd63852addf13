"""Feature extractors: what the contextual loss compares.

Each extractor is an ``nn.Module`` that maps an image batch (B, C, H, W) to a dict of named
feature maps; the loss modules compare the maps layer by layer and sum the weighted losses.
:class:`PatchFeatures` gives n x n patches of the image, :class:`VGG19Features` the activations of
a frozen VGG19, :class:`FeatureUnion` several extractors side by side.
"""

from contextual_loss.features.compose import FeatureUnion
from contextual_loss.features.patches import IdentityFeatures, PatchFeatures, extract_patches
from contextual_loss.features.vgg import VGG19_LAYERS, VGG19Features
from contextual_loss.features.weights import WeightsNotFoundError, download_vgg19_weights, vgg19_cache_path

__all__ = [
    "VGG19_LAYERS",
    "FeatureUnion",
    "IdentityFeatures",
    "PatchFeatures",
    "VGG19Features",
    "WeightsNotFoundError",
    "download_vgg19_weights",
    "extract_patches",
    "vgg19_cache_path",
]
