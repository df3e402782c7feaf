# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Standalone bundles: ``labelless bundle pack <name> --out <dir|zip>``.

The bundles of this repository reach the package through dotted names (``"_target_": "labelless.networks..."``) and
need ``labelless`` installed. A packed bundle does not: it carries a copy of the package under ``scripts/labelless/``
and its configs reach every labelless name through one config item, ``labelless_pkg``: the item ``labelless_loader``
runs ``scripts/labelless_loader.py`` (``runpy.run_path``) and ``labelless_pkg`` calls its ``load_labelless()``, which
puts ``<bundle_root>/scripts`` first on ``sys.path`` and imports the modules the configs use. Config import
statements (``"$import labelless..."``) are dropped, because MONAI evaluates them before any item is resolved, and
``python -m monai.bundle run`` puts the bundle folder on ``sys.path`` only after ``initialize``; going through
``@labelless_pkg`` makes the ordering explicit, from any directory and with the Model Zoo's ``sys.path`` alike::

    "_target_": "labelless.networks.fewshot.build_fewshot_segmentor"     (in-repo)
    "_target_": "$@labelless_pkg.networks.fewshot.build_fewshot_segmentor" (packed)

``required_packages_version`` of the packed ``metadata.json`` lists every third-party distribution the bundle needs
besides MONAI, PyTorch and NumPy (which have their own keys), pinned to the versions installed here: the imports of
the labelless modules its configs reach (followed through the package), the optional MONAI readers and handlers they
use, and ``fire`` for ``python -m monai.bundle run``. :func:`bundle_requirements` computes it.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import labelless
from labelless.errors import ConfigError, DataError
from labelless.paths import LOCK_NAME, check_output_outside_inputs

__all__ = [
    "BundleCommands",
    "LOADER_ID",
    "LOADER_NAME",
    "PKG_ID",
    "bundle_requirements",
    "find_bundle",
    "pack_bundle",
    "route_config",
]

logger = logging.getLogger(__name__)

#: the config id through which a packed config reaches the vendored package
PKG_ID = "labelless_pkg"
#: the loader written beside the vendored package (its presence marks a folder written by :func:`pack_bundle`)
LOADER_NAME = "labelless_loader.py"
#: the config id of the loader's namespace (MONAI parses any "$" expression containing the word "import" as Python
#: before it substitutes "@" references, so the loader is run through a "_target_" instead of an expression)
LOADER_ID = "labelless_loader"
_LOADER_ITEMS = {
    LOADER_ID: {"_target_": "runpy.run_path", "path_name": f"$@bundle_root + '/scripts/{LOADER_NAME}'"},
    PKG_ID: f"$@{LOADER_ID}['load_labelless']()",
}

#: what the bundle folder holds that a packed copy keeps (configs are rewritten, the rest is copied)
_BUNDLE_ITEMS = ("configs", "docs", "models", "LICENSE")
_LARGE_FILES = ("large_files.yml", "large_files.yaml", "large_files.json")
#: the in-repo metadata's install note and its replacement in a packed bundle
_REPO_INSTALL_NOTE = "Requires the labelless package (pip install -e . at the repository root)."
_PACKED_NOTE = "The labelless package this bundle uses is vendored under scripts/ (run with --bundle_root)."
#: distributions with their own metadata keys (monai_version, pytorch_version, numpy_version)
_OWN_KEYS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
#: imports (module or module.name prefixes) that need a distribution their top-level name does not show
_IMPLIED = {
    "torch.utils.tensorboard": "tensorboard",
    "monai.data.NibabelReader": "nibabel",
    "monai.data.NibabelWriter": "nibabel",
    "monai.data.PILReader": "pillow",
    "ignite.handlers.ProgressBar": "tqdm",
    "monai.handlers.TensorBoardStatsHandler": "tensorboard",
}
#: MONAI short ``_target_`` names of the configs that need an optional distribution
_CONFIG_TARGETS = {"TensorBoardStatsHandler": "tensorboard", "StatsHandler": "pytorch-ignite"}
#: ``python -m monai.bundle run`` is a fire command line
_ALWAYS = ("fire",)

_IMPORT_RE = re.compile(r"^\$\s*(import|from)\s+labelless(\s|\.|$)")
_REF_RE = re.compile(r"(?<![\w.@#:'\"/\\])labelless((?:\.[A-Za-z_]\w*)+)")
_LEFTOVER_RE = re.compile(r"(?<![\w@/\\.-])labelless\.[A-Za-z_]")

