# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""``labelless bundle pack``: standalone bundles that run with MONAI and the packages their metadata lists.

Fast tests pack each bundle and check the layout, the metadata pins, that every labelless name of the packed configs
goes through ``@labelless_pkg``, and run the packed ``inference.json`` in this process with the installed labelless
hidden. The slow test creates a fresh venv, installs only the packed metadata's packages (plus the MONAI, PyTorch and
NumPy pins), and runs ``python -m monai.bundle run`` from another directory; it runs under ``CI=true`` or
``LABELLESS_SLOW_TESTS=1`` and skips with the reason when pip cannot reach an index. It runs two bundles (one volume
few-shot, one 2D); ``LABELLESS_PACK_BUNDLES=all`` (or a comma-separated list of names) runs others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

import labelless
from labelless.bundle_tools import LOADER_ID, LOADER_NAME, PKG_ID, bundle_requirements, pack_bundle, route_config
from labelless.cli import LabellessCLI, main
from labelless.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
ALL = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
PKG_DIR = Path(labelless.__file__).resolve().parent
#: packages every bundle needs at run time besides monai/torch/numpy (readers, engines, progress bars, the CLI)
CORE = {"nibabel", "scipy", "scikit-image", "pillow", "pytorch-ignite", "tqdm", "fire"}
#: bundles whose packed inference also runs in this process (2D, a few seconds each); the others are initialised
RUN_IN_PROCESS = {"sabrnet_semisupervised_ultrasound_segmentation", "cltnet_weakly_supervised_segmentation"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packed")
    return {name: pack_bundle(name, root / name)[0] for name in ALL}


def _strings(node: object, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, string) of every string of a parsed config."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


@pytest.mark.parametrize("bundle", ALL)
def test_layout_and_metadata(packed, bundle):
    src, out = BUNDLES / bundle, packed[bundle]
    for rel in (
        "LICENSE",
        "configs/inference.json",
        "configs/train.json",
        "configs/metadata.json",
        "configs/logging.conf",
        "docs/README.md",
        "models/model.pt",
        f"scripts/{LOADER_NAME}",
        "scripts/__init__.py",
        "scripts/labelless/__init__.py",
        "scripts/labelless/resources/__init__.py",
    ):
        assert (out / rel).is_file(), rel
    assert (out / "models" / "model.pt").read_bytes() == (src / "models" / "model.pt").read_bytes()
    assert (out / "large_files.yml").is_file() == (src / "large_files.yml").is_file()
    assert not list((out / "scripts").rglob("__pycache__")) and not list(out.rglob(".labelless.lock"))
    n_src = len([p for p in PKG_DIR.rglob("*.py") if "__pycache__" not in p.parts])
    assert len(list((out / "scripts" / "labelless").rglob("*.py"))) == n_src  # the whole package

    meta, src_meta = (json.loads((d / "configs" / "metadata.json").read_text()) for d in (out, src))
    pins = meta.pop("required_packages_version")
    description = meta.pop("description")
    assert "pip install -e" not in description and "vendored under scripts/" in description
    assert meta == {k: v for k, v in src_meta.items() if k not in ("required_packages_version", "description")}
    assert pins == src_meta["required_packages_version"], "the in-repo pins are the packed ones"
    assert CORE <= {_norm(k) for k in pins}
    assert not {"monai", "torch", "numpy", "labelless"} & {_norm(k) for k in pins}
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name} is pinned to {version}, {metadata.version(name)} installed"
    assert "valid" in LabellessCLI().verify_metadata(str(out / "configs" / "metadata.json"))


@pytest.mark.parametrize("bundle", ALL)
def test_in_repo_pins_are_complete(bundle):
    """The in-repo ``required_packages_version`` equals what pack computes from the imports (and the installed
    versions): a new import or an upgraded package shows here."""
    meta = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())
    pins, _ = bundle_requirements(BUNDLES / bundle)
    assert meta["required_packages_version"] == pins


