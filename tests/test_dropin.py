"""What is and is not drop-in for users of contextual_loss_pytorch (github.com/S-aiueo32/contextual_loss_pytorch).

The calls of its README example and of its own tests (``tests/test_contextual.py`` and
``tests/test_contextual_bilateral.py`` at its last commit, c886571) are transcribed here and run
against this library; values are checked where a closed form or its documented behaviour exists.
Every difference the documentation lists has a test in this file: the tests of deliberate
differences pass, and the gaps still to close are ``xfail(strict=True)``, so fixing one fails its
test until the mark is removed (and the documentation updated).

Its VGG19 is torchvision's with ImageNet weights; here "imagenet" is served from an isolated torch
hub cache holding random weights (the real file is never downloaded in tests).
"""

from __future__ import annotations

import importlib
import inspect
import math
import shutil
from pathlib import Path

import pytest
import torch
from tests.reference import naive_cx
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

import contextual_loss as cl
import contextual_loss.functional as F
from contextual_loss.engine import DoubleBackwardError
from contextual_loss.features import vgg19_cache_path

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: Their tests' feature maps.
TEST_SHAPE = (1, 256, 48, 48)

#: Their signatures (positional parameters and defaults), transcribed.
THEIR_SIGNATURES = {
    "contextual_loss": (F.contextual_loss, [("band_width", 0.5), ("loss_type", "cosine")]),
    "contextual_bilateral_loss": (
        F.contextual_bilateral_loss,
        [("weight_sp", 0.1), ("band_width", 1.0), ("loss_type", "cosine")],
    ),
    "ContextualLoss": (
        cl.ContextualLoss,
        [("band_width", 0.5), ("loss_type", "cosine"), ("use_vgg", False), ("vgg_layer", "relu3_4")],
    ),
    "ContextualBilateralLoss": (
        cl.ContextualBilateralLoss,
        [
            ("weight_sp", 0.1),
            ("band_width", 0.5),
            ("loss_type", "cosine"),
            ("use_vgg", False),
            ("vgg_layer", "relu3_4"),
        ],
    ),
}

