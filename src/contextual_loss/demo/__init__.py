"""What the demo and the experiments are made of: built-in data and the measurements they report.

Nothing here is needed to train with the losses; ``contextual-loss demo`` and the scripts in the
repository's ``experiments/`` folder use it, and so may you, to reproduce their numbers.

- :mod:`~contextual_loss.demo.seed_example`: three RGB pixels against three others, CX =
  0.9878605414928291, and its value for every ordering of the target;
- :mod:`~contextual_loss.demo.images`: a multi-scale colour texture, a periodic pattern, rotation
  and blur, all deterministic (nothing is downloaded);
- :mod:`~contextual_loss.demo.misalignment`: L1 and CX of shifted and rotated copies of a texture
  (the claim of Mechrez et al., ECCV 2018) and its figure;
- :mod:`~contextual_loss.demo.statistics`: one-to-one matches (Zhang et al., CVPR 2019), Spearman's
  rank correlation and the KL divergence of Gaussians (Mechrez et al., ACCV 2018).
"""

from contextual_loss.demo.images import gaussian_blur, periodic_pattern, rotate, texture
from contextual_loss.demo.misalignment import (
    CX_CLAIM,
    L1_CLAIM,
    MisalignmentRow,
    MisalignmentStudy,
    misalignment_study,
    plot_misalignment,
)
from contextual_loss.demo.seed_example import (
    SEED_BAND_WIDTH,
    SEED_CX,
    SEED_X,
    SEED_Y,
    seed_images,
    seed_permutations,
)
from contextual_loss.demo.statistics import distinct_match_fraction, gaussian_kl, spearman, unique_match_fraction

__all__ = [
    "CX_CLAIM",
    "L1_CLAIM",
    "SEED_BAND_WIDTH",
    "SEED_CX",
    "SEED_X",
    "SEED_Y",
    "MisalignmentRow",
    "MisalignmentStudy",
    "distinct_match_fraction",
    "gaussian_blur",
    "gaussian_kl",
    "misalignment_study",
    "periodic_pattern",
    "plot_misalignment",
    "rotate",
    "seed_images",
    "seed_permutations",
    "spearman",
    "texture",
    "unique_match_fraction",
]
