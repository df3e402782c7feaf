# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The package's shape rules (docs/architecture.md): the export rule of every ``__init__.py``, one suffix table.

The layer rules themselves are import-linter contracts (``lint-imports`` in .ci/run).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import labelless

ROOT = Path(labelless.__file__).resolve().parent
#: packages outside the export rule: the root and labelless.fewshot hold packages only; resources has its code inline
EXEMPT = {"labelless", "labelless.fewshot", "labelless.resources"}


def _packages() -> list[str]:
    out = []
    for init in sorted(ROOT.rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT.parent)
        name = ".".join(rel.parts)
        if name not in EXEMPT:
            out.append(name)
    return out


def _module_all(path: Path) -> list[str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError(f"{path} has no __all__")


def test_every_module_declares_all():
    missing = []
    for path in ROOT.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        try:
            _module_all(path)
        except AssertionError:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without __all__: {missing}"


@pytest.mark.parametrize("package", _packages())
def test_init_reexports_exactly_its_modules_all(package: str):
    pkg = importlib.import_module(package)
    folder = Path(pkg.__file__).parent
    expected: list[str] = []
    for mod in sorted(folder.glob("*.py")):
        if mod.name != "__init__.py":
            expected += _module_all(mod)
    assert sorted(pkg.__all__) == sorted(expected), f"{package}.__all__ is not the union of its modules' __all__"
    assert len(set(expected)) == len(expected), f"{package}: two modules export the same name"
    for name in expected:
        assert hasattr(pkg, name), f"{package} does not re-export {name}"


def test_one_suffix_table():
    """File-suffix tuples live in labelless/io/suffixes.py only."""
    pattern = re.compile(r"""\(\s*["']\.(png|jpg|jpeg|nii|gif|nrrd|mha|tif)["']""")
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if p.name != "suffixes.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"suffix tables outside labelless/io/suffixes.py: {offenders}"
