"""Lazy package exports: a package's ``__init__`` names what it exports without importing it,
so importing a light submodule (the scheduler, the KV manager, the token mask) does not load
torch or a grammar library through the package."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package``: ``exports`` maps a name to the module
    (absolute) that defines it, imported on first use and then cached on the package.
    Raises AttributeError for any other name, as a module does."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
