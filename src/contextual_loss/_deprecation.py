"""Old spellings of renamed or moved public names, kept for one release with a ``DeprecationWarning``.

A module whose names moved assigns ``__getattr__ = moved(__name__, {...})`` (PEP 562): looking up
an old name warns, naming the new place, and returns the object from there. ``from old import
name`` warns at the line that imports it.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved", "warn_renamed"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` 3: the caller's caller)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def moved(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that live elsewhere now.

    Args:
        module: the old module's ``__name__``.
        names: old name -> new location ``"package.module:name"``; ``"*"`` as the old name maps
            every other public name to the module given (``"package.module"``, same name there).

    Returns:
        The ``__getattr__`` function to assign in the old module.

    """

    def getattr_(name: str) -> Any:
        target = names.get(name)
        if target is None and "*" in names and not name.startswith("_"):
            target = f"{names['*']}:{name}"
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = target.partition(":")
        value = getattr(importlib.import_module(new_module), new_name)
        warn_renamed(f"{module}.{name}", f"{new_module}.{new_name}")
        return value

    return getattr_
