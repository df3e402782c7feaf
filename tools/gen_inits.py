"""Regenerate package __init__.py files (docstring kept) so that each re-exports the union of its modules' __all__.

python tools/gen_inits.py [labelless.pkg ...]   # then: ruff format common/labelless; ruff check --fix common
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "common" / "labelless"
EXEMPT = {"labelless", "labelless.fewshot", "labelless.resources"}
HEADER = "# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.\n"


# Package __init__s are lazy (PEP 562): a name is imported from its module on first access, so importing one module
# of a package (e.g. labelless.networks.encoders) does not import its siblings (and MONAI's layers with them).
LAZY_HEAD = """
from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
"""
LAZY_TAIL = """
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
"""


def module_all(path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]
    raise SystemExit(f"{path} has no __all__")


for init in sorted(ROOT.rglob("__init__.py")):
    name = ".".join(init.parent.relative_to(ROOT.parent).parts)
    if name in EXEMPT or (len(sys.argv) > 1 and name not in sys.argv[1:]):
        continue
    doc = ast.get_docstring(ast.parse(init.read_text()), clean=False) or f"{name}."
    lines = [HEADER, f'"""{doc}"""\n', LAZY_HEAD]
    names, exports, submodules = [], [], []
    for mod in sorted(init.parent.glob("*.py")):
        if mod.name == "__init__.py":
            continue
        submodules.append(mod.stem)
        al = module_all(mod)
        names += al
        exports += [(n, mod.stem) for n in al]
        if al:
            lines.append(f"    from .{mod.stem} import ({', '.join(sorted(al))})\n")
    submodules += sorted(p.parent.name for p in init.parent.glob("*/__init__.py"))
    lines.append("\n_EXPORTS = {\n" + "".join(f'    "{n}": "{m}",\n' for n, m in exports) + "}\n")
    lines.append("_SUBMODULES = (" + "".join(f'"{m}", ' for m in submodules) + ")\n")
    lines.append("\n__all__ = [\n" + "".join(f'    "{n}",\n' for n in names) + "]\n")
    lines.append(LAZY_TAIL)
    new = "".join(lines)
    if new != init.read_text():
        init.write_text(new)
        print("rewrote", name)
