# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The ``labelless`` command line: help, phantoms -> superpixels -> episodes -> evaluate, metadata, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labelless.cli import LabellessCLI
from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.phantoms import write_phantom_dataset
from labelless.fewshot.volume.folds import fold_split
from labelless.fewshot.volume.protocol import prediction_filename
from labelless.io.writers import write_volume


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelless", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), "abdomen", n_volumes=6, seed=3, shape=(64, 64, 12))


def test_help_lists_every_command():
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    for cmd in ("phantoms", "prepare", "superpixels", "episodes", "evaluate", "demo", "verify_metadata", "fsms_classes",
                "fsms_synthetic", "weak_domains", "weak_domains_images", "weak_domains_csv"):
        assert cmd in res.stdout + res.stderr
    res = _run("superpixels", "--help")
    text = res.stdout + res.stderr
    assert res.returncode == 0 and "min_size 400" in text and "--workers" in text


def test_bad_dataset_dir_is_a_clear_error(tmp_path):
    res = _run("evaluate", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert res.returncode == 2
    assert "nope" in res.stderr and "does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_evaluate_scores_saved_oracle_predictions(phantom_dir, tmp_path):
    ds = PreparedVolumeDataset(phantom_dir, "phantom_abdomen")
    preds = tmp_path / "preds"
    for pid in fold_split(ds.pids, 0).test:
        lab = ds.load_label(pid)
        for cid in ds.preset.test_classes:
            name = ds.label_map.name(cid)
            write_volume((lab.array == cid).astype(np.uint8), preds / prediction_filename(pid, name), reference=lab)
    out = tmp_path / "eval"
    msg = LabellessCLI().evaluate(
        str(phantom_dir), str(out), preset="phantom_abdomen", predictions_dir=str(preds), folds=[0], modes=["protocol"]
    )
    assert str(out) in msg
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_dice"] == pytest.approx(1.0)
    assert set(metrics["per_class"]) == {"LIVER", "RK", "LK", "SPLEEN"}
    assert (out / "metrics.md").exists() and (out / "metrics.csv").exists()


def test_pipeline_superpixels_episodes_baseline(phantom_dir, tmp_path):
    cli = LabellessCLI()
    derived = tmp_path / "derived"
    cli.superpixels(str(phantom_dir), out_dir=str(derived), preset="phantom_abdomen", workers=1)
    ds = PreparedVolumeDataset(phantom_dir, "phantom_abdomen", derived_dir=derived)
    sp = ds.load_superpixels(ds.pids[0]).array
    assert sp.max() >= 1 and sp.min() == 0
    cli.episodes(str(phantom_dir), str(tmp_path / "episodes"), derived_dir=str(derived), preset="phantom_abdomen", n=2)
    assert sorted(p.name for p in (tmp_path / "episodes").glob("*.png")) == ["episode_0.png", "episode_1.png"]
    out = tmp_path / "eval"
    cli.evaluate(str(phantom_dir), str(out), preset="phantom_abdomen", folds=[0], n_overlays=1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "protocol" and "gt_free" in metrics
    # the training-free baseline must find the phantom organs far better than chance
    assert metrics["mean_dice"] > 0.3, metrics["per_class"]
    assert list((out / "overlays").glob("*.png"))


def test_verify_metadata(tmp_path):
    good = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "required_packages_version": {},
        "task": "t",
        "description": "d",
        "authors": "a",
        "copyright": "c",
        "network_data_format": {"inputs": {}, "outputs": {}},
    }
    f = tmp_path / "metadata.json"
    f.write_text(json.dumps(good))
    assert "valid" in LabellessCLI().verify_metadata(str(f))
    del good["network_data_format"]
    f.write_text(json.dumps(good))
    res = _run("verify_metadata", "--meta_file", str(f))
    assert res.returncode != 0 and "network_data_format" in res.stderr


def test_fsms_synthetic_writes_classes_a_class_folder_reader_accepts(tmp_path):
    from labelless.fewshot.image.classes import ClassFolderDataset, ImageFolderPool

    msg = LabellessCLI().fsms_synthetic(str(tmp_path), n_classes=3, n_instances=3, n_skin=4, size=64)
    assert "shape classes" in msg
    ds = ClassFolderDataset(tmp_path / "classes", min_pairs=2, size=64)
    assert len(ds.classes) == 3 and all(len(ds.ids[c]) == 3 for c in ds.classes)
    pool = ImageFolderPool(tmp_path / "skin" / "images", size=64, masks=tmp_path / "skin" / "masks")
    assert len(pool.image_ids) == 4


def test_fsms_classes_exports_shared_structures(tmp_path):
    from conftest import shared_data_dir

    data = shared_data_dir()
    msg = LabellessCLI().fsms_classes(str(data), str(tmp_path), sources=["hc18"], max_instances=2, size=64)
    assert "hc18_fetal_head: 2 instances" in msg
    assert len(list((tmp_path / "hc18_fetal_head").glob("*.png"))) == 2


def _saved_predictions(out: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {p.name: np.asarray(nib.load(str(p)).dataobj) > 0 for p in sorted((out / "predictions").rglob("*.nii.gz"))}


def test_boolean_switches_false_from_the_command_line(phantom_dir, tmp_path):
    """``--save_predictions false`` and ``--predict_outside_extent false`` arrive as strings and mean false (a plain
    ``bool("false")`` would be True); a misspelt value is a clear error."""
    base = ["evaluate", str(phantom_dir), "--preset", "phantom_abdomen", "--folds", "[0]", "--modes", "[gt_free]",
            "--n_overlays", "0"]  # fmt: skip
    off = _run(*base, "--output_dir", str(tmp_path / "off"), "--save_predictions", "false")
    assert off.returncode == 0, off.stderr
    assert (tmp_path / "off" / "metrics.json").is_file() and not (tmp_path / "off" / "predictions").exists()

    full = _run(*base, "--output_dir", str(tmp_path / "full"), "--save_predictions", "true")
    cut = _run(*base, "--output_dir", str(tmp_path / "cut"), "--save_predictions", "true",
               "--predict_outside_extent", "false")  # fmt: skip
    assert full.returncode == 0 and cut.returncode == 0, full.stderr + cut.stderr
    pf, pc = _saved_predictions(tmp_path / "full"), _saved_predictions(tmp_path / "cut")
    assert pf and set(pf) == set(pc)
    assert all(not (pc[k] & ~pf[k]).any() for k in pf)  # cutting only removes foreground
    assert sum(int(v.sum()) for v in pc.values()) < sum(int(v.sum()) for v in pf.values())

    bad = _run(*base, "--output_dir", str(tmp_path / "bad"), "--save_predictions", "flase")
    assert bad.returncode == 2 and "save_predictions must be true or false" in bad.stderr
    assert "Traceback" not in bad.stderr


def _checksums(folder: Path) -> dict[str, bytes]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).digest() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_phantoms_and_demo_never_replace_a_users_files(tmp_path):
    user = tmp_path / "my_dataset"
    user.mkdir()
    for name in ("image_1.nii.gz", "label_1.nii.gz", "classmap_1.json"):
        (user / name).write_bytes(b"the user's own " + name.encode())
    before = _checksums(user)
    for args in (("phantoms", str(user), "--n_volumes", "2", "--shape", "[32,32,4]"), ("demo", str(user))):
        res = _run(*args)
        assert res.returncode != 0
        last = res.stderr.strip().splitlines()[-1]
        assert str(user) in last and "not empty" in last and "Traceback" not in res.stderr
        assert _checksums(user) == before
    # a folder written by `labelless phantoms` may be rewritten (same seed, same files)
    res = _run("phantoms", str(tmp_path / "ph"), "--n_volumes", "2", "--shape", "[32,32,4]")
    assert res.returncode == 0, res.stderr
    first = _checksums(tmp_path / "ph")
    res = _run("phantoms", str(tmp_path / "ph"), "--n_volumes", "2", "--shape", "[32,32,4]")
    assert res.returncode == 0, res.stderr
    assert {k: v for k, v in _checksums(tmp_path / "ph").items() if k != ".labelless_phantoms"} == {
        k: v for k, v in first.items() if k != ".labelless_phantoms"}  # fmt: skip
