"""Which strip kernels run: automatic selection, forcing by environment or thread-local override, errors, status."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from contextual_loss import engine
from contextual_loss.engine import kernels
from contextual_loss.engine.kernels.eager import EagerKernels
from contextual_loss.engine.kernels.native import NativeKernels
from contextual_loss.options import ContextualOptions

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
NATIVE = kernels.availability("native", CPU, torch.float32) is None


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.delenv("CONTEXTUAL_LOSS_NATIVE", raising=False)


def test_auto_picks_by_device_and_dtype():
    for dtype in (torch.float32, torch.float64):
        assert kernels.resolve(CPU, dtype) == ("native" if NATIVE else "eager")
    assert kernels.resolve(CPU, torch.float16) == "eager"
    assert kernels.resolve(META, torch.float32) == "eager"  # any other device: eager
    assert kernels.resolve(CUDA, torch.float32) == "eager"  # Triton is not available here
    assert isinstance(kernels.select(META, torch.float32), EagerKernels)


def test_native_environment_switch_means_eager(monkeypatch):
    monkeypatch.setenv("CONTEXTUAL_LOSS_NATIVE", "0")
    assert kernels.resolve(CPU, torch.float32) == "eager"
    assert kernels.availability("native", CPU, torch.float32) == "disabled by CONTEXTUAL_LOSS_NATIVE"
    with pytest.raises(kernels.KernelsUnavailableError, match="disabled by CONTEXTUAL_LOSS_NATIVE"):
        kernels.resolve(CPU, torch.float32, "native")


@pytest.mark.parametrize("value", ["eager", " EAGER ", "auto", ""])
def test_environment_forces_an_implementation(value, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, value)
    want = value.strip().lower() or "auto"
    assert kernels.requested()[0] == want
    if want == "eager":
        assert kernels.resolve(CPU, torch.float32) == "eager"


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "fast")
    with pytest.raises(
        ValueError, match=r"CONTEXTUAL_LOSS_KERNELS must be one of auto, eager, native, triton; got 'fast'"
    ):
        kernels.resolve(CPU, torch.float32)


def test_use_overrides_the_environment_and_nests(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "eager")
    with kernels.use("auto"):
        assert kernels.requested() == ("auto", "kernels.use('auto')")
        with kernels.use("eager"):
            assert kernels.resolve(CPU, torch.float32) == "eager"
        assert kernels.requested()[0] == "auto"
    assert kernels.requested() == ("eager", "CONTEXTUAL_LOSS_KERNELS=eager")
    with pytest.raises(ValueError, match="name must be one of auto, eager, native, triton; got 'gpu'"):
        kernels.use("gpu").__enter__()


@pytest.mark.parametrize(
    ("name", "device", "match"),
    [
        ("native", CUDA, "native.*cannot run on cuda.*CPU tensors only"),
        ("native", META, "CPU tensors only"),
        ("triton", CPU, "triton.*cannot run on cpu"),
    ],
)
def test_forcing_an_implementation_that_cannot_run_raises(name, device, match):
    with kernels.use(name), pytest.raises(kernels.KernelsUnavailableError, match=match):
        kernels.select(device, torch.float32)


def test_forced_kernels_that_cannot_run_fail_the_engine_instead_of_falling_back():
    x = torch.randn(1, 20, 3)
    options = ContextualOptions(engine="streaming")
    with kernels.use("triton"), pytest.raises(kernels.KernelsUnavailableError, match="forced"):
        engine.evaluate(x, x, options)


@pytest.mark.parametrize("name", kernels.IMPLEMENTATIONS)
def test_the_forced_implementation_is_the_one_that_runs(name, monkeypatch):
    why = kernels.availability(name, CPU, torch.float32)
    if why is not None:
        pytest.skip(why)
    calls: list[str] = []
    cls = type(kernels.select(CPU, torch.float32, name))
    for method in ("forward", "backward"):
        original = getattr(cls, method)

        def spy(self, *args, _original=original, _method=method, **kwargs):
            calls.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    x = torch.randn(1, 20, 3, requires_grad=True)
    with kernels.use(name):
        engine.evaluate(x, torch.randn(1, 15, 3), ContextualOptions(engine="streaming")).log_similarity.backward()
    assert "forward" in calls and "backward" in calls


def test_use_is_local_to_its_thread():
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, str] = {}

    def worker():
        with kernels.use("eager"):
            seen["worker"] = kernels.resolve(CPU, torch.float32)
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(10)
        seen["main"] = kernels.resolve(CPU, torch.float32)  # while the worker's block is open
    finally:
        release.set()
        thread.join()
    assert seen == {"worker": "eager", "main": "native" if NATIVE else "eager"}


def test_status_names_the_choice_and_every_implementation():
    text = kernels.status()
    assert text.splitlines()[0].startswith("cpu torch.float32: " + ("native" if NATIVE else "eager"))
    assert "triton: unavailable" in text
    with kernels.use("eager"):
        assert "eager (requested: eager, by kernels.use('eager'))" in kernels.status()
    assert "native: unavailable (the native kernels run on CPU tensors only" in kernels.status("meta")
    with kernels.use("native"):
        assert "error: the 'native' strip kernels were forced" in kernels.status("meta")


def test_deprecated_native_module_keeps_working():
    from contextual_loss.engine import native

    with pytest.warns(DeprecationWarning, match=r"native.status\(\) is deprecated"):
        message = native.status()
    assert message.startswith("in use") if NATIVE else message
    with pytest.warns(DeprecationWarning, match="disabled"), native.disabled():
        assert kernels.resolve(CPU, torch.float32) == "eager"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert native.kernels_for(torch.zeros(1)) is None
            assert native.status().startswith("disabled for this thread")
    with pytest.warns(DeprecationWarning):
        found = native.kernels_for(torch.zeros(1))
    assert isinstance(found, NativeKernels) if NATIVE else found is None
    with pytest.warns(DeprecationWarning):
        assert native.StripKernels is NativeKernels
