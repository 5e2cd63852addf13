"""One test template for every public function, in the spirit of kornia's BaseTester.

``_Template`` holds the tests; each ``Test*`` class below fills in the API: the function, the
module that wraps it (if any), the arguments it needs and how to read its result. Every API gets:
smoke (on each ``device``), bad input raising a clear TypeError/ValueError, the output shape for
each reduction, gradcheck in float64, float16/bfloat16/float64 inputs, meta tensors,
``torch.compile(fullgraph=True)`` of the function and the module on both engines equal to eager
(values and gradients), ``torch.export`` of the module, and module equal to function. Values
against the definition are in ``test_functional.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from tests.helpers import rand, rand64
from torch import Tensor, nn

from contextual_loss import ContextualBilateralLoss, ContextualLoss
from contextual_loss.engine.types import ContextualMatch
from contextual_loss.functional import (
    contextual_bilateral_loss,
    contextual_loss,
    contextual_match,
    contextual_similarity,
)

X, Y = rand(2, 3, 5, 6, seed=1), rand(2, 3, 4, 5, seed=2)  # N = 30, M = 20: sizes differ

#: (x, y, error, pattern): tensors every API rejects, with the message it gives.
BAD_TENSORS = [
    (X.numpy(), Y, TypeError, r"x must be a torch.Tensor .* got ndarray of shape \(2, 3, 5, 6\) and dtype float32$"),
    (X, [1.0], TypeError, r"y must be a torch.Tensor .* got list \[1.0\]"),
    ((X * 255).to(torch.uint8), Y, TypeError, r"x must have a floating-point dtype .* got torch.uint8"),
    (X.to_sparse(), Y, TypeError, r"x must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    (X[0], Y, ValueError, r"x must have shape \(B, C, H, W\)"),
    (X, Y[:1], ValueError, r"same batch size"),
    (X, Y[:, :2], ValueError, r"same number of channels"),
    (X[:0], Y[:0], ValueError, r"x must not be empty, got shape \(0, 3, 5, 6\)"),
    (X.masked_fill(X > 0.9, float("nan")), Y, ValueError, r"x contains NaN or infinite values"),
]

#: (options, error, pattern): arguments every API rejects.
BAD_OPTIONS = [
    ({"band_width": 0.0}, ValueError, r"band_width must be > 0, got 0.0"),
    ({"band_width": "0.5"}, TypeError, r"band_width must be a real number, got str '0.5'"),
    ({"loss_type": "L1"}, ValueError, r"loss_type must be one of \('cosine', 'l1', 'l2'\), got 'L1'"),
    ({"eps": -1e-5}, ValueError, r"eps must be > 0"),
    ({"engine": "fast"}, ValueError, r"engine must be one of \('auto', 'dense', 'streaming'\), got 'fast'"),
    ({"memory_budget": np.float32(4096)}, TypeError, r"memory_budget must be an int, got float32"),
    ({"memory_budget": True}, TypeError, r"memory_budget must be an int, got bool"),
]


class _Template:
    """The tests every public API must pass; subclasses say how to call it."""

    function: ClassVar[Callable[..., Any]]
    #: The module computing the same as ``function`` on the images themselves, or ``None``.
    module: ClassVar[type[nn.Module] | None] = None
    #: Arguments the API is always called with (CoBi's spatial weight).
    arguments: ClassVar[dict[str, Any]] = {}
    #: The reductions the API offers; ``()``: it returns per-image values.
    reductions: ClassVar[tuple[str, ...]] = ("mean", "sum", "none")
    #: Whether it takes ``max_points`` and ``generator``.
    samples: ClassVar[bool] = True

    def call(self, x: Any, y: Any, **kwargs: Any) -> Any:
        return type(self).function(x, y, **{**self.arguments, **kwargs})

    def value(self, result: Any) -> Tensor:
        """The differentiable tensor of a result: the loss, or log CX of a match."""
        return result

    def test_smoke(self, device: torch.device) -> None:
        out = self.value(self.call(X.to(device), Y.to(device)))
        assert out.device.type == device.type and out.dtype == torch.float32
        assert torch.isfinite(out).all()

    @pytest.mark.parametrize(("x", "y", "error", "pattern"), BAD_TENSORS)
    def test_bad_tensors(self, x: Any, y: Any, error: type[Exception], pattern: str) -> None:
        with pytest.raises(error, match=pattern):
            self.call(x, y)

    @pytest.mark.parametrize(("options", "error", "pattern"), BAD_OPTIONS)
    def test_bad_options(self, options: dict[str, Any], error: type[Exception], pattern: str) -> None:
        with pytest.raises(error, match=pattern):
            self.call(X, Y, **options)

    def test_bad_generator(self) -> None:
        if not self.samples:
            pytest.skip("takes no generator")
        with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got int 123"):
            self.call(X, Y, max_points=10, generator=123)

    def test_bad_reduction(self) -> None:
        if not self.reductions:
            pytest.skip("does not reduce")
        with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
            self.call(X, Y, reduction="avg")

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none", None])
    def test_cardinality(self, reduction: str | None) -> None:
        if reduction not in self.reductions and reduction is not None:
            pytest.skip("does not reduce")
        out = self.value(self.call(X, Y) if reduction is None else self.call(X, Y, reduction=reduction))
        per_image = reduction == "none" or (reduction is None and not self.reductions)
        assert out.shape == ((2,) if per_image else ())

    def test_gradcheck(self) -> None:
        x = rand64(2, 3, 3, 4, seed=3).requires_grad_()
        y = rand64(2, 3, 4, 3, seed=4).requires_grad_()
        kwargs = {"reduction": "none"} if self.reductions else {}
        assert torch.autograd.gradcheck(
            lambda a, b: self.value(self.call(a, b, band_width=0.3, **kwargs)),
            (x, y),
            eps=1e-6,
            atol=1e-5,
            rtol=1e-4,
            fast_mode=True,
        )

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_dtype(self, dtype: torch.dtype, device: torch.device) -> None:
        x, y = X.to(device), Y.to(device)
        reference = self.value(self.call(x, y))
        xd = x.to(dtype).requires_grad_()
        out = self.value(self.call(xd, y.to(dtype)))
        out.sum().backward()
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert xd.grad is not None and xd.grad.dtype == dtype and torch.isfinite(xd.grad).all()
        # float64 agrees with float32 to its rounding; half precision to the rounding of its inputs.
        tolerance = 1e-5 if dtype == torch.float64 else 2e-2
        torch.testing.assert_close(out.float(), reference, rtol=tolerance, atol=tolerance)

    @pytest.mark.parametrize("engine", ["dense", "streaming"])
    def test_meta_tensors_give_meta_results(self, engine: str) -> None:
        meta = self.call(X.to("meta"), Y.to("meta"), engine=engine)
        cpu = self.call(X, Y, engine=engine)
        for got, want in zip(_tensors(meta), _tensors(cpu), strict=True):
            assert got.device.type == "meta" and got.shape == want.shape and got.dtype == want.dtype

    @pytest.mark.parametrize("engine", ["dense", "streaming"])
    def test_compile_fullgraph_equals_eager(self, engine: str) -> None:
        torch._dynamo.reset()  # a fresh cache: earlier tests compiled the same code with other constants
        compiled = torch.compile(type(self).function, fullgraph=True, backend="aot_eager")
        x = rand64(2, 3, 5, 6, seed=5).requires_grad_()
        y = rand64(2, 3, 4, 5, seed=6)
        kwargs = {**self.arguments, "engine": engine}
        want = self.value(type(self).function(x, y, **kwargs))
        got = self.value(compiled(x, y, **kwargs))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        (grad_want,) = torch.autograd.grad(want.sum(), x)
        (grad_got,) = torch.autograd.grad(got.sum(), x)
        torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("engine", ["dense", "streaming"])
    def test_compiled_module_equals_eager(self, engine: str) -> None:
        if self.module is None:
            pytest.skip("no module")
        torch._dynamo.reset()
        module = self.module(**self.arguments, patch_size=3, engine=engine)
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        x = rand64(2, 3, 6, 7, seed=7).requires_grad_()
        y = rand64(2, 3, 5, 6, seed=8)
        want, got = module(x, y), compiled(x, y)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        (grad_want,) = torch.autograd.grad(want, x)
        (grad_got,) = torch.autograd.grad(got, x)
        torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("engine", ["dense", "streaming"])
    def test_exported_module_equals_eager(self, engine: str) -> None:
        if self.module is None:
            pytest.skip("no module")
        module = self.module(**self.arguments, patch_size=3, engine=engine)
        program = torch.export.export(module, (rand64(2, 3, 6, 7, seed=9), rand64(2, 3, 5, 6, seed=10)))
        x, y = rand64(2, 3, 6, 7, seed=11), rand64(2, 3, 5, 6, seed=12)  # new inputs of the traced shapes
        torch.testing.assert_close(program.module()(x, y), module(x, y), rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_module_equals_function(self, reduction: str) -> None:
        if self.module is None:
            pytest.skip("no module")
        module = self.module(**self.arguments, reduction=reduction)  # the images themselves are the features
        torch.testing.assert_close(module(X, Y), self.call(X, Y, reduction=reduction), rtol=0, atol=0)


def _tensors(result: Any) -> tuple[Tensor, ...]:
    return tuple(result) if isinstance(result, ContextualMatch) else (result,)


class TestContextualLoss(_Template):
    function = staticmethod(contextual_loss)
    module = ContextualLoss


class TestContextualBilateralLoss(_Template):
    function = staticmethod(contextual_bilateral_loss)
    module = ContextualBilateralLoss
    # The band width is given: the function defaults to 1.0 and the module to 0.5, as in contextual_loss_pytorch.
    arguments: ClassVar[dict[str, Any]] = {"weight_sp": 0.2, "band_width": 0.5}


class TestContextualBilateralLossReleasedForm(_Template):
    function = staticmethod(contextual_bilateral_loss)
    module = ContextualBilateralLoss
    arguments: ClassVar[dict[str, Any]] = {"weight_sp": 0.3, "band_width": 0.5, "form": "released"}


class TestContextualSimilarity(_Template):
    function = staticmethod(contextual_similarity)
    reductions = ()


class TestContextualMatch(_Template):
    function = staticmethod(contextual_match)
    reductions = ()
    samples = False

    def value(self, result: Any) -> Tensor:
        return result.log_similarity

    def test_cardinality(self) -> None:  # type: ignore[override]
        match = self.call(X, Y)
        assert match.log_similarity.shape == (2,)
        assert match.prediction_index.shape == match.similarity.shape == (2, 20)
        assert match.prediction_index.dtype == torch.int64
        assert int(match.prediction_index.min()) >= 0 and int(match.prediction_index.max()) < 30


def test_compiled_finite_check_raises_at_run_time() -> None:
    # Under torch.compile the check cannot read the values on the host: torch._assert_async raises.
    torch._dynamo.reset()
    compiled = torch.compile(contextual_loss, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="x contains NaN or infinite values"):
        compiled(X.masked_fill(X > 0.9, float("nan")), Y, engine="dense")


def test_compiled_sampling_with_a_generator_breaks_the_graph_and_equals_eager() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(contextual_loss, backend="aot_eager")  # not fullgraph: the documented break

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    want = contextual_loss(X, Y, max_points=12, generator=seeded(), engine="dense")
    torch.testing.assert_close(compiled(X, Y, max_points=12, generator=seeded(), engine="dense"), want)
