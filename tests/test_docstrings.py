"""Every public function and class documents its arguments, what it returns, and an example.

Public: in the ``__all__`` of a module of the public API, and defined there. Functions with
parameters have an ``Args:`` section, functions that return something a ``Returns:`` section,
classes ``Args:`` or ``Attributes:``, and every one an example (``>>>``; the examples run in
``test_doctests.py``). Exceptions need only say when they are raised.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

#: The modules of the public API (the engine documents its own entry points; see docs/engine.md).
MODULES = (
    "contextual_loss.functional",
    "contextual_loss.modules",
    "contextual_loss.explain",
    "contextual_loss.options",
    "contextual_loss.io",
    "contextual_loss.viz",
    "contextual_loss.sampling",
    "contextual_loss.features.compose",
    "contextual_loss.features.patches",
    "contextual_loss.features.vgg",
    "contextual_loss.features.weights",
)


def _public(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    found = []
    for name in module.__all__:
        obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module_name:
            found.append((f"{module_name}.{name}", obj))
    return found


CASES = [case for module in MODULES for case in _public(module)]


def _missing(obj: object) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return [] if doc else ["a docstring"]
    missing = [] if ">>>" in doc else ["an example (>>>)"]
    if inspect.isclass(obj):
        if "Args:" not in doc and "Attributes:" not in doc:
            missing.append("Args: or Attributes:")
        return missing
    signature = inspect.signature(obj)  # type: ignore[arg-type]
    if signature.parameters and "Args:" not in doc:
        missing.append("Args:")
    if signature.return_annotation not in (None, "None") and "Returns:" not in doc:
        missing.append("Returns:")
    return missing


@pytest.mark.parametrize(("name", "obj"), CASES, ids=[name for name, _ in CASES])
def test_public_docstrings_are_complete(name: str, obj: object) -> None:
    assert not _missing(obj), f"{name}: its docstring lacks {', '.join(_missing(obj))}"