#: Their VGG19 returns these layers, each the output of one slice of torchvision's ``vgg19().features``:
#: slices [0, 4), [4, 9), [9, 18), [18, 27), [27, 36), so each layer is the module at the slice's end.
THEIR_VGG_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights for all of torchvision's VGG19 ``features`` (their README uses relu5_4)."""
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    path = tmp_path_factory.mktemp("vgg19") / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture
def imagenet(vgg19_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``weights="imagenet"`` (their ``vgg19(pretrained=True)``) served offline from an isolated hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    vgg19_cache_path().parent.mkdir(parents=True)
    shutil.copy(vgg19_file, vgg19_cache_path())
    return vgg19_cache_path()


def their_value(ours_per_image: torch.Tensor) -> torch.Tensor:
    """Their loss from ours (batch centring): they take -log(CX + 1e-5) per image, then the batch mean."""
    return (-torch.log(torch.exp(-ours_per_image.double()) + 1e-5)).mean()


# --- Their README example, transcribed ----------------------------------------------------------


def test_their_readme_example_runs(imagenet: Path) -> None:
    # Their README imports "contextual_loss.fuctional" (a typo that fails in both libraries); the
    # module is contextual_loss.functional, imported above as F, as in their tests.
    img1 = torch.rand(1, 3, 96, 96)
    img2 = torch.rand(1, 3, 96, 96)

    criterion = cl.ContextualLoss()
    loss = criterion(img1, img2)
    assert loss.shape == torch.Size([]) and 0 < float(loss) <= math.log(96 * 96)

    loss = F.contextual_loss(img1, img2, band_width=0.1, loss_type="cosine")
    assert loss.shape == torch.Size([]) and 0 < float(loss) <= math.log(96 * 96)

    criterion = cl.ContextualLoss(use_vgg=True, vgg_layer="relu5_4")
    loss = criterion(img1, img2)
    # relu5_4 of a 96 x 96 image is 6 x 6; the random stand-in weights make any value in [0, log 36] plausible.
    assert loss.shape == torch.Size([]) and 0 <= float(loss) <= math.log(6 * 6)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("contextual_loss.fuctional")


# --- Their tests, transcribed: identical inputs give a scalar, here exactly 0 ----------------------


@pytest.mark.parametrize("cls", [cl.ContextualLoss, cl.ContextualBilateralLoss])
def test_their_module_tests(cls) -> None:
    prediction = torch.rand(*TEST_SHAPE)
    loss = cls()(prediction, prediction)
    assert loss.shape == torch.Size([])
    assert float(loss) == 0.0  # theirs: -log(1 + 1e-5) = -1.0e-5 (the +1e-5 inside the log)


@pytest.mark.parametrize("cls", [cl.ContextualLoss, cl.ContextualBilateralLoss])
def test_their_vgg_tests(cls, imagenet: Path) -> None:
    prediction = torch.rand(TEST_SHAPE[0], 3, *TEST_SHAPE[2:])
    loss = cls(use_vgg=True)(prediction, prediction)
    assert loss.shape == torch.Size([]) and float(loss) == 0.0


@pytest.mark.parametrize("loss_type", ["cosine", "l1", "l2"])
@pytest.mark.parametrize("function", [F.contextual_loss, F.contextual_bilateral_loss])
def test_their_functional_tests(function, loss_type) -> None:
    prediction = torch.rand(*TEST_SHAPE)
    loss = function(prediction, prediction, loss_type=loss_type)
    assert loss.shape == torch.Size([]) and float(loss) == 0.0


@CUDA
@pytest.mark.parametrize("cls", [cl.ContextualLoss, cl.ContextualBilateralLoss])
def test_their_gpu_module_tests(cls) -> None:
    prediction = torch.rand(*TEST_SHAPE).to("cuda:0")
    assert cls().to("cuda:0")(prediction, prediction).shape == torch.Size([])


@CUDA
@pytest.mark.parametrize("loss_type", ["cosine", "l1", "l2"])
@pytest.mark.parametrize("function", [F.contextual_loss, F.contextual_bilateral_loss])
def test_their_gpu_functional_tests(function, loss_type) -> None:
    prediction = torch.rand(*TEST_SHAPE).to("cuda:0")
    assert function(prediction, prediction, loss_type=loss_type).shape == torch.Size([])


# --- Signatures, names and VGG layers -------------------------------------------------------------


def _positional(callable_: object, count: int) -> list[tuple[str, object]]:
    parameters = list(inspect.signature(callable_).parameters.values())
    if parameters and parameters[0].name in ("x", "y"):
        parameters = parameters[2:]
    return [(p.name, p.default) for p in parameters[:count] if p.kind is p.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize(
    "name",
    [
        "contextual_loss",
        "contextual_bilateral_loss",
        "ContextualLoss",
        "ContextualBilateralLoss",
    ],
)
def test_signatures_keep_their_positional_parameters_and_defaults(name, imagenet: Path) -> None:
    ours, theirs = THEIR_SIGNATURES[name]
    positional = _positional(ours, len(theirs))
    assert [p for p, _ in positional] == [p for p, _ in theirs]
    if not inspect.isclass(ours):
        assert positional == theirs
        return
    # The modules' loss_type ("auto") and CoBi's weight_sp (None) follow the features; for every
    # feature theirs offers (the image itself, VGG19 layers) they resolve to their defaults.
    options = {"band_width", "loss_type", "weight_sp"}
    assert [(p, d) for p, d in positional if p not in options] == [(p, d) for p, d in theirs if p not in options]
    for kwargs in ({}, {"use_vgg": True}, {"use_vgg": True, "vgg_layer": "relu5_4"}):
        module = ours(**kwargs)
        assert [(p, getattr(module, p)) for p, _ in theirs if p in options] == [
            (p, d) for p, d in theirs if p in options
        ]


def test_positional_calls_bind_as_in_theirs() -> None:
    x, y = torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6)
    torch.testing.assert_close(
        F.contextual_loss(x, y, 0.2, "l2"), F.contextual_loss(x, y, band_width=0.2, loss_type="l2")
    )
    torch.testing.assert_close(
        F.contextual_bilateral_loss(x, y, 0.3, 0.2, "l1"),
        F.contextual_bilateral_loss(x, y, weight_sp=0.3, band_width=0.2, loss_type="l1"),
    )
    module = cl.ContextualBilateralLoss(0.3, 0.2, "l1")
    assert (module.weight_sp, module.band_width, module.loss_type) == (0.3, 0.2, "l1")


def test_their_import_paths_for_the_public_names() -> None:
    from contextual_loss import ContextualBilateralLoss, ContextualLoss, functional
    from contextual_loss.modules import ContextualBilateralLoss as ModuleCoBi
    from contextual_loss.modules import ContextualLoss as ModuleCX

    assert (ModuleCX, ModuleCoBi) == (ContextualLoss, ContextualBilateralLoss)
    assert functional.contextual_loss is F.contextual_loss


@pytest.mark.parametrize("module", ["contextual_loss.config", "contextual_loss.modules.vgg"])
def test_their_internal_modules_are_not_provided(module) -> None:
    # Not drop-in: their LOSS_TYPES (contextual_loss.config) and VGG19 class (contextual_loss.modules.vgg).
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)