_LOADER_TEMPLATE = '''\
# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Loads the labelless package vendored beside this file. Written by ``labelless bundle pack``; do not edit.

The bundle's configs reach every labelless name through the config item ``{pkg_id}``: the item ``{loader_id}`` runs
this file with ``runpy.run_path`` and ``{pkg_id}`` calls :func:`load_labelless`: this folder goes first on ``sys.path``
and the modules the configs use are imported, so the bundle runs with MONAI and the packages of
``required_packages_version`` only, from any directory (pass ``--bundle_root <this bundle>``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

__all__ = ["LABELLESS_VERSION", "MODULES", "load_labelless"]

#: version of the vendored copy
LABELLESS_VERSION = {version!r}
#: the labelless modules the configs of this bundle use
MODULES = {modules}


def load_labelless() -> ModuleType:
    """Put this folder first on ``sys.path``, import ``labelless`` and :data:`MODULES`; return the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    pkg = importlib.import_module("labelless")
    origin = os.path.dirname(os.path.abspath(pkg.__file__))
    if origin != os.path.join(here, "labelless"):
        logging.getLogger(__name__).warning(
            "labelless was already imported from %s; this bundle uses it instead of its copy in %s", origin, here
        )
    for name in MODULES:
        importlib.import_module(name)
    return pkg
'''

_SCRIPTS_INIT = '''\
# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Code of this bundle: the labelless package (``labelless/``, version {version}) and its loader
(``{loader}``), written by ``labelless bundle pack``. The configs import nothing from here directly: the config item
``{pkg_id}`` loads the package (see ``{loader}``)."""
'''


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _repo_bundles_dir() -> Path | None:
    """``<repo>/bundles`` when labelless runs from a source checkout (editable install), else ``None``."""
    cand = Path(labelless.__file__).resolve().parents[2] / "bundles"
    return cand if cand.is_dir() else None


def find_bundle(name: str | os.PathLike) -> Path:
    """The bundle folder of ``name``: a folder holding ``configs/metadata.json``, or the name of a bundle of the
    repository's ``bundles/``.

    Raises:
        ConfigError: neither (the message lists the repository's bundles).
    """
    path = Path(name).expanduser()
    if (path / "configs" / "metadata.json").is_file():
        return path.resolve()
    repo = _repo_bundles_dir()
    if repo is not None and (repo / str(name) / "configs" / "metadata.json").is_file():
        return (repo / str(name)).resolve()
    known = sorted(p.name for p in repo.iterdir() if (p / "configs").is_dir()) if repo is not None else []
    hint = f"; bundles of this repository: {', '.join(known)}" if known else ""
    raise ConfigError(f"bundle {name} not found: give a bundle folder (with configs/metadata.json) or a name{hint}")


# ---------------------------------------------------------------------------------------------------- configs


