"""Deprecated: the measurements moved to :mod:`contextual_loss.demo` (its misalignment, statistics, seed_example)."""

from contextual_loss._deprecation import moved

_NEW = {
    **dict.fromkeys(
        ("MisalignmentRow", "MisalignmentStudy", "misalignment_study"), "contextual_loss.demo.misalignment"
    ),
    **dict.fromkeys(
        ("distinct_match_fraction", "gaussian_kl", "spearman", "unique_match_fraction"),
        "contextual_loss.demo.statistics",
    ),
    "seed_permutations": "contextual_loss.demo.seed_example",
}
__all__ = sorted(_NEW)
__getattr__ = moved(__name__, {name: f"{module}:{name}" for name, module in _NEW.items()})
