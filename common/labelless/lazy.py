# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Lazy package exports (PEP 562): the package ``__init__``s of labelless import a name from its module on first
access, so importing one module of a package (e.g. ``labelless.networks.encoders``) does not import its siblings."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], submodules: Sequence[str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a lazy package ``__init__``.

    Args:
        package: the package's ``__name__``.
        exports: exported name → the submodule (relative name) that defines it.
        submodules: the package's submodules and subpackages (``package.sub`` works without importing it first).
        names: the package's ``__all__``.

    Returns:
        ``(__getattr__, __dir__)``; an imported name is cached in the package's namespace.

    Examples::

        __getattr__, __dir__ = lazy_exports(__name__, {"read_volume": "readers"}, ("readers",), __all__)
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        elif name in submodules:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the PEP 562 hook
        return sorted(set(namespace) | set(names) | set(submodules))

    return __getattr__, __dir__
