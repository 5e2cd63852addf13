"""The engines under torch.compile(fullgraph=True), torch.export, meta/fake tensors and torch.jit.trace.

Most compile tests use the ``aot_eager`` backend: it runs Dynamo (a graph break fails
``fullgraph=True``) and AOT autograd over fake tensors (the operators' fake kernels and autograd
formula), without Inductor's code generation; one test runs Inductor on the streaming engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import contextual_loss
from contextual_loss import engine, maths
from contextual_loss.engine.streaming import _ops
from contextual_loss.engine.types import SpatialTerm
from contextual_loss.options import ContextualOptions

ENGINES = ("dense", "streaming")
N, M, C = 40, 30, 5


def _sets(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, N, C, generator=gen, dtype=dtype)
    y = torch.randn(2, M, C, generator=gen, dtype=dtype)
    return maths.prepare_features(x, y, "cosine")


def _spatial(form):
    if form is None:
        return None
    gen = torch.Generator().manual_seed(1)
    return SpatialTerm(0.3, form, torch.rand(N, 2, generator=gen), torch.rand(M, 2, generator=gen))


def _loss_fn(name, form=None):
    options = ContextualOptions(band_width=0.3, engine=name, memory_budget=1000)
    spatial = _spatial(form)

    def loss(x, y):
        result = engine.evaluate(x, y, options, spatial)
        return -result.log_similarity + 0.0 * result.best.sum(-1) + 0.0 * result.prediction_index.sum(-1)

    return loss


def _values_and_grads(fn, x, y):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = fn(x, y)
    return (value.detach(), *torch.autograd.grad(value.sum(), (x, y)))


@pytest.mark.parametrize("form", [None, "released"])
@pytest.mark.parametrize("name", ENGINES)
def test_fullgraph_compile_matches_eager(name, form):
    torch._dynamo.reset()
    fn = _loss_fn(name, form)
    x, y = _sets()
    want = _values_and_grads(fn, x, y)
    got = _values_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), x, y)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


def test_inductor_compile_of_the_streaming_engine_matches_eager():
    torch._dynamo.reset()
    fn = _loss_fn("streaming")
    x, y = _sets()
    want = _values_and_grads(fn, x, y)
    # Without the on-disk caches: their keys do not cover a custom operator's schema, so an entry
    # compiled by another checkout of the library (another operator schema) would be reused.
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        got = _values_and_grads(torch.compile(fn, fullgraph=True), x, y)
    for g, w in zip(got, want, strict=True):  # Inductor fuses the logsumexp: float32 rounding differs
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_compiled_streaming_engine_runs_the_operator_not_the_strips():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    x, y = _sets()
    torch.compile(_loss_fn("streaming"), fullgraph=True, backend=backend)(x, y)
    code = graphs[0].code
    assert "streaming_forward" in code
    assert "matmul" not in code and "cdist" not in code  # the strips stay inside the operator


@pytest.mark.parametrize("name", ENGINES)
def test_export_matches_eager(name):
    fn = _loss_fn(name, "paper")

    class Loss(torch.nn.Module):
        def forward(self, x, y):
            return fn(x, y)

    x, y = _sets()
    program = torch.export.export(Loss(), (x, y))
    other_x, other_y = _sets(seed=3)
    for a, b in ((x, y), (other_x, other_y)):
        torch.testing.assert_close(program.module()(a, b), fn(a, b), rtol=0.0, atol=0.0)
    if name == "streaming":
        assert "contextual_loss.streaming_forward" in str(program.graph)


@pytest.mark.parametrize("name", ENGINES)
def test_meta_tensors_give_meta_results(name):
    x, y = (t.to("meta") for t in _sets(torch.float64))
    result = engine.evaluate(x, y, ContextualOptions(engine=name), _spatial("released"))
    assert [t.device.type for t in result] == ["meta"] * 3
    assert result.log_similarity.shape == (2,) and result.log_similarity.dtype == torch.float64
    assert (
        result.best.shape == (2, M)
        and result.prediction_index.shape == (2, M)
        and result.prediction_index.dtype == torch.long
    )


def test_fake_tensors_give_fake_results_of_the_right_shape():
    x, y = _sets(torch.float16)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx, fy = mode.from_tensor(x), mode.from_tensor(y)
        result = engine.evaluate(fx, fy, ContextualOptions(engine="streaming"))
    assert result.log_similarity.shape == (2,) and result.log_similarity.dtype == torch.float32  # computed in float32
    assert result.best.shape == (2, M) and result.prediction_index.dtype == torch.long


def test_operators_pass_opcheck():
    # Schema, autograd registration and fake kernels (AOT dispatch is what the compile tests run).
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    x, y = (t.double().requires_grad_(True) for t in _sets())
    pos_x, pos_y = (p.double() for p in (_spatial("released").pos_x, _spatial("released").pos_y))
    scalars = ("cosine", 0.3, 1e-5, 0.3, "released", 2**20, "auto")  # one strip per image: checks run per op
    forward_args = (x, y, pos_x, pos_y, *scalars, True, False)
    assert set(torch.library.opcheck(_ops.streaming_forward, forward_args, test_utils=checks).values()) == {"SUCCESS"}
    saved = [t.detach() for t in _ops.streaming_forward(*forward_args)]
    grad = torch.rand(2, M, dtype=torch.float64)
    backward_args = (grad, x.detach(), y.detach(), pos_x, pos_y, *saved, *scalars)
    assert set(torch.library.opcheck(_ops.streaming_backward, backward_args, test_utils=checks).values()) == {"SUCCESS"}


def test_jit_trace_of_the_streaming_engine_gives_the_right_number():
    fn = _loss_fn("streaming")
    x, y = _sets()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings (shape checks) and trace's own deprecation notice
        traced = torch.jit.trace(fn, (x, y))
    for a, b in (_sets(), _sets(seed=5)):
        torch.testing.assert_close(traced(a, b), fn(a, b), rtol=0.0, atol=0.0)
    assert torch.isfinite(traced(x, y)).all()
    # Traced without gradients, the operator keeps no row statistics: differentiating says so.
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="kept no row statistics"):
        traced(xg, y).sum().backward()


def test_progress_callbacks_are_refused_inside_compile():
    torch._dynamo.reset()
    options = ContextualOptions(engine="streaming")

    def fn(x, y):
        return engine.evaluate(x, y, options, progress=lambda done, total: None).log_similarity

    x, y = _sets()
    with pytest.raises(Exception, match="progress callbacks of the streaming engine are not supported"):
        torch.compile(fn, fullgraph=True, backend="aot_eager")(x, y)


def test_importing_the_engine_does_not_import_dynamo():
    # Registering the operators and marking the compile-time constants must not import
    # torch._dynamo (about 2 s) for everyone who imports the package.
    code = "import sys, contextual_loss.engine; print('torch._dynamo' in sys.modules)"
    src = str(Path(contextual_loss.__file__).resolve().parents[1])  # this checkout's package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "False"
