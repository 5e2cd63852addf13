"""Every ``Examples:`` block of the package's docstrings runs as a doctest (CI runs them all).

One test per module, so a failure names the module; the examples run offline (the hub cache is an
empty folder, see ``conftest.py``), on the CPU, with a seeded generator. ``# doctest: +SKIP`` marks
the few examples that need a file of the reader's.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import contextual_loss

#: Modules not imported here: the entry point runs the command line on import.
SKIPPED = {"contextual_loss.__main__"}

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(contextual_loss.__path__, prefix="contextual_loss.")
    if info.name not in SKIPPED
)


#: Modules whose public functions and classes all carry examples (checked to run at least one).
WITH_EXAMPLES = {
    "contextual_loss.explain",
    "contextual_loss.functional",
    "contextual_loss.modules",
    "contextual_loss.options",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    torch.manual_seed(0)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures: list[str] = []
    for test in finder.find(module, globs=dict(vars(module))):
        runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
    assert runner.tries > 0 or name not in WITH_EXAMPLES
