"""Statistics of the demo and the experiments: one-to-one matches, Spearman, Gaussian KL."""

from __future__ import annotations

import math

import pytest
import torch

from contextual_loss.demo.statistics import distinct_match_fraction, gaussian_kl, spearman, unique_match_fraction


def test_unique_and_distinct_fractions() -> None:
    index = torch.tensor([[0, 1, 1, 2], [3, 3, 3, 3]])
    # Row 0: targets 0 and 3 have a match of their own; 1 and 2 share theirs.
    torch.testing.assert_close(unique_match_fraction(index), torch.tensor([0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(distinct_match_fraction(index), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert float(unique_match_fraction(torch.arange(5))[0]) == 1.0  # a (M,) index is one image
    with pytest.raises(TypeError, match="integer"):
        unique_match_fraction(torch.rand(2, 3))
    with pytest.raises(ValueError, match="shape"):
        unique_match_fraction(torch.zeros(1, 0, dtype=torch.long))


def test_spearman_against_hand_computed_ranks() -> None:
    # a ranks 1..5; b = [10, 30, 20, 40, 40] ranks [1, 3, 2, 4.5, 4.5]. Centred ranks [-2, -1, 0, 1, 2] and
    # [-2, 0, -1, 1.5, 1.5]: rho = 8.5 / sqrt(10 * 9.5) = 0.8720815992723809 (scipy.stats.spearmanr agrees).
    rho = spearman([1, 2, 3, 4, 5], [10, 30, 20, 40, 40])
    assert rho == pytest.approx(8.5 / math.sqrt(95.0), rel=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman(torch.tensor([0.1, 5.0, 2.0]), [1, 3, 2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="constant"):
        spearman([1, 1, 1], [1, 2, 3])


@pytest.mark.parametrize(("mu_p", "std_p", "mu_q", "std_q", "dim"), [(0, 1, 1.5, 0.7, 1), (0.3, 2.0, -1, 1.2, 5)])
def test_gaussian_kl_matches_torch_distributions(mu_p, std_p, mu_q, std_q, dim) -> None:
    from torch.distributions import Independent, Normal, kl_divergence

    def gaussian(mu: float, std: float) -> Independent:
        mean = torch.zeros(dim, dtype=torch.float64)
        mean[0] = mu
        return Independent(Normal(mean, torch.full((dim,), std, dtype=torch.float64)), 1)

    expected = float(kl_divergence(gaussian(mu_p, std_p), gaussian(mu_q, std_q)))
    assert gaussian_kl(mu_p, std_p, mu_q, std_q, dim) == pytest.approx(expected, rel=1e-12)
    assert gaussian_kl(0.0, 1.0, 0.0, 1.0, dim) == 0.0