@pytest.mark.parametrize("bundle", ALL)
def test_every_labelless_name_is_routed(packed, bundle):
    for path in sorted((packed[bundle] / "configs").glob("*.json")):
        if path.name == "metadata.json":
            continue
        config = json.loads(path.read_text())
        src = json.loads((BUNDLES / bundle / "configs" / path.name).read_text())
        for key, value in _strings(config):
            if key == "_target_" or value.startswith("$"):
                assert not re.match(r"\$\s*(import|from)\s+labelless", value), (path.name, value)
                assert "labelless." not in value.replace(f"@{PKG_ID}.", ""), (path.name, key, value)
        assert set(src) <= set(config)
        if "labelless." in json.dumps(src):
            assert config[PKG_ID] == f"$@{LOADER_ID}['load_labelless']()"
            assert config[LOADER_ID]["_target_"] == "runpy.run_path"
            assert "import" not in config[PKG_ID]  # MONAI would parse it as an import statement


@contextlib.contextmanager
def _labelless_hidden() -> Iterator[None]:
    """The installed labelless out of ``sys.modules`` and ``sys.path`` (restored afterwards)."""
    names = [k for k in sys.modules if k == "labelless" or k.startswith("labelless.")]
    saved = {k: sys.modules.pop(k) for k in names}
    path, hook = list(sys.path), sys.excepthook
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != PKG_DIR.parent]
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "labelless" or k.startswith("labelless.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = path
        sys.excepthook = hook


@pytest.mark.parametrize("bundle", ALL)
def test_packed_configs_run_without_the_installed_package(packed, bundle, tmp_path, monkeypatch):
    out = packed[bundle]
    monkeypatch.chdir(tmp_path)
    with _labelless_hidden():
        with pytest.raises(ImportError):
            __import__("labelless")
        wf = ConfigWorkflow(
            config_file=str(out / "configs" / "inference.json"), meta_file=str(out / "configs" / "metadata.json"),
            logging_file=str(out / "configs" / "logging.conf"), workflow_type="infer", bundle_root=str(out),
            output_dir=str(tmp_path / "pred"),
        )  # fmt: skip
        wf.initialize()  # option checks and the shipped weights
        assert wf.check_properties() == []
        assert wf.evaluator is not None and wf.network_def is not None
        train = ConfigWorkflow(
            config_file=[str(out / "configs" / "train.json"), str(out / "configs" / "evaluate.json")],
            meta_file=str(out / "configs" / "metadata.json"), logging_file=str(out / "configs" / "logging.conf"),
            workflow_type="train", bundle_root=str(out), output_dir=str(tmp_path / "eval"),
            ckpt_dir=str(tmp_path / "ckpt"),
        )  # fmt: skip
        assert train.parser.get_parsed_content(PKG_ID).__file__ == str(out / "scripts" / "labelless" / "__init__.py")
        assert train.parser.get_parsed_content("network_def") is not None
        if bundle in RUN_IN_PROCESS:
            wf.run()
        used = {k: getattr(m, "__file__", None) for k, m in sys.modules.items() if k.startswith("labelless")}
    assert used and all(str(f).startswith(str(out / "scripts")) for f in used.values() if f), used
    if bundle in RUN_IN_PROCESS:
        assert list((tmp_path / "pred").glob("*_mask.png"))


def test_zip_overwrite_and_refusals(tmp_path, capsys):
    bundle = "sabrnet_semisupervised_ultrasound_segmentation"
    zip_path, summary = pack_bundle(bundle, tmp_path / "b.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    assert all(n.startswith(f"{bundle}/") for n in names)
    assert f"{bundle}/scripts/{LOADER_NAME}" in names and f"{bundle}/configs/metadata.json" in names
    assert summary["bundle"] == bundle and CORE <= {_norm(k) for k in summary["packages"]}

    with pytest.raises(ConfigError, match="--overwrite"):
        pack_bundle(bundle, zip_path)
    pack_bundle(bundle, zip_path, overwrite=True)
    out = tmp_path / "dir"
    main(["bundle", "pack", bundle, "--out", str(out)])
    msg = capsys.readouterr().out
    assert f"packed {bundle} into {out}" in msg and "fire==" in msg
    (out / "stale.txt").write_text("x")
    pack_bundle(bundle, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "scripts" / LOADER_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left behind"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    for target in (foreign, BUNDLES / "x_packed", BUNDLES / bundle / "packed", PKG_DIR / "x"):
        with pytest.raises(ConfigError, match="--out"):
            pack_bundle(bundle, target, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    assert not (BUNDLES / "x_packed").exists() and not (BUNDLES / bundle / "packed").exists()
    with pytest.raises(ConfigError, match="not found.*ssl_alpnet_fewshot_segmentation"):
        pack_bundle("no_such_bundle", tmp_path / "n")


def test_route_config_rewrites_and_refuses():
    config = {
        "imports": ["$import os", "$import labelless", "$import labelless.options"],
        "net": {"_target_": "labelless.networks.fewshot.build_fewshot_segmentor", "n": 1},
        "opt": {"_target_": "torch.optim.Adam"},
        "checked": "$labelless.options.check_options(n=@n) or labelless.utils.as_bool(@x, 'x')",
        "desc": "the labelless engines (plain text stays)",
        "log": "$@output_dir + '/labelless.log'",
    }
    new, modules = route_config(config, PKG_DIR)
    assert list(new)[:3] == ["imports", LOADER_ID, PKG_ID]
    assert new["imports"] == ["$import os"]
    assert new["net"]["_target_"] == f"$@{PKG_ID}.networks.fewshot.build_fewshot_segmentor"
    assert new["opt"] == config["opt"] and new["desc"] == config["desc"] and new["log"] == config["log"]
    assert new["checked"] == f"$@{PKG_ID}.options.check_options(n=@n) or @{PKG_ID}.utils.as_bool(@x, 'x')"
    assert modules == {"labelless", "labelless.networks.fewshot", "labelless.options", "labelless.utils"}
    assert route_config({"a": "$os.path.join(@x)"}, PKG_DIR) == ({"a": "$os.path.join(@x)"}, set())
    for bad in (
        {"imports": ["$from labelless.options import check_options"]},
        {"imports": ["$import labelless.options as opts"]},
        {"a": "$importlib.import_module('labelless.options')"},
        {"a": "$labelless.no_such_module.f()"},
        {PKG_ID: 1, "a": {"_target_": "labelless.utils.as_bool"}},
    ):
        with pytest.raises(DataError):
            route_config(bad, PKG_DIR, "x.json")


# ------------------------------------------------------------------------------------------- fresh venv (slow)

#: the bundles the slow test runs by default: one volume few-shot, one 2D
SLOW_DEFAULT = ("ssl_alpnet_fewshot_segmentation", "sabrnet_semisupervised_ultrasound_segmentation")
_OFFLINE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Network is unreachable|"
    r"ConnectTimeout|ProxyError|Could not fetch URL|Failed to establish a new connection"
)


def _slow_bundles() -> list[str]:
    chosen = os.environ.get("LABELLESS_PACK_BUNDLES", "")
    if chosen == "all":
        return ALL
    return [b.strip() for b in chosen.split(",") if b.strip()] or list(SLOW_DEFAULT)


def _venv_env() -> dict[str, str]:
    """Environment of the fresh venv's processes: no PYTHONPATH (nothing of this checkout leaks in), byte code
    written (the venv is installed without it), one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Iterator[tuple[Path, dict[str, Path]]]:
    if os.environ.get("CI", "").lower() != "true" and os.environ.get("LABELLESS_SLOW_TESTS") != "1":
        pytest.skip("fresh-venv pack test (pip install, ~3 min): runs under CI=true or LABELLESS_SLOW_TESTS=1")
    root = tmp_path_factory.mktemp("standalone")
    bundles = {name: pack_bundle(name, root / "packed" / name)[0] for name in _slow_bundles()}
    reqs: dict[str, str] = {}
    for out in bundles.values():
        meta = json.loads((out / "configs" / "metadata.json").read_text())
        reqs.update({"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]})
        reqs.update(meta["required_packages_version"])
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    start = time.monotonic()
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-compile", *(f"{k}=={v}" for k, v in reqs.items())],
        capture_output=True, text=True, timeout=1200, env=_venv_env(),
    )  # fmt: skip
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-1500:]
        if _OFFLINE.search(res.stdout + res.stderr):
            pytest.skip(f"pip cannot reach a package index: {tail}")
        pytest.fail(f"pip install of the packed metadata's packages failed:\n{tail}")
    print(f"fresh venv: {len(reqs)} pinned packages installed in {time.monotonic() - start:.0f} s")
    yield py, bundles
    shutil.rmtree(venv, ignore_errors=True)  # ~1.5 GB


@pytest.mark.slow
def test_fresh_venv_has_no_labelless(fresh_venv, tmp_path):
    py, _ = fresh_venv
    res = subprocess.run([str(py), "-c", "import labelless"], capture_output=True, text=True, cwd=tmp_path,
                         env=_venv_env(), timeout=120)  # fmt: skip
    assert res.returncode != 0 and "No module named 'labelless'" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("bundle", _slow_bundles())
def test_packed_bundle_runs_in_a_fresh_venv(fresh_venv, bundle, tmp_path):
    """``python -m monai.bundle run`` of the packed inference.json on the embedded default data, from another
    directory, in a venv holding only the packages the packed metadata lists."""
    py, bundles = fresh_venv
    out, pred = bundles[bundle], tmp_path / "pred"
    extra: list[str] = []
    if "fewshot_segmentation" in bundle and not bundle.startswith("fsms"):  # one query scan of the phantoms
        from labelless.data.phantoms import default_dataset_dir

        extra = ["--queries", str(default_dataset_dir("abdomen") / "image_2.nii.gz")]
    cmd = [str(py), "-m", "monai.bundle", "run", "--config_file", str(out / "configs" / "inference.json"),
           "--bundle_root", str(out), "--output_dir", str(pred), *extra]  # fmt: skip
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_venv_env(), timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    written = [p for p in pred.rglob("*") if p.name.endswith((".nii.gz", ".png"))]
    assert written, f"no prediction written into {pred}"


@pytest.mark.slow
def test_packed_bundle_with_zoo_sys_path(fresh_venv, tmp_path):
    """The Model Zoo CI's view: the bundle folder first on sys.path, properties of inference.json, network_def parsed
    (as in ci/verify_bundle.py), from another directory."""
    py, bundles = fresh_venv
    out = bundles[SLOW_DEFAULT[1]] if SLOW_DEFAULT[1] in bundles else next(iter(bundles.values()))
    script = f"""
import os, sys
bundle = {str(out)!r}
sys.path = [bundle] + sys.path
from monai.bundle import ConfigParser, create_workflow
wf = create_workflow(workflow_type="inference", bundle_root=bundle, config_file=bundle + "/configs/inference.json",
                     meta_file=bundle + "/configs/metadata.json", logging_file=bundle + "/configs/logging.conf")
assert wf.check_properties() == [], wf.check_properties()
parser = ConfigParser()
parser.read_config(f=bundle + "/configs/inference.json")
parser.read_meta(f=bundle + "/configs/metadata.json")
parser["bundle_root"] = bundle
net = parser.get_parsed_content("network_def")
assert type(net).__module__.startswith("labelless."), type(net)
assert sys.modules["labelless"].__file__ == os.path.join(bundle, "scripts", "labelless", "__init__.py")
print("zoo ok")
"""
    res = subprocess.run([str(py), "-c", script], capture_output=True, text=True, cwd=tmp_path, env=_venv_env(),
                         timeout=600)  # fmt: skip
    assert res.returncode == 0 and "zoo ok" in res.stdout, (res.stdout + res.stderr)[-3000:]
