"""Values and invariants of the functional API against docs/definition.md and an independent transcription."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tests.helpers import rand, rand64
from tests.reference import naive_cobi, naive_cobi_released, naive_cx

from contextual_loss.functional import (
    contextual_bilateral_loss,
    contextual_loss,
    contextual_match,
    contextual_similarity,
)

LOSS_TYPES = ("cosine", "l1", "l2")

# The seed example of docs/definition.md: three RGB pixels in a 1 x 3 image, h = 0.1, eps = 1e-5, cosine.
# Reference value CX = 0.9878605414928291 as given there.
SEED_X = [[231, 76, 60], [46, 204, 113], [52, 152, 219]]
SEED_Y = [[245, 183, 177], [171, 235, 198], [174, 214, 241]]
SEED_CX = 0.9878605414928291


def _image(pixels) -> torch.Tensor:
    return (torch.tensor(pixels, dtype=torch.float64) / 255).T.reshape(1, 3, 1, len(pixels))


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_seed_example_for_every_permutation_of_the_target(order):
    y = _image([SEED_Y[i] for i in order])
    value = contextual_similarity(_image(SEED_X), y, band_width=0.1)
    assert value.dtype == torch.float64
    assert abs(float(value) - SEED_CX) < 1e-12


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_identical_sets_give_cx_one_and_loss_zero(loss_type):
    x = rand(2, 8, 6, 7)
    assert torch.allclose(contextual_similarity(x, x, loss_type=loss_type), torch.ones(2), atol=1e-6)
    loss = contextual_loss(x, x, loss_type=loss_type, reduction="none")
    assert (loss >= 0).all() and (loss < 1e-6).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_far_apart_sets_give_loss_log_n(loss_type):
    # x: a tight cluster far from y; every x_i then sees y with the same relative distances.
    y = rand64(1, 4, 5, 5, seed=1)
    x = 1e-3 * rand64(1, 4, 5, 5, seed=2)
    x[:, 0] += 1e3
    loss = contextual_loss(x, y, band_width=0.5, loss_type=loss_type)
    assert abs(float(loss) - math.log(25)) < 1e-4


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_permuting_either_set_changes_nothing(loss_type):
    x, y = rand64(1, 5, 4, 6, seed=3), rand64(1, 5, 5, 3, seed=4)
    ref = contextual_loss(x, y, loss_type=loss_type, band_width=0.2)
    perm_x = torch.randperm(24, generator=torch.Generator().manual_seed(5))
    perm_y = torch.randperm(15, generator=torch.Generator().manual_seed(6))
    xp = x.flatten(2)[..., perm_x].reshape(1, 5, 6, 4)  # a different H x W as well: positions are forgotten
    yp = y.flatten(2)[..., perm_y].reshape(1, 5, 3, 5)
    assert abs(float(contextual_loss(xp, yp, loss_type=loss_type, band_width=0.2)) - float(ref)) < 1e-12


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("band_width", [0.1, 0.5, 1.0])
def test_agrees_with_literal_transcription_of_the_definition(loss_type, band_width):
    x, y = rand64(2, 6, 5, 4, seed=7), rand64(2, 6, 3, 6, seed=8)  # N != M
    got = contextual_similarity(x, y, band_width=band_width, loss_type=loss_type)
    want = torch.stack([naive_cx(x[b], y[b], band_width, loss_type) for b in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_loss_is_minus_log_similarity():
    x, y = rand64(3, 4, 5, 5, seed=9), rand64(3, 4, 5, 5, seed=10)
    sim = contextual_similarity(x, y)
    torch.testing.assert_close(contextual_loss(x, y, reduction="none"), -sim.log())


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_batch_items_are_independent_with_image_centring(loss_type):
    x, y = rand64(3, 4, 5, 5, seed=11), rand64(3, 4, 5, 5, seed=12)
    batch = contextual_loss(x, y, loss_type=loss_type, reduction="none")
    single = torch.cat(
        [contextual_loss(x[i : i + 1], y[i : i + 1], loss_type=loss_type, reduction="none") for i in range(3)]
    )
    torch.testing.assert_close(batch, single, rtol=1e-12, atol=1e-12)
    y_other = y.clone()
    y_other[1:] = rand64(2, 4, 5, 5, seed=13)
    changed = contextual_loss(x, y_other, loss_type=loss_type, reduction="none")
    assert float(changed[0]) == pytest.approx(float(batch[0]), abs=1e-12)


def test_batch_centring_uses_the_mean_over_the_whole_batch():
    x, y = rand64(2, 4, 5, 5, seed=14), rand64(2, 4, 5, 5, seed=15)
    mu = y.mean(dim=(0, 2, 3))
    got = contextual_similarity(x, y, center="batch")
    want = torch.stack([naive_cx(x[b], y[b], 0.5, mu=mu) for b in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, contextual_similarity(x, y, center="image"), atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    x, y = rand64(3, 4, 5, 5, seed=16), rand64(3, 4, 5, 5, seed=17)
    per_image = contextual_loss(x, y, reduction="none")
    assert per_image.shape == (3,)
    got = contextual_loss(x, y, reduction=reduction)
    want = {"mean": per_image.mean(), "sum": per_image.sum(), "none": per_image}[reduction]
    torch.testing.assert_close(got, want)


class TestBilateral:
    @pytest.mark.parametrize("loss_type", LOSS_TYPES)
    def test_weight_zero_equals_contextual_loss(self, loss_type):
        x, y = rand64(2, 4, 5, 6, seed=18), rand64(2, 4, 4, 6, seed=19)
        cx = contextual_loss(x, y, loss_type=loss_type, reduction="none")
        for form in ("paper", "released"):
            cobi = contextual_bilateral_loss(
                x, y, weight_sp=0.0, band_width=0.5, loss_type=loss_type, form=form, reduction="none"
            )
            torch.testing.assert_close(cobi, cx, rtol=1e-12, atol=1e-12)

    def test_is_not_permutation_invariant(self):
        x = rand64(1, 4, 6, 6, seed=20)
        y = x.flatten(2)[..., torch.randperm(36, generator=torch.Generator().manual_seed(0))].reshape(1, 4, 6, 6)
        assert float(contextual_loss(x, y)) < 1e-9
        assert float(contextual_bilateral_loss(x, y, weight_sp=0.5)) > 1e-3
        assert float(contextual_bilateral_loss(x, x, weight_sp=0.5)) < 1e-9

    @pytest.mark.parametrize("loss_type", LOSS_TYPES)
    def test_paper_form_matches_transcription(self, loss_type):
        x, y = rand64(2, 3, 4, 5, seed=21), rand64(2, 3, 5, 3, seed=22)  # different sizes share one frame
        got = contextual_bilateral_loss(x, y, weight_sp=0.3, band_width=0.5, loss_type=loss_type, reduction="none")
        want = torch.stack([-naive_cobi(x[b], y[b], 0.3, 0.5, loss_type).log() for b in range(2)])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("weight_sp", [0.1, 0.5, 0.9])
    def test_released_form_matches_transcription_in_cx_direction(self, weight_sp):
        x, y = rand64(2, 3, 4, 4, seed=23), rand64(2, 3, 4, 4, seed=24)
        got = contextual_bilateral_loss(x, y, weight_sp=weight_sp, band_width=0.5, form="released", reduction="none")
        want = torch.stack([-naive_cobi_released(x[b], y[b], weight_sp, 0.5).log() for b in range(2)])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    def test_released_form_rewards_co_location(self):
        # On equal grids the released spatial CX is ~ the identity: a pure permutation of the
        # pixels (CX loss 0) is penalised, the documented reason it is not our default.
        x = rand64(1, 4, 6, 6, seed=25)
        y = x.flatten(2)[..., torch.randperm(36, generator=torch.Generator().manual_seed(1))].reshape(1, 4, 6, 6)
        released = float(contextual_bilateral_loss(x, y, weight_sp=0.5, form="released"))
        assert released > math.log(1 / 0.5) - 1e-3  # max_i CX_ij <= 0.5 + tiny for displaced pixels

    @pytest.mark.parametrize("form", ["paper", "released"])
    def test_transposing_both_maps_changes_nothing(self, form):
        # The spatial frame treats rows and columns alike, so a wide map and its transpose agree.
        x, y = rand64(2, 3, 3, 7, seed=26), rand64(2, 3, 3, 7, seed=27)
        a = contextual_bilateral_loss(x, y, weight_sp=0.2, form=form, reduction="none")
        b = contextual_bilateral_loss(
            x.transpose(-1, -2), y.transpose(-1, -2), weight_sp=0.2, form=form, reduction="none"
        )
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class TestMatch:
    def test_recovers_a_known_permutation(self):
        x = rand64(2, 6, 5, 5, seed=28)
        perm = torch.randperm(25, generator=torch.Generator().manual_seed(2))
        y = x.flatten(2)[..., perm].reshape(2, 6, 5, 5)
        result = contextual_match(x, y, band_width=0.1)
        assert torch.equal(result.prediction_index, perm.expand(2, 25))
        torch.testing.assert_close(result.similarity.mean(-1), result.log_similarity.exp())
        torch.testing.assert_close(result.log_similarity.exp(), contextual_similarity(x, y, band_width=0.1))

    def test_bilateral_matches_follow_cobi(self):
        x, y = rand64(1, 4, 4, 4, seed=29), rand64(1, 4, 4, 4, seed=30)
        result = contextual_match(x, y, weight_sp=0.2)
        # contextual_match's band width defaults to 0.5, the functional CoBi's to 1.0 (drop-in): pass it.
        torch.testing.assert_close(
            -result.log_similarity, contextual_bilateral_loss(x, y, weight_sp=0.2, band_width=0.5, reduction="none")
        )

    def test_functional_cobi_defaults_to_band_width_one_as_contextual_loss_pytorch(self):
        x, y = rand64(1, 4, 4, 4, seed=29), rand64(1, 4, 4, 4, seed=30)
        torch.testing.assert_close(
            contextual_bilateral_loss(x, y), contextual_bilateral_loss(x, y, 0.1, 1.0), rtol=0, atol=0
        )
        assert not torch.allclose(contextual_bilateral_loss(x, y), contextual_bilateral_loss(x, y, 0.1, 0.5))


class TestSampling:
    def test_shared_indices_keep_identity(self):
        x = rand64(2, 4, 16, 16, seed=31)
        loss = contextual_loss(x, x, max_points=50, generator=torch.Generator().manual_seed(0))
        assert float(loss) < 1e-9

    def test_reproducible_with_a_generator(self):
        x, y = rand64(1, 4, 16, 16, seed=32), rand64(1, 4, 16, 16, seed=33)
        a = contextual_loss(x, y, max_points=40, generator=torch.Generator().manual_seed(3))
        b = contextual_loss(x, y, max_points=40, generator=torch.Generator().manual_seed(3))
        c = contextual_loss(x, y, max_points=40, generator=torch.Generator().manual_seed(4))
        assert float(a) == float(b) and float(a) != float(c)

    def test_no_sampling_below_the_cap(self):
        x, y = rand64(1, 4, 5, 5, seed=34), rand64(1, 4, 5, 5, seed=35)
        assert float(contextual_loss(x, y, max_points=25)) == float(contextual_loss(x, y))
