"""VGG19Features: layer names, torchvision equivalence, ReLU and pooling variants, freezing, input checks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from contextual_loss.features import VGG19_LAYERS, VGG19Features
from contextual_loss.features.vgg import _VGG19_CONFIG, IMAGENET_MEAN, IMAGENET_STD

BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
BLOCK_CONVS = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4}


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_config_is_torchvisions_vgg19() -> None:
    # The package keeps its own copy so that it never imports torchvision for the losses alone.
    assert cfgs["E"] == _VGG19_CONFIG


def test_importing_the_package_does_not_import_torchvision() -> None:
    code = (
        "import sys, contextual_loss, contextual_loss.features, contextual_loss.cli;"
        "import torch; x = torch.rand(1, 3, 8, 8); contextual_loss.ContextualLoss()(x, x.flip(-1));"
        "print('torchvision' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_layer_table_matches_torchvision_vgg19_architecture() -> None:
    # The reference is torchvision.models.vgg19 itself, built on the meta device (no memory, no weights).
    with torch.device("meta"):
        features = torchvision.models.vgg19().features
    assert len(VGG19_LAYERS) == 16 * 2 + 5 and max(VGG19_LAYERS.values()) == len(features) - 1
    for name, index in VGG19_LAYERS.items():
        layer = features[index]
        kind, block, conv = re.fullmatch(r"(conv|relu|pool)(\d)(?:_(\d))?", name).groups()
        if kind == "conv":
            assert isinstance(layer, nn.Conv2d) and layer.out_channels == BLOCK_CHANNELS[int(block)]
            # conv{b}_{k} is the k-th convolution after the (b-1)-th pooling.
            pools_before = sum(isinstance(m, nn.MaxPool2d) for m in features[:index])
            convs_in_block = sum(isinstance(m, nn.Conv2d) for m in features[:index][_last_pool(features, index) :])
            assert (pools_before + 1, convs_in_block + 1) == (int(block), int(conv))
            assert int(conv) <= BLOCK_CONVS[int(block)]
        elif kind == "relu":
            assert isinstance(layer, nn.ReLU) and VGG19_LAYERS[f"conv{block}_{conv}"] == index - 1
        else:
            assert isinstance(layer, nn.MaxPool2d) and sum(
                isinstance(m, nn.MaxPool2d) for m in features[: index + 1]
            ) == int(block)


def _last_pool(features: nn.Sequential, index: int) -> int:
    pools = [i for i in range(index) if isinstance(features[i], nn.MaxPool2d)]
    return pools[-1] + 1 if pools else 0


def test_layer_indices_agree_with_known_slices() -> None:
    # contextual_loss_pytorch (and LPIPS-style VGG wrappers) slice torchvision's vgg19().features at
    # range(4), range(4, 9), range(9, 18), range(18, 27), range(27, 36) to get relu1_2 ... relu5_4.
    assert [VGG19_LAYERS[n] for n in ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")] == [3, 8, 17, 26, 35]
    assert (VGG19_LAYERS["conv3_2"], VGG19_LAYERS["relu3_2"], VGG19_LAYERS["conv4_2"]) == (12, 13, 21)
    assert [VGG19_LAYERS[f"pool{b}"] for b in range(1, 6)] == [4, 9, 18, 27, 36]


def test_outputs_equal_torchvision_features_with_the_same_weights(weights_file, vgg_state, image) -> None:
    names = ["conv1_1", "relu1_2", "pool1", "conv2_2", "conv3_2", "relu3_2", "relu4_2"]
    vgg = VGG19Features(names, weights=weights_file)
    reference = make_layers(cfgs["E"][:13])  # torchvision's builder, up to conv4_2 and its ReLU
    reference.load_state_dict({k.removeprefix("features."): v for k, v in vgg_state.items() if "features" in k})
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    h, expected = (image - mean) / std, {}
    with torch.no_grad():
        for index, layer in enumerate(reference):
            h = layer(h)
            expected[index] = h.clone()  # torchvision's ReLUs are in place: keep a copy of each output
        ours = vgg(image)
    assert list(ours) == names
    for name in names:
        torch.testing.assert_close(ours[name], expected[VGG19_LAYERS[name]], rtol=1e-5, atol=1e-5)


def test_runs_only_up_to_the_deepest_requested_layer() -> None:
    vgg = VGG19Features(["relu1_1", "conv3_2", "relu2_1"], weights=None)
    assert len(vgg.body) == VGG19_LAYERS["conv3_2"] + 1
    assert isinstance(vgg.body[-1], nn.Conv2d)
    assert vgg.layers == ("relu1_1", "conv3_2", "relu2_1")  # the caller's order, duplicates removed
    assert VGG19Features(["relu1_1", "relu1_1"], weights=None).layers == ("relu1_1",)


def test_pre_and_post_relu_differ(weights_file, image) -> None:
    with torch.no_grad():
        feats = VGG19Features(["conv3_2", "relu3_2", "conv1_1", "relu1_1"], weights=weights_file)(image)
    for block in ("3_2", "1_1"):
        conv, relu = feats[f"conv{block}"], feats[f"relu{block}"]
        assert (conv < 0).float().mean() > 0.05  # pre-ReLU keeps negative responses ...
        assert not torch.equal(conv, relu)  # ... so an in-place ReLU would have overwritten it
        torch.testing.assert_close(relu, conv.clamp_min(0))


def test_avg_pooling_differs_from_max(weights_file, image) -> None:
    with torch.no_grad():
        max_feats = VGG19Features(["relu1_2", "pool1", "relu2_1"], weights=weights_file, pooling="max")(image)
        avg_feats = VGG19Features(["relu1_2", "pool1", "relu2_1"], weights=weights_file, pooling="avg")(image)
    torch.testing.assert_close(avg_feats["relu1_2"], max_feats["relu1_2"])  # before the first pooling
    torch.testing.assert_close(max_feats["pool1"], F.max_pool2d(max_feats["relu1_2"], 2))
    torch.testing.assert_close(avg_feats["pool1"], F.avg_pool2d(avg_feats["relu1_2"], 2))
    assert (max_feats["pool1"] >= avg_feats["pool1"] - 1e-6).all()
    assert (max_feats["pool1"] - avg_feats["pool1"]).abs().max() > 1e-2
    assert not torch.allclose(max_feats["relu2_1"], avg_feats["relu2_1"])


def test_frozen_and_eval_after_train_on_the_parent(weights_file, image) -> None:
    vgg = VGG19Features(["relu2_2"], weights=weights_file)
    parent = nn.ModuleDict({"head": nn.Conv2d(3, 3, 1), "vgg": vgg})
    parent.train()
    assert parent.training and parent["head"].training
    assert not vgg.training and not any(m.training for m in vgg.modules())
    assert all(not p.requires_grad for p in vgg.parameters())
    x = image.clone().requires_grad_(True)
    vgg(parent["head"](x))["relu2_2"].square().mean().backward()
    assert all(p.grad is None for p in vgg.parameters())
    assert parent["head"].weight.grad is not None and x.grad is not None
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_normalisation_buffers_are_not_persistent() -> None:
    vgg = VGG19Features("relu1_1", weights=None)
    assert set(vgg.state_dict()) == {"body.0.weight", "body.0.bias"}
    assert {name for name, _ in vgg.named_buffers()} == {"mean", "std"}
    assert vgg.to(torch.float64).mean.dtype == torch.float64


@pytest.mark.parametrize(("low", "high"), [(-1.0, 1.0), (0, 255), (0.25, 0.5)])
def test_input_range_maps_onto_unit_interval(weights_file, image, low, high) -> None:
    reference = VGG19Features("relu2_1", weights=weights_file)
    scaled = VGG19Features("relu2_1", weights=weights_file, input_range=(low, high))
    with torch.no_grad():
        torch.testing.assert_close(
            scaled(image * (high - low) + low)["relu2_1"], reference(image)["relu2_1"], rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("bad", [(1, 0), (0, 0), (0,), (0, 1, 2), "01", (0, float("inf")), (0, float("nan")), None])
def test_bad_input_range_raises(bad) -> None:
    with pytest.raises(ValueError, match=r"input_range must be a pair \(low, high\)"):
        VGG19Features("relu1_1", weights=None, input_range=bad)


@pytest.mark.parametrize("bad", ["conv3_5", "relu6_1", "pool0", "conv1_3", "fc7", "relu3", "", "RELU1_1"])
def test_bad_layer_names_raise(bad) -> None:
    with pytest.raises(ValueError, match=r"unknown VGG19 layer name.*relu\{b\}_\{k\}"):
        VGG19Features(["relu1_1", bad], weights=None)


def test_bad_layer_arguments_raise() -> None:
    with pytest.raises(TypeError, match="layers must be a VGG19 layer name"):
        VGG19Features(3, weights=None)
    with pytest.raises(ValueError, match="at least one"):
        VGG19Features([], weights=None)
    with pytest.raises(ValueError, match="pooling must be one of"):
        VGG19Features("relu1_1", weights=None, pooling="min")


def test_bad_images_raise() -> None:
    vgg = VGG19Features("relu1_1", weights=None)
    with pytest.raises(ValueError, match=r"RGB images of shape \(B, 3, H, W\), got shape \(1, 1, 8, 8\)"):
        vgg(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
        vgg(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        vgg(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"torch.Tensor of shape \(B, 3, H, W\), got list"):
        vgg([[0.0]])


def test_input_dtype_follows_the_extractor(weights_file) -> None:
    vgg = VGG19Features("relu1_2", weights=weights_file)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = vgg(x)["relu1_2"]
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float64
    assert vgg.to(torch.float64)(x)["relu1_2"].dtype == torch.float64
