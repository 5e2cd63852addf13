"""``--vgg-layers`` / ``--weights`` / ``--vgg-pooling``: VGG19 features in compare and explain.

Weights are random and small (torchvision's builder up to conv2_2, saved with torch.save), loaded
through the real file path; the torch hub cache is an empty folder and downloads are refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from contextual_loss import ContextualLoss
from contextual_loss.functional import contextual_bilateral_loss, contextual_similarity
from contextual_loss.io import load_image

# ``offline_hub`` (tests/conftest.py): an empty torch hub cache, downloads refused.


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    features = make_layers(cfgs["E"][:5])  # conv1_1, conv1_2, pool, conv2_1, conv2_2
    path = tmp_path / "vgg19_small.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_two_layers_with_weights_from_a_file(run_cli, images, weights_file, offline_hub) -> None:
    argv = ["compare", str(images.shifted), str(images.reference), "--json"]
    result = run_cli(*argv, "--vgg-layers", "conv1_2,relu2_2:0.5", "--weights", str(weights_file))
    assert result.code == 0, result.err
    data = json.loads(result.out)
    # Reference: the library's module with the same layers and weights, layer by layer.
    module = ContextualLoss(layers={"conv1_2": 1.0, "relu2_2": 0.5}, weights=str(weights_file)).eval()
    with torch.no_grad():
        fx, fy = module.features(load_image(images.shifted)), module.features(load_image(images.reference))
    for name in ("conv1_2", "relu2_2"):
        assert data["layers"][name]["cx"] == pytest.approx(float(contextual_similarity(fx[name], fy[name])), rel=1e-5)
        cobi = contextual_bilateral_loss(fx[name], fy[name], 0.1, 0.5)  # the modules' band width
        assert data["layers"][name]["cobi_loss"] == pytest.approx(float(cobi), rel=1e-5)
    layers = data["layers"]
    assert data["cx_loss"] == pytest.approx(layers["conv1_2"]["cx_loss"] + 0.5 * layers["relu2_2"]["cx_loss"])
    assert data["cx"] == pytest.approx(math.exp(-data["cx_loss"] / 1.5))
    assert data["settings"]["features"].startswith("VGG19 conv1_2 x1, relu2_2 x0.5 (weights ")


def test_random_weights_and_avg_pooling(run_cli, images, offline_hub) -> None:
    argv = ["compare", str(images.shifted), str(images.reference), "--json", "--vgg-layers", "relu2_1"]
    result = run_cli(*argv, "--weights", "random", "--vgg-pooling", "avg")
    assert result.code == 0, result.err
    assert json.loads(result.out)["settings"]["features"] == "VGG19 relu2_1 x1 (random weights)"


def test_imagenet_weights_offline_say_how_to_get_them(run_cli, images, offline_hub) -> None:
    result = run_cli("compare", str(images.shifted), str(images.reference), "--vgg-layers", "conv3_2")
    assert result.code == 2
    line = result.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "contextual-loss download-weights" in line
    assert "--weights PATH or --weights random" in line  # the command line's own advice


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--vgg-layers", "conv9_9", "--weights", "random"], "VGG19 features:"),
        (["--vgg-layers", "conv3_2", "--weights", "missing.pth"], "--weights: no such file: missing.pth"),
        (["--vgg-layers", "conv3_2:heavy"], "NAME:WEIGHT"),
        (["--vgg-layers", " , "], "expected layer names"),
    ],
)
def test_bad_vgg_options(run_cli, images, offline_hub, extra: list[str], fragment: str) -> None:
    result = run_cli("compare", str(images.shifted), str(images.reference), *extra)
    assert result.code == 2 and fragment in result.err and "Traceback" not in result.err


def test_explain_one_vgg_layer(run_cli, images, weights_file, offline_hub, tmp_path: Path) -> None:
    out = tmp_path / "vgg.png"
    argv = ["explain", str(images.shifted), str(images.reference), "--out", str(out), "--json"]
    result = run_cli(*argv, "--vgg-layers", "conv1_2,conv2_2", "--weights", str(weights_file), "--layer", "conv2_2")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["layer"] == "conv2_2" and summary["map_size"] == [12, 12]  # one pooling: half the image
    assert out.stat().st_size > 1000
    bad = run_cli(*argv, "--vgg-layers", "conv1_2", "--weights", str(weights_file), "--layer", "conv2_2", "--force")
    assert bad.code == 2 and "--layer 'conv2_2' is not among" in bad.err


def test_explain_agrees_with_compare_on_every_layer_with_sampling(run_cli, images, weights_file, tmp_path) -> None:
    # compare draws the sampled positions of the layers in turn from one generator; explain --layer
    # must compare the same positions of its layer (here conv1_2: 576 > 200 positions are sampled).
    common = [str(images.shifted), str(images.reference), "--vgg-layers", "conv1_2,conv2_2"]
    common += ["--weights", str(weights_file), "--max-points", "100", "--seed", "5"]
    compared = json.loads(run_cli("compare", *common, "--json").out)["layers"]
    for layer in ("conv1_2", "conv2_2"):
        for cobi in ([], ["--cobi"]):
            out = tmp_path / f"{layer}{len(cobi)}.png"
            result = run_cli("explain", *common, "--layer", layer, "--out", str(out), "--json", *cobi)
            assert result.code == 0, result.err
            summary = json.loads(result.out)
            assert summary["positions"] == compared[layer]["positions"]["target"] == 100
            expected = compared[layer]["cobi_loss"] if cobi else compared[layer]["cx_loss"]
            assert summary["loss_value"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