def test_their_vgg_layer_names_are_the_same_torchvision_layers() -> None:
    from contextual_loss.features import VGG19_LAYERS

    assert {name: VGG19_LAYERS[name] for name in THEIR_VGG_LAYERS} == THEIR_VGG_LAYERS


def test_use_vgg_is_the_loss_on_imagenet_normalised_torchvision_features(imagenet: Path, vgg19_file: Path) -> None:
    # Their documented behaviour: x.sub(vgg_mean).div(vgg_std) on [0, 1] images, the named layer of
    # torchvision's vgg19(pretrained=True).features, then the functional loss (batch centring there).
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torchvision_features = make_layers(cfgs["E"])
    torchvision_features.load_state_dict(
        {k.removeprefix("features."): v for k, v in torch.load(vgg19_file, weights_only=True).items()}
    )
    head = torchvision_features[: THEIR_VGG_LAYERS["relu2_2"] + 1].eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        fa, fb = head((a - mean) / std), head((b - mean) / std)
        for cls, extra in ((cl.ContextualLoss, ()), (cl.ContextualBilateralLoss, (0.1,))):
            ours = cls(*extra, use_vgg=True, vgg_layer="relu2_2", center="batch")(a, b)
            function = F.contextual_loss if cls is cl.ContextualLoss else F.contextual_bilateral_loss
            want = function(fa, fb, *extra, band_width=0.5, center="batch")  # the modules' band width
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)


# --- Deliberate differences (each listed in the documentation) ----------------------------------


def test_no_epsilon_inside_the_log_and_the_conversion_to_their_values() -> None:
    x = torch.rand(2, 8, 10, 10, dtype=torch.float64)
    y = torch.rand(2, 8, 10, 10, dtype=torch.float64)
    ours = F.contextual_loss(x, y, center="batch", reduction="none")
    mu = y.permute(1, 0, 2, 3).flatten(1).mean(1)  # their centre: the mean over the batch and positions
    expected = torch.stack([-torch.log(naive_cx(x[i], y[i], 0.5, mu=mu)) for i in range(2)])
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    # Theirs is -log(CX + 1e-5): slightly below ours, and -1e-5 for identical inputs where ours is 0.
    assert float(their_value(ours)) < float(ours.mean())
    assert float(their_value(torch.zeros(1))) == pytest.approx(-math.log(1 + 1e-5))
    assert float(F.contextual_loss(x, x)) == 0.0


def test_centring_is_per_image_by_default_and_per_batch_on_request() -> None:
    x, y = torch.rand(2, 8, 10, 10), torch.rand(2, 8, 10, 10)
    other = y.clone()
    other[1] += 3.0  # changes the batch mean, not image 0
    per_image = F.contextual_loss(x, y, reduction="none")
    assert torch.equal(F.contextual_loss(x, other, reduction="none")[0], per_image[0])
    batch = F.contextual_loss(x, y, center="batch", reduction="none")
    assert not torch.equal(F.contextual_loss(x, other, center="batch", reduction="none")[0], batch[0])
    # With one image the two centres coincide: their tests' setting.
    torch.testing.assert_close(F.contextual_loss(x[:1], y[:1]), F.contextual_loss(x[:1], y[:1], center="batch"))


def test_l1_sums_absolute_differences_where_theirs_takes_the_absolute_sum() -> None:
    # Prediction vectors a = (0, 1), b = (1, 0), c = (5, 5); targets t = (1, 0), u = (5, 5). For t,
    # |sum(x - t)| is 0 for both a and b (theirs ties and takes a), sum |x - t| is 2 for a and 0 for
    # b, so here t is matched to b, position 1.
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]).T.reshape(1, 2, 1, 3)
    y = torch.tensor([[1.0, 0.0], [5.0, 5.0]]).T.reshape(1, 2, 1, 2)
    assert F.contextual_match(x, y, loss_type="l1").prediction_index.tolist() == [[1, 2]]


