# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Model Zoo's bundle checks, run offline on one bundle folder, and the bundle's ``large_files.yml``.

The steps follow the Zoo's own CI (``ci/verify_bundle.py`` of Project-MONAI/model-zoo, "full" mode):

- ``files``: the necessary files (``configs/metadata.json``, ``LICENSE``), the preferred ones (``models/model.pt``,
  ``configs/inference.json``) and the ones this project adds (the other workflow configs, ``logging.conf``,
  ``docs/README.md``, ``docs/data_license.txt``, ``large_files.yml``);
- ``version``: ``version`` and ``changelog`` present, the version is in the changelog;
- ``metadata``: ``verify_metadata`` against the Zoo schema (the vendored copy: nothing is downloaded);
- ``large_files``: every ``models/*`` weight file is listed with its md5, and the md5 matches;
- ``properties``: ``check_properties()`` of the inference workflow is empty;
- ``load``: building each workflow (train, evaluate = train + evaluate, inference) and ``initialize()`` write
  nothing, in the caller's directory or in the bundle;
- ``net_in_out``: ``verify_net_in_out --net_id network_def`` on ``inference.json`` with the metadata's
  ``network_data_format``;
- ``readme``: ``docs/README.md`` has the Zoo's sections (:data:`README_SECTIONS`, as ``##`` headings);
- ``torchscript``: ``ckpt_export --net_id network_def`` with ``models/model.pt``; the exported module loads. Unlike
  the Zoo CI, which writes ``models/verify_model.ts`` into the bundle, the file goes to a temporary folder.

``labelless bundle check <name or folder>`` prints the table; ``tests/test_zoo_checks.py`` runs it on every bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from labelless.errors import ConfigError, DataError

__all__ = [
    "ZOO_CHECKS",
    "NECESSARY_FILES",
    "PREFERRED_FILES",
    "PROJECT_FILES",
    "README_SECTIONS",
    "WEIGHT_SUFFIXES",
    "md5sum",
    "large_file_entries",
    "write_large_files",
    "read_large_files",
    "run_zoo_checks",
    "format_check_table",
]

#: the Zoo CI's lists (ci/verify_bundle.py)
NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
PREFERRED_FILES = ("models/model.pt", "configs/inference.json")
#: what every labelless bundle also has
PROJECT_FILES = (
    "configs/train.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "large_files.yml",
)
#: the sections of a Model Zoo bundle README, in order
README_SECTIONS = (
    "Model overview",
    "Data",
    "Training configuration",
    "Input",
    "Output",
    "Performance",
    "MONAI bundle commands",
    "References",
    "License",
)
#: files of ``models/`` listed in ``large_files.yml``
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".onnx")
LARGE_FILES = "large_files.yml"


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The md5 hex digest of a file (the Zoo's ``hash_type: md5``)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weights(bundle: Path) -> list[Path]:
    models = bundle / "models"
    return sorted(p for p in models.glob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES) if models.is_dir() else []


def large_file_entries(bundle: str | os.PathLike) -> list[dict[str, str]]:
    """The ``large_files`` entries of a bundle folder: one per ``models/*`` weight file, with its md5."""
    root = Path(bundle)
    return [{"path": p.relative_to(root).as_posix(), "hash_val": md5sum(p), "hash_type": "md5"} for p in _weights(root)]


def write_large_files(bundle: str | os.PathLike, url_base: str | None = None) -> Path:
    """Write ``<bundle>/large_files.yml`` (atomically) for the bundle's current weight files.

    Args:
        bundle: the bundle folder.
        url_base: where the files are published (``<url_base>/<bundle name>/models/model.pt``). The weights ship
            inside the bundle, so without it the entries carry no ``url`` and a comment says so; a Zoo release step
            that uploads them adds the URLs.
    """
    from labelless.utils import atomic_path

    root = Path(bundle)
    lines = [
        "# Weight files of this bundle with their md5 (Model Zoo layout). Regenerate with",
        "#   python -c \"import labelless.zoo as z; z.write_large_files('<bundle folder>')\"",
    ]
    if url_base is None:
        lines.append("# The files ship inside the bundle (models/); no download URL is published.")
    lines.append("large_files:")
    for e in large_file_entries(root):
        lines.append(f'- path: "{e["path"]}"')
        if url_base is not None:
            lines.append(f'  url: "{url_base.rstrip("/")}/{root.name}/{e["path"]}"')
        lines.append(f'  hash_val: "{e["hash_val"]}"')
        lines.append(f'  hash_type: "{e["hash_type"]}"')
    out = root / LARGE_FILES
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def read_large_files(bundle: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``large_files`` list of ``<bundle>/large_files.yml``.

    Raises:
        DataError: the file is missing or not a mapping with a ``large_files`` list.
    """
    import yaml

    path = Path(bundle) / LARGE_FILES
    if not path.is_file():
        raise DataError(path, "missing (write it with labelless.zoo.write_large_files)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(path, f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("large_files"), list):
        raise DataError(path, "expected a mapping with a 'large_files' list")
    return data["large_files"]


# ------------------------------------------------------------------------------------------------------ the checks
def _check_files(bundle: Path, tmp: Path) -> str:
    missing = [f for f in (*NECESSARY_FILES, *PREFERRED_FILES, *PROJECT_FILES) if not (bundle / f).is_file()]
    if missing:
        raise AssertionError(f"missing {missing}")
    return f"{len(NECESSARY_FILES) + len(PREFERRED_FILES) + len(PROJECT_FILES)} files present"


def _check_readme(bundle: Path, tmp: Path) -> str:
    lines = (bundle / "docs" / "README.md").read_text(encoding="utf-8").splitlines()
    headings = [ln[3:].strip().lower() for ln in lines if ln.startswith("## ")]
    missing = [s for s in README_SECTIONS if s.lower() not in headings]
    if missing:
        raise AssertionError(f"docs/README.md lacks the section(s) {missing}")
    return f"{len(README_SECTIONS)} sections"


def _check_version(bundle: Path, tmp: Path) -> str:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    for key in ("version", "changelog"):
        if key not in meta:
            raise AssertionError(f"'{key}' missing in configs/metadata.json")
    if meta["version"] not in meta["changelog"]:
        raise AssertionError(f"version {meta['version']} is not in the changelog")
    parts = str(meta["version"]).split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise AssertionError(f"version {meta['version']!r} is not MAJOR.MINOR.PATCH")
    return f"version {meta['version']} in changelog"


def _check_metadata(bundle: Path, tmp: Path) -> str:
    from monai.bundle import verify_metadata

    from labelless.resources import META_SCHEMA

    with _quiet():
        verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(META_SCHEMA))
    return f"valid against {META_SCHEMA.name}"


def _check_large_files(bundle: Path, tmp: Path) -> str:
    listed = {str(e.get("path")): e for e in read_large_files(bundle)}
    weights = [p.relative_to(bundle).as_posix() for p in _weights(bundle)]
    unlisted = [w for w in weights if w not in listed]
    if unlisted:
        raise AssertionError(f"{unlisted} not listed in {LARGE_FILES}")
    for rel, e in listed.items():
        if e.get("hash_type") != "md5" or not e.get("hash_val"):
            raise AssertionError(f"{rel}: expected hash_type md5 and a hash_val")
        if not (bundle / rel).is_file():
            raise AssertionError(f"{rel} is listed but missing")
        if md5sum(bundle / rel) != e["hash_val"]:
            raise AssertionError(f"{rel}: md5 {md5sum(bundle / rel)} differs from the listed {e['hash_val']}")
    return f"{len(listed)} file(s), md5 match"


def _workflow(bundle: Path, configs: Sequence[str], workflow_type: str, **override: Any) -> Any:
    from monai.bundle import create_workflow

    files = [str(bundle / "configs" / c) for c in configs]
    with _quiet():
        return create_workflow(
            config_file=files if len(files) > 1 else files[0],
            workflow_type=workflow_type,
            meta_file=str(bundle / "configs" / "metadata.json"),
            **override,
        )


def _check_properties(bundle: Path, tmp: Path) -> str:
    wf = _workflow(bundle, ["inference.json"], "inference", bundle_root=str(bundle), output_dir=str(tmp / "out"))
    missing = wf.check_properties()
    if missing:
        raise AssertionError(f"inference check_properties(): {missing}")
    return "inference: none missing"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _check_load(bundle: Path, tmp: Path) -> str:
    caller = tmp / "caller"
    caller.mkdir()
    before = _tree(bundle)
    cwd = os.getcwd()
    os.chdir(caller)
    try:
        for configs, wtype, override in (
            (["train.json"], "train", {}),
            (["train.json", "evaluate.json"], "eval", {}),
            (["inference.json"], "inference", {"bundle_root": str(bundle)}),
        ):
            _workflow(bundle, configs, wtype, **override)
            written = sorted(str(p.relative_to(caller)) for p in caller.rglob("*"))
            if written:
                raise AssertionError(f"loading {'+'.join(configs)} wrote {written[:5]} into the caller's directory")
    finally:
        os.chdir(cwd)
    changed = sorted(k for k, v in _tree(bundle).items() if before.get(k) != v)
    if changed:
        raise AssertionError(f"loading changed the bundle folder: {changed[:5]}")
    return "train, evaluate, inference: nothing written"


def _check_net_in_out(bundle: Path, tmp: Path) -> str:
    from monai.bundle import verify_net_in_out

    with _quiet():
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
        )
    return "network_def: shapes and dtypes as in network_data_format"


def _check_torchscript(bundle: Path, tmp: Path) -> str:
    import torch
    from monai.bundle import ckpt_export

    out = tmp / "verify_model.ts"
    with _quiet():
        ckpt_export(
            net_id="network_def",
            filepath=str(out),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
        )
    torch.jit.load(str(out))
    return f"exported and reloaded ({out.stat().st_size / 1e6:.1f} MB)"


#: check name -> function(bundle, tmp folder) returning a one-line detail (raises on failure)
ZOO_CHECKS: dict[str, Callable[[Path, Path], str]] = {
    "files": _check_files,
    "version": _check_version,
    "metadata": _check_metadata,
    "large_files": _check_large_files,
    "readme": _check_readme,
    "properties": _check_properties,
    "load": _check_load,
    "net_in_out": _check_net_in_out,
    "torchscript": _check_torchscript,
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MONAI's bundle scripts print input summaries and warn about ``eval``; keep a check's output to its line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def run_zoo_checks(bundle: str | os.PathLike, checks: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the Zoo's checks on one bundle folder.

    Args:
        bundle: the bundle folder (with ``configs/metadata.json``).
        checks: names from :data:`ZOO_CHECKS` (default: all, in order).

    Returns:
        ``{check: {"ok": bool, "detail": str}}``; a failed check's detail is its error in one line.

    Raises:
        ConfigError: not a bundle folder, or an unknown check name.
    """
    root = Path(bundle).resolve()
    if not (root / "configs" / "metadata.json").is_file():
        raise ConfigError(f"{root} is not a bundle folder (no configs/metadata.json)")
    names = list(ZOO_CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in ZOO_CHECKS]
    if unknown:
        raise ConfigError(f"unknown check(s) {unknown}; choose from {list(ZOO_CHECKS)}")
    results: dict[str, dict[str, Any]] = {}
    path0 = list(sys.path)
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"zoo_{name}_") as tmp:
            try:
                results[name] = {"ok": True, "detail": ZOO_CHECKS[name](root, Path(tmp))}
            except Exception as exc:  # a check's failure is its result, reported in the table
                msg = " ".join(str(exc).split())
                results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {msg[:300]}"}
            finally:
                sys.path[:] = path0
    return results


def format_check_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A Markdown table bundle × check → pass/FAIL from ``{bundle: run_zoo_checks(...)}``."""
    names = list(dict.fromkeys(n for r in results.values() for n in r))
    lines = ["| bundle | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for bundle, res in results.items():
        cells = [("pass" if res[n]["ok"] else "FAIL") if n in res else "–" for n in names]
        lines.append(f"| {bundle} | " + " | ".join(cells) + " |")
    failures = [f"- {b} / {n}: {r['detail']}" for b, res in results.items() for n, r in res.items() if not r["ok"]]
    return "\n".join(lines + ([""] + failures if failures else []))