def _module_file(pkg_dir: Path, module: str) -> Path | None:
    """The source file of the labelless module ``module`` inside ``pkg_dir``, or ``None``."""
    parts = module.split(".")[1:]
    base = pkg_dir.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if parts and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _longest_module(pkg_dir: Path, dotted: str) -> str | None:
    """The longest prefix of ``dotted`` (``labelless.a.b.Name``) that is a labelless module."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if _module_file(pkg_dir, cand) is not None:
            return cand
    return None


def _module_names(path: Path) -> frozenset[str]:
    """Names a module defines at top level (also under ``if``/``try``), its imports and its ``__all__``."""
    return _names_of(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _names_of(path: Path, mtime_ns: int) -> frozenset[str]:
    """:func:`_module_names` of one version of a file (``mtime_ns`` keys the cache)."""
    names: set[str] = set()
    body = list(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "finalbody", []) + getattr(node, "handlers", [])
        elif isinstance(node, ast.ExceptHandler):
            body += node.body
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in getattr(node, "targets", [])):
                names |= {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
    return frozenset(names)


def route_config(config: Any, pkg_dir: Path, source: str = "config") -> tuple[Any, set[str]]:
    """A copy of the parsed JSON ``config`` whose labelless names all go through ``@labelless_pkg``.

    ``"_target_": "labelless.x.Y"`` becomes ``"$@labelless_pkg.x.Y"``, ``labelless.x.f(...)`` in ``$`` expressions
    becomes ``@labelless_pkg.x.f(...)``, ``"$import labelless..."`` items are dropped and, when anything was routed,
    the items ``labelless_loader`` and ``labelless_pkg`` are added after ``imports`` (first when there is none).
    Plain strings (descriptions) are left alone.

    Args:
        config: the parsed config.
        pkg_dir: the labelless package folder (to tell modules from names).
        source: the file, for the messages.

    Returns:
        ``(new_config, modules)``: the rewritten config and the labelless modules it uses.

    Raises:
        DataError: a labelless name that cannot be routed (``from labelless ... import``, a module path in quotes),
            or the config already defines ``labelless_loader`` or ``labelless_pkg``.
    """
    modules: set[str] = set()

    def _sub(match: re.Match) -> str:
        dotted = "labelless" + match.group(1)
        mod = _longest_module(pkg_dir, dotted)
        rest = dotted[len(mod) + 1 :].split(".")[0] if mod is not None else ""
        if mod is None or (rest and rest not in _module_names(_module_file(pkg_dir, mod))):
            raise DataError(source, f"{dotted} is not a module or name of the labelless package")
        modules.add(mod)
        return f"@{PKG_ID}{match.group(1)}"

    def _expr(value: str, where: str) -> str:
        new = _REF_RE.sub(_sub, value)
        if _LEFTOVER_RE.search(new.replace(f"@{PKG_ID}.", "")):
            raise DataError(source, f"{where}: cannot route the labelless reference in {value!r}")
        return new

    def _walk(node: Any, where: str) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                sub = f"{where}::{k}" if where else str(k)
                if k == "_target_" and isinstance(v, str) and v.startswith("labelless."):
                    out[k] = _expr("$" + v, sub)
                else:
                    out[k] = _walk(v, sub)
            return out
        if isinstance(node, list):
            items = []
            for i, v in enumerate(node):
                if isinstance(v, str) and _IMPORT_RE.match(v):
                    if not v.lstrip("$ ").startswith("import ") or " as " in v:
                        raise DataError(source, f"{where}: {v!r}: use dotted labelless names (no 'from', no 'as')")
                    continue
                items.append(_walk(v, f"{where}::{i}"))
            return items
        if isinstance(node, str) and node.startswith("$"):
            if _IMPORT_RE.match(node):
                raise DataError(source, f"{where}: import statement {node!r} outside a list of imports")
            return _expr(node, where)
        return node

    new = _walk(config, "")
    routed = json.dumps(new) != json.dumps(config)
    if isinstance(new, dict) and routed:
        for key in _LOADER_ITEMS:
            if key in config:
                raise DataError(source, f"the config already defines {key!r}, an id the packed configs need")
        ordered: dict[str, Any] = {} if "imports" in new else dict(_LOADER_ITEMS)
        for k, v in new.items():
            ordered[k] = v
            if k == "imports":
                ordered.update(_LOADER_ITEMS)
        new = ordered
        modules.add("labelless")
    return new, modules


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read the config ({exc})") from exc


def _config_targets(config: Any) -> set[str]:
    """Every string ``_target_`` of a parsed config."""
    found: set[str] = set()
    if isinstance(config, Mapping):
        for k, v in config.items():
            if k == "_target_" and isinstance(v, str):
                found.add(v)
            found |= _config_targets(v)
    elif isinstance(config, list):
        for v in config:
            found |= _config_targets(v)
    return found


# ---------------------------------------------------------------------------------------------------- packages


@functools.lru_cache(maxsize=512)
def _imports_of(path: Path, mtime_ns: int) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """``(level, module, names)`` of every import statement of a source file (``mtime_ns`` keys the cache)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
    return tuple(found)


