"""Bad input gets a clear error naming the argument, the value received and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.functional import contextual_bilateral_loss, contextual_loss, contextual_similarity

X = torch.rand(2, 3, 4, 4)


@pytest.mark.parametrize(
    ("x", "y", "error", "pattern"),
    [
        (X.numpy(), X, TypeError, r"x must be a torch.Tensor of shape \(B, C, H, W\), got ndarray"),
        (X, [1.0], TypeError, r"y must be a torch.Tensor .* got list"),
        (X[0], X, ValueError, r"x must have shape \(B, C, H, W\) \(4 dimensions\), got shape \(3, 4, 4\)"),
        (X, X[None], ValueError, r"y must have shape .* got shape \(1, 2, 3, 4, 4\)"),
        (X, X[:1], ValueError, r"same batch size, got x: \(2, 3, 4, 4\) and y: \(1, 3, 4, 4\)"),
        (X, X[:, :2], ValueError, r"same number of channels, got x: \(2, 3, 4, 4\) and y: \(2, 2, 4, 4\)"),
        ((X * 255).to(torch.uint8), X, TypeError, r"x must have a floating-point dtype .* got torch.uint8"),
        (X, X.long(), TypeError, r"y must have a floating-point dtype .* got torch.int64"),
        (X, X.bool(), TypeError, r"y must have a floating-point dtype"),
        (X[..., :0], X, ValueError, r"x must not be empty, got shape \(2, 3, 4, 0\)"),
        (X, X[:, :, :0], ValueError, r"y must not be empty"),
    ],
)
def test_bad_tensors(x, y, error, pattern):
    with pytest.raises(error, match=pattern):
        contextual_loss(x, y)
    with pytest.raises(error, match=pattern):
        contextual_bilateral_loss(x, y)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"band_width": 0.0}, ValueError, r"band_width must be > 0, got 0.0"),
        ({"band_width": -1}, ValueError, r"band_width must be > 0, got -1"),
        ({"band_width": float("nan")}, ValueError, r"band_width must be finite, got nan"),
        ({"band_width": "0.5"}, TypeError, r"band_width must be a real number, got str '0.5'"),
        ({"band_width": True}, TypeError, r"band_width must be a real number, got bool"),
        # The modules also take "auto" (the distance follows the features).
        ({"loss_type": "L1"}, ValueError, r"loss_type must be one of \('cosine', 'l1', 'l2'(, 'auto')?\), got 'L1'"),
        ({"center": "global"}, ValueError, r"center must be one of \('image', 'batch'\), got 'global'"),
        ({"eps": 0.0}, ValueError, r"eps must be > 0, got 0.0"),
        ({"max_points": 0}, ValueError, r"max_points must be >= 1, got 0"),
        ({"max_points": 2.5}, TypeError, r"max_points must be an int, got float 2.5"),
    ],
)
def test_bad_options(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        contextual_similarity(X, X, **kwargs)
    with pytest.raises(error, match=pattern):
        ContextualLoss(**kwargs)


def test_bad_reduction():
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        contextual_loss(X, X, reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ContextualBilateralLoss(reduction="elementwise_mean")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"weight_sp": -0.1}, ValueError, r"weight_sp must be >= 0, got -0.1"),
        ({"weight_sp": 1.5, "form": "released"}, ValueError, r"weight_sp must lie in \[0, 1\], got 1.5"),
        ({"form": "tf"}, ValueError, r"form must be one of \('paper', 'released'\), got 'tf'"),
    ],
)
def test_bad_bilateral_options(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        contextual_bilateral_loss(X, X, **kwargs)
    with pytest.raises(error, match=pattern):
        ContextualBilateralLoss(**kwargs)


def test_weight_sp_none_is_refused_by_the_function_and_follows_the_distance_in_the_module():
    # The function would silently compute CX; the module picks the spatial weight of its distance.
    with pytest.raises(TypeError, match=r"weight_sp must be a real number, got NoneType"):
        contextual_bilateral_loss(X, X, weight_sp=None)
    assert ContextualBilateralLoss(weight_sp=None).weight_sp == 0.1
    assert ContextualBilateralLoss(weight_sp=None, loss_type="l1").weight_sp == 1.0


def test_paper_form_accepts_weights_above_one():
    assert torch.isfinite(contextual_bilateral_loss(X, X.flip(-1), weight_sp=3.0))


def test_module_rejects_non_tensor_input():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        ContextualLoss()(np.zeros((1, 3, 4, 4)), X[:1])


def test_devices_must_match():
    with pytest.raises(ValueError, match=r"same device, got x on cpu and y on meta"):
        contextual_loss(X, torch.empty(2, 3, 4, 4, device="meta"))


# Issue 13, item 5: errors that were unclear or untyped.


def test_patch_module_on_integer_images_names_the_dtype() -> None:
    images = (X * 255).to(torch.uint8)  # im2col used to raise NotImplementedError for 'Byte'
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype .* got torch.uint8"):
        ContextualLoss(patch_size=5)(images, images)


def test_arrays_are_named_by_type_and_shape_not_their_repr() -> None:
    with pytest.raises(TypeError) as error:
        contextual_loss(np.zeros((2, 3, 40, 40), dtype=np.float32), X)
    assert str(error.value) == (
        "x must be a torch.Tensor of shape (B, C, H, W), got ndarray of shape (2, 3, 40, 40) and dtype float32"
    )


def test_long_reprs_are_cut() -> None:
    with pytest.raises(TypeError, match=r"got list \[0, 0, .*\.\.\.$") as error:
        contextual_loss(X, [0] * 1000)
    assert len(str(error.value)) < 200


def test_module_on_meta_tensors_gives_a_meta_loss() -> None:
    images = torch.empty(2, 3, 8, 8, device="meta")
    loss = ContextualBilateralLoss(patch_size=3, engine="dense")(images, images)
    assert loss.device.type == "meta" and loss.shape == ()


def test_sparse_tensors_are_rejected_with_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"y must be a dense \(strided\) tensor, got layout torch.sparse_coo"):
        contextual_similarity(X, X.to_sparse())


@pytest.mark.parametrize("generator", [123, "seed", torch.tensor(0)])
def test_generator_must_be_a_torch_generator(generator) -> None:
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None"):
        contextual_loss(X, X, max_points=5, generator=generator)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None"):
        ContextualLoss(max_points=5)(X, X, generator=generator)


def test_module_on_an_empty_batch() -> None:
    empty = X[:0]  # used to fail in a reshape with a RuntimeError
    with pytest.raises(ValueError, match=r"x must not be empty, got shape \(0, 3, 4, 4\)"):
        ContextualLoss(patch_size=3)(empty, empty)


def test_patch_module_reports_the_images_channels() -> None:
    grey = X[:, :1]  # the patches would have 27 and 9 channels
    with pytest.raises(ValueError, match=r"same number of channels, got x: \(2, 3, 4, 4\) and y: \(2, 1, 4, 4\)"):
        ContextualLoss(patch_size=3)(X, grey)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"band_width": np.float32(0.3)},
        {"band_width": np.float64(0.3)},
        {"eps": np.float32(1e-5)},
        {"band_width": np.int64(1)},
        {"memory_budget": np.int64(4096), "engine": "streaming"},
        {"memory_budget": np.int32(4096)},
        {"max_points": np.int64(8)},
    ],
)
def test_numpy_scalars_are_numbers(kwargs) -> None:
    as_python = {name: value.item() for name, value in kwargs.items() if isinstance(value, np.generic)}
    want = contextual_loss(X, X.flip(-1), **{**kwargs, **as_python}, generator=torch.Generator().manual_seed(0))
    got = contextual_loss(X, X.flip(-1), **kwargs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"band_width": np.bool_(True)}, "band_width must be a real number"),
        ({"memory_budget": np.float64(4096.0)}, "memory_budget must be an int"),
        ({"max_points": np.bool_(True)}, "max_points must be an int"),
        ({"max_points": True}, "max_points must be an int"),
    ],
)
def test_bools_and_non_integers_are_not_counts(kwargs, pattern) -> None:
    with pytest.raises(TypeError, match=pattern):
        contextual_loss(X, X, **kwargs)
