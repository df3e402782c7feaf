"""Regenerate package __init__.py files (docstring kept) so that each re-exports the union of its modules' __all__.

python tools/gen_inits.py [labelless.pkg ...]   # then: ruff format common/labelless
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "common" / "labelless"
EXEMPT = {"labelless", "labelless.fewshot", "labelless.resources"}
HEADER = "# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.\n"


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
    lines = [HEADER, f'"""{doc}"""\n', "\nfrom __future__ import annotations\n\n"]
    names = []
    for mod in sorted(init.parent.glob("*.py")):
        if mod.name == "__init__.py":
            continue
        al = module_all(mod)
        names += al
        if al:
            lines.append(f"from .{mod.stem} import ({', '.join(sorted(al))})\n")
    lines.append("\n__all__ = [\n" + "".join(f'    "{n}",\n' for n in names) + "]\n")
    new = "".join(lines)
    if new != init.read_text():
        init.write_text(new)
        print("rewrote", name)