def test_l2_works_for_batches_larger_than_one() -> None:
    # Theirs broadcasts the squared norms across images for B > 1; here each image is on its own.
    x, y = torch.rand(3, 8, 6, 6), torch.rand(3, 8, 6, 6)
    batched = F.contextual_loss(x, y, loss_type="l2", reduction="none")
    alone = torch.stack([F.contextual_loss(x[i : i + 1], y[i : i + 1], loss_type="l2") for i in range(3)])
    torch.testing.assert_close(batched, alone)


def test_prediction_and_target_may_differ_in_size() -> None:
    # Theirs asserts x.size() == y.size().
    loss = F.contextual_loss(torch.rand(1, 8, 12, 12), torch.rand(1, 8, 9, 7))
    assert loss.shape == torch.Size([]) and 0 < float(loss) <= math.log(9 * 7)


def test_cobi_without_spatial_weight_is_cx() -> None:
    # True of both libraries; with weight_sp > 0 the forms differ (theirs: the released mixture with a
    # reversed reduction; ours: the paper's d + w_s D', form="released" for the mixture, CX direction).
    x, y = torch.rand(1, 8, 8, 8), torch.rand(1, 8, 8, 8)
    torch.testing.assert_close(F.contextual_bilateral_loss(x, y, 0.0, 0.5), F.contextual_loss(x, y, 0.5))
    mixed = F.contextual_bilateral_loss(x, y, 0.0, 0.5, form="released")
    torch.testing.assert_close(mixed, F.contextual_loss(x, y, 0.5))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: cl.ContextualLoss(band_width=0), ValueError),
        (lambda: cl.ContextualBilateralLoss(loss_type="cos"), ValueError),
        (lambda: F.contextual_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4, 4)), ValueError),
        (lambda: F.contextual_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), loss_type="L1"), ValueError),
        (lambda: F.contextual_loss([1.0], torch.rand(1, 3, 4, 4)), TypeError),
    ],
)
def test_bad_arguments_raise_value_or_type_errors_not_assertion_errors(call, error) -> None:
    # Theirs uses assert (AssertionError, and nothing at all under python -O): code that catches
    # AssertionError for bad arguments must catch ValueError and TypeError instead.
    with pytest.raises(error) as info:
        call()
    assert not isinstance(info.value, AssertionError)


def test_half_precision_inputs_give_a_float32_loss() -> None:
    # Theirs computes in the input dtype; here float16/bfloat16 are computed in float32.
    x, y = torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6)
    loss = F.contextual_loss(x.half(), y.half())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.contextual_loss(x.half().float(), y.half().float()))


def test_checkpoints_of_models_holding_their_criterion_need_its_keys_dropped(imagenet: Path) -> None:
    # Their criterion saves vgg_model.slice*.* and the vgg_mean/vgg_std buffers; ours saves nothing for
    # ImageNet weights, so such a checkpoint loads once the criterion's keys are dropped.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 3, 1)
            self.criterion = cl.ContextualLoss(use_vgg=True)

    theirs = dict(Net().body.state_dict(prefix="body."))
    theirs.update({"criterion.vgg_mean": torch.zeros(3, 1, 1), "criterion.vgg_model.slice1.0.weight": torch.zeros(1)})
    model = Net()
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*criterion\.vgg_m"):
        model.load_state_dict(theirs)
    model.load_state_dict({k: v for k, v in theirs.items() if not k.startswith("criterion.")})


# --- Double backward ------------------------------------------------------------------------------


def _gradient_penalty(engine: str) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    y = torch.rand(1, 3, 32, 32)
    (grad,) = torch.autograd.grad(F.contextual_loss(x, y, engine=engine), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), x)
    return second


def test_double_backward_works_on_the_dense_engine() -> None:
    second = _gradient_penalty("dense")
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_double_backward_on_the_streaming_engine_names_the_way_out() -> None:
    with pytest.raises(DoubleBackwardError, match="engine='dense'"):
        _gradient_penalty("streaming")


def test_double_backward_works_with_the_default_engine() -> None:
    # At 32 x 32 engine="auto" picks the streaming engine; a gradient taken with create_graph=True
    # is then recomputed densely, so it can be differentiated again (theirs: plain autograd).
    # float32: the two first-order passes round differently; the second derivatives reach ~800 here,
    # and the dense engine itself is within 7e-4 of float64 (the engines agree to 3e-12 in float64).
    want = _gradient_penalty("dense")
    torch.testing.assert_close(_gradient_penalty("auto"), want, rtol=1e-3, atol=1e-5 * float(want.abs().max()))
