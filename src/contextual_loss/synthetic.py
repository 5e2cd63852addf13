"""Deprecated: the built-in data moved to :mod:`contextual_loss.demo` (``images`` and ``seed_example``)."""

from contextual_loss._deprecation import moved

_NEW = {
    **dict.fromkeys(("gaussian_blur", "periodic_pattern", "rotate", "texture"), "contextual_loss.demo.images"),
    **dict.fromkeys(
        ("SEED_BAND_WIDTH", "SEED_CX", "SEED_X", "SEED_Y", "seed_images"), "contextual_loss.demo.seed_example"
    ),
}
__all__ = sorted(_NEW)
__getattr__ = moved(__name__, {name: f"{module}:{name}" for name, module in _NEW.items()})
