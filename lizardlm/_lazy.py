"""Lazy package attributes (PEP 562): a package names what it exports without importing it, so
``import lizardlm`` and the CLI's ``--help`` do not pay for torch and transformers."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any


class _Package(types.ModuleType):
    """A package whose exports win over its submodules of the same name (``lizardlm.convert`` is the
    function even after the module ``lizardlm.convert`` was imported, as with eager imports)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and self.__dict__.get("_exports", {}).get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each name to the module defining it."""
    module = sys.modules[package]
    module.__class__ = _Package
    module._exports = exports

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *exports})

    return __getattr__, __dir__