def _labelless_closure(pkg_dir: Path, roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """The labelless modules reachable from ``roots`` by imports (module level and inside functions alike) and the
    non-labelless names they import (``module`` and ``module.name`` for ``from module import name``)."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = list(roots)
    while todo:
        mod = todo.pop()
        path = _module_file(pkg_dir, mod)
        if mod in seen or path is None:
            continue
        seen.add(mod)
        if "." in mod:
            todo.append(mod.rsplit(".", 1)[0])
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for level, module, imported in _imports_of(path, path.stat().st_mtime_ns):
            base = module
            if level:
                anchor = package
                for _ in range(level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{module}" if module else anchor
            for name in [base] + [f"{base}.{n}" for n in imported]:
                if name == "labelless" or name.startswith("labelless."):
                    found = _longest_module(pkg_dir, name)
                    if found is not None:
                        todo.append(found)
                elif name.split(".")[0] not in sys.stdlib_module_names and name != "__future__":
                    external.add(name)
    return seen, external


@functools.lru_cache(maxsize=1)
def _providers() -> Mapping[str, list[str]]:
    """Top-level module → the installed distributions providing it (read once per process)."""
    from importlib import metadata

    return metadata.packages_distributions()


def _installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def bundle_requirements(
    bundle_dir: str | os.PathLike, pkg_dir: str | os.PathLike | None = None
) -> tuple[dict[str, str], list[str]]:
    """``required_packages_version`` of a bundle: every third-party distribution it needs besides MONAI, PyTorch and
    NumPy, pinned to the installed version.

    The distributions are those of the imports of the labelless modules its configs reach (followed through the
    package, imports inside functions included), the optional MONAI readers and handlers those modules and the
    configs use (``NibabelReader`` → nibabel, ``PILReader`` → pillow, TensorBoard → tensorboard) and ``fire``
    (``python -m monai.bundle run``). Names keep the spelling of the bundle's metadata where it has them, else of
    the import when it is the distribution's name (``SimpleITK``).

    Args:
        bundle_dir: the bundle folder.
        pkg_dir: the labelless package folder (default: the one running).

    Returns:
        ``(pins, unpinned)``: ``{distribution: version}`` sorted by name, and the imported top-level modules that no
        installed distribution provides (optional imports such as ``pydensecrf``).
    """
    from importlib import metadata

    bundle_dir = Path(bundle_dir)
    pkg_dir = Path(pkg_dir) if pkg_dir is not None else Path(labelless.__file__).resolve().parent
    roots: set[str] = {"labelless"}
    targets: set[str] = set()
    for path in sorted((bundle_dir / "configs").glob("*.json")):
        if path.name == "metadata.json":
            continue
        config = _read_json(path)
        roots |= route_config(config, pkg_dir, str(path))[1]
        targets |= _config_targets(config)
    _, external = _labelless_closure(pkg_dir, roots)

    providers = _providers()
    wanted: set[str] = set(_ALWAYS)
    unpinned: set[str] = set()
    spelled: dict[str, str] = {}
    for name in external:
        top = name.split(".")[0]
        for dist in providers.get(top, []):
            wanted.add(dist)
            spelled.setdefault(_norm(dist), top if _norm(top) == _norm(dist) else dist)
        if top not in providers:
            unpinned.add(top)
        for prefix, dist in _IMPLIED.items():
            if name == prefix or name.startswith(prefix + "."):
                wanted.add(dist)
    for target in targets:
        if target in _CONFIG_TARGETS:
            wanted.add(_CONFIG_TARGETS[target])

    meta = _read_json(bundle_dir / "configs" / "metadata.json")
    spelled.update({_norm(k): k for k in meta.get("required_packages_version", {})})
    pins: dict[str, str] = {}
    for dist in {_norm(d) for d in wanted} - {"labelless"} - set(_OWN_KEYS):
        version = _installed_version(dist)
        if version is None:
            unpinned.add(dist)
            continue
        pins[spelled.get(dist) or metadata.metadata(dist)["Name"]] = version
    return dict(sorted(pins.items(), key=lambda kv: kv[0].lower())), sorted(unpinned)


# ---------------------------------------------------------------------------------------------------- pack


def _ignore(folder: str, names: list[str]) -> set[str]:
    """``shutil.copytree`` filter: caches, compiled files, hidden files (locks) and egg-info folders."""
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo", ".egg-info")) or n.startswith(".")}


def _is_packed_dir(path: Path) -> bool:
    return (path / "scripts" / LOADER_NAME).is_file() and (path / "configs" / "metadata.json").is_file()


def _is_packed_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(f"/scripts/{LOADER_NAME}") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _check_out(out: Path, bundle_dir: Path, pkg_dir: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` inside the inputs (the bundle, the repository's ``bundles/``, the package) and an existing
    target that this command did not write (or any existing target without ``--overwrite``)."""
    inputs = {"the bundle folder": bundle_dir, "the labelless package": pkg_dir}
    repo = _repo_bundles_dir()
    if repo is not None:
        inputs["the repository's bundles folder"] = repo
    for what, folder in inputs.items():
        try:  # check_output_outside_inputs takes files and checks their folders
            check_output_outside_inputs(out, [folder / LOCK_NAME])
        except ConfigError:
            raise ConfigError(f"--out {out} lies inside {what} {folder}; choose a path outside it") from None
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a symbolic link; give the real path")
    if not out.exists():
        return
    is_zip = out.suffix.lower() == ".zip"
    if not is_zip and out.is_dir() and not any(out.iterdir()):
        return
    ours = _is_packed_zip(out) if is_zip else out.is_dir() and _is_packed_dir(out)
    if not ours:
        raise ConfigError(f"--out {out} exists and was not written by 'labelless bundle pack'; choose a new path")
    if not overwrite:
        raise ConfigError(f"--out {out} exists (a packed bundle); pass --overwrite to replace it")


def _write_bundle(bundle_dir: Path, dest: Path, pkg_dir: Path) -> dict[str, Any]:
    """Write the packed copy of ``bundle_dir`` into the new folder ``dest``; return a summary."""
    if not (bundle_dir / "LICENSE").is_file():
        raise DataError(bundle_dir / "LICENSE", "missing (a bundle must ship its licence)")
    dest.mkdir()
    shutil.copy2(bundle_dir / "LICENSE", dest / "LICENSE")
    for name in ("docs", "models"):
        if (bundle_dir / name).is_dir():
            shutil.copytree(bundle_dir / name, dest / name, ignore=_ignore)
    for name in _LARGE_FILES:
        if (bundle_dir / name).is_file():
            shutil.copy2(bundle_dir / name, dest / name)

    (dest / "configs").mkdir()
    modules: set[str] = set()
    for path in sorted((bundle_dir / "configs").iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix != ".json" or path.name == "metadata.json":
            shutil.copy2(path, dest / "configs" / path.name)
            continue
        new, used = route_config(_read_json(path), pkg_dir, str(path))
        modules |= used
        (dest / "configs" / path.name).write_text(json.dumps(new, indent=4) + "\n", encoding="utf-8")

    pins, unpinned = bundle_requirements(bundle_dir, pkg_dir)
    meta = _read_json(bundle_dir / "configs" / "metadata.json")
    meta["required_packages_version"] = pins
    if isinstance(meta.get("description"), str):  # the packed copy carries the package under scripts/
        meta["description"] = meta["description"].replace(_REPO_INSTALL_NOTE, _PACKED_NOTE)
    (dest / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")
    for dist, key in _OWN_KEYS.items():
        have = _installed_version(dist)
        if have is not None and meta.get(key) != have.split("+")[0]:
            logger.warning("%s is %s in %s but %s is installed here", key, meta.get(key), bundle_dir.name, have)
    if unpinned:
        logger.info("optional imports not installed here, so not listed: %s", ", ".join(unpinned))

    scripts = dest / "scripts"
    scripts.mkdir()
    version = getattr(labelless, "__version__", "?")
    shutil.copytree(pkg_dir, scripts / "labelless", ignore=_ignore)
    listed = "(\n" + "".join(f"    {m!r},\n" for m in sorted(modules)) + ")"
    (scripts / LOADER_NAME).write_text(
        _LOADER_TEMPLATE.format(pkg_id=PKG_ID, loader_id=LOADER_ID, version=version, modules=listed), encoding="utf-8"
    )
    (scripts / "__init__.py").write_text(
        _SCRIPTS_INIT.format(pkg_id=PKG_ID, version=version, loader=LOADER_NAME), encoding="utf-8"
    )
    return {"bundle": bundle_dir.name, "packages": pins, "modules": sorted(modules), "unpinned": unpinned}


def _zip_folder(folder: Path, zip_path: Path, top: str) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")


def pack_bundle(
    bundle: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Write a standalone copy of a bundle: it runs with MONAI and the packages its metadata lists, without labelless
    installed.

    The copy holds ``LICENSE``, ``configs/`` (labelless names routed through ``labelless_pkg``, see
    :func:`route_config`; ``metadata.json`` with ``required_packages_version`` from :func:`bundle_requirements`),
    ``docs/``, ``models/``, ``large_files.yml`` when the bundle has one, and ``scripts/`` (the package and its
    loader). It is staged beside ``out`` and renamed into place, so ``out`` is either complete or untouched.

    Args:
        bundle: a bundle folder or the name of one of the repository's bundles.
        out: the packed bundle folder, or a ``.zip`` file (whose entries sit under ``<bundle name>/``). Must lie
            outside the bundle, the repository's ``bundles/`` and the package.
        overwrite: replace an existing ``out`` that this function wrote.

    Returns:
        ``(out, summary)``; the summary has ``bundle`` (its name), ``packages`` (the pins), ``modules`` (the
        labelless modules the configs use) and ``unpinned`` (optional imports not installed here).

    Raises:
        ConfigError: the bundle is unknown or ``out`` is not acceptable (named).
        DataError: a config cannot be read or routed (the file is named).
    """
    bundle_dir = find_bundle(bundle)
    pkg_dir = Path(labelless.__file__).resolve().parent
    out_path = Path(out).expanduser().absolute()
    _check_out(out_path, bundle_dir, pkg_dir, overwrite)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write into {out_path.parent} ({exc.strerror or exc})") from exc
    try:
        summary = _write_bundle(bundle_dir, stage / bundle_dir.name, pkg_dir)
        if out_path.suffix.lower() == ".zip":
            _zip_folder(stage / bundle_dir.name, stage / "bundle.zip", bundle_dir.name)
            os.replace(stage / "bundle.zip", out_path)
        else:
            if out_path.exists():  # an empty folder, or a pack being replaced (checked above)
                os.replace(out_path, stage / "previous")
            os.replace(stage / bundle_dir.name, out_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_path, summary


class BundleCommands:
    """Bundle tools: ``labelless bundle pack <name> --out <dir|zip>``."""

    def pack(self, name: str, out: str, overwrite: bool = False) -> str:
        """Write a standalone copy of a bundle that runs without labelless installed (Model Zoo layout).

        The copy vendors the labelless package under ``scripts/labelless/``, routes every labelless name of its
        configs through the config item ``labelless_pkg`` and pins ``required_packages_version`` of its
        ``metadata.json`` to the packages installed here. Run it with ``python -m monai.bundle run --config_file
        <out>/configs/inference.json --bundle_root <out>``.

        Args:
            name: a bundle of the repository's bundles/ (e.g. ssl_alpnet_fewshot_segmentation) or a bundle folder.
            out: the new bundle folder, or a .zip file; outside the bundle and the repository's bundles/.
            overwrite: replace an existing bundle (folder or zip) written by this command.
        """
        from labelless.utils import as_bool

        path, summary = pack_bundle(name, out, overwrite=as_bool(overwrite, "overwrite"))
        pins = ", ".join(f"{k}=={v}" for k, v in summary["packages"].items())
        return f"packed {summary['bundle']} into {path}\nrequired_packages_version: {pins}"

    def check(self, *names: str, checks: str | None = None) -> str:
        """Run the Model Zoo's bundle checks (``labelless.zoo``) offline and print a bundle × check table.

        Args:
            names: bundles of the repository's bundles/ or bundle folders (default: every bundle of bundles/).
            checks: comma-separated subset of the checks (files, version, metadata, large_files, readme,
                properties, load, net_in_out, torchscript).

        Raises:
            DataError: when a check fails (the table is printed first).
        """
        from labelless.zoo import format_check_table, run_zoo_checks

        if not names:
            repo = _repo_bundles_dir()
            if repo is None:
                raise ConfigError("give one or more bundle folders (no repository bundles/ folder here)")
            names = tuple(sorted(p.name for p in repo.iterdir() if (p / "configs" / "metadata.json").is_file()))
        if checks is None:
            wanted = None
        else:  # fire turns "a,b" into a tuple
            items = checks if isinstance(checks, (list, tuple)) else str(checks).split(",")
            wanted = [str(c).strip() for c in items if str(c).strip()]
        results = {}
        for name in names:
            path = find_bundle(name)
            results[path.name] = run_zoo_checks(path, wanted)
        table = format_check_table(results)
        if any(not r["ok"] for res in results.values() for r in res.values()):
            print(table)
            raise DataError(", ".join(results), "Model Zoo checks failed (see the table above)")
        return table
