"""Feature extractors: what the contextual loss compares.

Each extractor is an ``nn.Module`` that maps an image batch (B, C, H, W) to a dict of named
feature maps; the loss modules compare the maps layer by layer and sum the weighted losses.
"""

from contextual_loss.features.patches import IdentityFeatures, PatchFeatures, extract_patches

__all__ = ["IdentityFeatures", "PatchFeatures", "extract_patches"]
