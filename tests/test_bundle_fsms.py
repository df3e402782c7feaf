# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""FSMS bundle: train (surrogate on/off) / evaluate / inference through MONAI's ConfigWorkflow from another working
directory, an unseen image/mask folder with overrides only, bad inputs, torchrun, metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _bundles import BUNDLES, bundle_workflow, root_cause
from labelless.errors import DataError
from labelless.fewshot.image.protocol import SUPPORT_THRESHOLD_GRID

BUNDLE_NAME = "fsms_fewshot_skin_segmentation"
BUNDLE = BUNDLES / BUNDLE_NAME
CONFIGS = BUNDLE / "configs"
SMALL = {"width": 4, "feature_channels": 8, "image_size": 64}
# episode Dice of each shipped weight file on the first 20 seeded 1-shot episodes (eval_seed 0), measured when shipped
SHIPPED_20_EPISODES = {
    "model.pt": {"isic2016_test": 0.6692, "ham10000_test": 0.8345, "isic_samples_test": 0.8754},
    "model_lesion_crops.pt": {"isic2016_test": 0.7610, "ham10000_test": 0.7119, "isic_samples_test": 0.8187},
    # the same file with evaluate.json's support_threshold=true (the threshold fitted on each task's support)
    "model_lesion_crops.pt support_threshold": {"isic2016_test": 0.7938, "ham10000_test": 0.6788,
                                                "isic_samples_test": 0.7857},
}


def _blob_image(rng: np.random.Generator, h: int, w: int, grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    r = rng.uniform(0.15, 0.3) * min(h, w)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
    img = np.full((h, w, 3), (200, 160, 140), np.float64) + rng.normal(0, 8, (h, w, 3))
    img[mask] = (90, 60, 50)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return (img.mean(axis=2).astype(np.uint8) if grey else img), (mask * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> Path:
    """An unseen image/mask folder: JPEG images of different sizes (one greyscale), masks <id>_segmentation.png."""
    root = tmp_path_factory.mktemp("lesions")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        h, w = (90, 120) if i % 2 else (100, 100)
        img, mask = _blob_image(rng, h, w, grey=(i == 7))
        Image.fromarray(img).save(root / "images" / f"LES_{i:03d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"LES_{i:03d}_segmentation.png")
    return root


def _train(out: Path, **overrides) -> Path:
    cwd = os.getcwd()
    os.chdir(out)  # not the bundle folder
    try:
        wf = bundle_workflow(
            BUNDLE_NAME, ["train.json"], "train", ckpt_dir=str(out / "models"), output_dir=str(out / "eval"),
            n_steps=3, epoch_length=2, n_tasks=2, n_unlabeled=2, **{**SMALL, **overrides},
        )  # fmt: skip
        wf.initialize()
        assert wf.check_properties() == []
        wf.run()
        wf.finalize()
    finally:
        os.chdir(cwd)
    return out / "models"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lesions) -> Path:
    """Surrogate on, target domain = the lesion folder (its unlabelled 40 %), built-in synthetic classes."""
    return _train(tmp_path_factory.mktemp("fsms"), dataset_dir=str(lesions))


def test_bundle_layout():
    for rel in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/multi_gpu_train.json",
                "configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE"):
        assert (BUNDLE / rel).is_file(), rel


def test_surrogate_trains_the_surrogate_head_and_the_baseline_does_not(trained, tmp_path):
    ckpt = torch.load(trained / "fsms_surrogate_1shot.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3
    assert {"model", "seg_optimizer", "sur_optimizer", "seg_lr_scheduler", "sur_lr_scheduler", "trainer"} <= set(ckpt)
    assert ckpt["seg_optimizer"]["param_groups"][0]["lr"] == 1e-4  # lr_schedule "constant" (the default)
    base = _train(tmp_path, surrogate="false")  # the command-line string form
    b = torch.load(base / "fsms_baseline_1shot.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("surrogate") for k in b["model"])  # the head exists ...
    assert not b["sur_optimizer"]["state"]  # ... but no surrogate step was taken
    assert ckpt["sur_optimizer"]["state"]  # the surrogate run took surrogate steps
    assert b["seg_optimizer"]["state"]


@pytest.mark.parametrize("kind", ["segments", "dark"])
def test_pseudo_label_classes_and_init_ckpt_through_the_config(trained, lesions, tmp_path, monkeypatch, kind):
    """train.json with pseudo_fraction 1: every task is a pseudo-label class of the folder's unlabelled images (no
    mask of the folder is opened: PIL and open are watched), starting from init_ckpt's weights; ``pseudo_kind``
    picks per-image segments or the one dark-region class across images."""
    import builtins

    masks = str(lesions / "masks")
    seen: list[str] = []

    def guard(fn):
        def wrapped(fp, *args, **kwargs):
            if str(getattr(fp, "name", fp)).startswith(masks) and pseudo_phase:
                seen.append(str(fp))
            return fn(fp, *args, **kwargs)

        return wrapped

    pseudo_phase = False
    monkeypatch.setattr(Image, "open", guard(Image.open))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    from labelless.fewshot.image.episodes import MetaTrainEpisodes

    drawn: list[str] = []
    original = MetaTrainEpisodes.__getitem__

    def record(self, index):  # noqa: ANN001, ANN202
        nonlocal pseudo_phase
        pseudo_phase = True  # the target pools (which do read the test masks) are built before the first episode
        item = original(self, index)
        drawn.extend(item["classes"])
        return item

    monkeypatch.setattr(MetaTrainEpisodes, "__getitem__", record)
    init = trained / "fsms_surrogate_1shot.pt"
    schedule = {"segments": "constant", "dark": "cosine"}[kind]
    out = _train(tmp_path, dataset_dir=str(lesions), pseudo_fraction=1.0, pseudo_kind=kind, init_ckpt=str(init),
                 lr_schedule=schedule)  # fmt: skip
    assert drawn and all(c.startswith("pseudo/") for c in drawn)
    assert all(c == "pseudo/dark" for c in drawn) == (kind == "dark")
    assert not seen, f"masks opened while building pseudo-label episodes: {seen[:3]}"
    ckpt = torch.load(out / "fsms_surrogate_1shot.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3 and ckpt["seg_optimizer"]["state"]
    # cosine: 1e-4 at iteration 0 down to 0 at n_steps (3); constant: unchanged
    for opt in ("seg_optimizer", "sur_optimizer"):
        assert ckpt[opt]["param_groups"][0]["lr"] == pytest.approx(1e-4 if schedule == "constant" else 0.0, abs=1e-12)
    (tmp_path / "bad").mkdir()
    with pytest.raises(Exception) as err:
        _train(tmp_path / "bad", dataset_dir=str(lesions), init_ckpt=str(tmp_path / "missing.pt"))
    assert "missing.pt" in str(root_cause(err.value))


def test_evaluate_unseen_folder_with_overrides_only(trained, lesions, tmp_path):
    out = tmp_path / "eval"
    wf = bundle_workflow(
        BUNDLE_NAME, ["train.json", "evaluate.json"], "train", dataset_dir=str(lesions), output_dir=str(out),
        eval_ckpt_path=str(trained / "fsms_surrogate_1shot.pt"), eval_shots=[1, 2], n_eval_episodes=4, n_overlays=1,
        support_threshold=True, **SMALL,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["support_threshold"] is True
    assert [(r["pool"], r["shots"]) for r in summary["results"]] == [("lesions0", 1), ("lesions0", 2)]
    assert all(0.0 <= r["episode_dice"] <= 1.0 and r["n_episodes"] == 4 for r in summary["results"])
    assert (out / "metrics.md").is_file() and list((out / "lesions0_1shot").rglob("*.png"))


def test_inference_writes_masks_at_the_query_size(trained, lesions, tmp_path):
    out = tmp_path / "pred"
    queries = [str(lesions / "images" / f"LES_{i:03d}.jpg") for i in (3, 4, 7)]  # 90x120, 100x100, grey 90x120
    wf = bundle_workflow(
        BUNDLE_NAME, ["inference.json"], "infer", ckpt_path=str(trained / "fsms_surrogate_1shot.pt"),
        output_dir=str(out), support_images=[str(lesions / "images" / "LES_000.jpg")],
        support_masks=[str(lesions / "masks" / "LES_000_segmentation.png")], queries=queries, support_threshold=True,
        **SMALL,
    )  # fmt: skip
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    fitted = json.loads((out / "inference_summary.json").read_text())["support_threshold"]
    assert any(fitted == pytest.approx(t) for t in SUPPORT_THRESHOLD_GRID)
    m3 = np.asarray(Image.open(out / "LES_003_mask.png"))
    m4 = np.asarray(Image.open(out / "LES_004_mask.png"))
    m7 = np.asarray(Image.open(out / "LES_007_mask.png"))
    assert m3.shape == (90, 120) and m4.shape == (100, 100) and m7.shape == (90, 120)
    assert set(np.unique(m3).tolist()) <= {0, 255}
    assert list((out / "overlays").glob("*.png"))


def test_inference_empty_support_mask_names_the_file(trained, lesions, tmp_path):
    (tmp_path / "sup").mkdir()  # an input folder: the output goes elsewhere
    empty = tmp_path / "sup" / "empty_mask.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(empty)
    wf = bundle_workflow(
        BUNDLE_NAME, ["inference.json"], "infer", ckpt_path=str(trained / "fsms_surrogate_1shot.pt"),
        output_dir=str(tmp_path / "p"), support_images=[str(lesions / "images" / "LES_000.jpg")],
        support_masks=[str(empty)], queries=[str(lesions / "images" / "LES_001.jpg")], **SMALL,
    )  # fmt: skip
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    root = root_cause(info.value)
    assert isinstance(root, DataError) and "empty_mask.png" in str(root)
    assert not (tmp_path / "p" / "LES_001_mask.png").exists()


def test_demo_inference_runs_on_the_embedded_phantoms_without_weights(tmp_path):
    out = tmp_path / "demo"
    wf = bundle_workflow(BUNDLE_NAME, ["inference.json"], "infer", output_dir=str(out), load_pretrain=False, **SMALL)
    wf.initialize()
    wf.run()
    summary = json.loads((out / "inference_summary.json").read_text())
    assert len(summary["outputs"] if isinstance(summary, dict) else summary) == 8


def test_multi_gpu_config_runs_under_torchrun_on_cpu(lesions, tmp_path):
    cfg = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
         "-m", "monai.bundle", "run", "--config_file", cfg, "--bundle_root", str(BUNDLE),
         "--dataset_dir", str(lesions), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
         "--n_steps", "2", "--epoch_length", "1", "--n_tasks", "2", "--n_unlabeled", "1",
         "--width", "4", "--feature_channels", "8", "--image_size", "64"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "models" / "fsms_surrogate_1shot.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_shipped_weights_load_strictly_and_segment_the_phantoms(tmp_path):
    """inference.json with its defaults: the shipped model.pt (a plain state dict, strict load) on the embedded skin
    phantoms; the Dice of the 8 demo queries against the phantom masks (0.801 when the weights were shipped)."""
    path = BUNDLE / "models" / "model.pt"
    if not path.exists():
        pytest.skip("models/model.pt not trained yet")
    assert path.stat().st_size <= 20 * 1024 * 1024
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.startswith("surrogate") for k in state)  # the surrogate-trained model
    out = tmp_path / "demo"
    wf = bundle_workflow(BUNDLE_NAME, ["inference.json"], "infer", output_dir=str(out))
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    from labelless.fewshot.image.synthetic import default_fsms_data

    masks = default_fsms_data()["skin"] / "masks"
    dices = []
    for pred_path in sorted(out.glob("SKIN_*_mask.png")):
        pred = np.asarray(Image.open(pred_path)) > 0
        truth = np.asarray(Image.open(masks / pred_path.name.replace("_mask", "_segmentation"))) > 0
        assert pred.shape == truth.shape
        dices.append(2.0 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert len(dices) == 8
    assert np.mean(dices) > 0.7, dices


@pytest.mark.parametrize("weights", sorted(SHIPPED_20_EPISODES))
def test_shipped_weights_on_the_real_skin_pools(tmp_path, weights):
    """evaluate.json with each shipped weight file on the shared data's skin pools (20 of the 200 seeded 1-shot
    episodes): the figures measured when the weights were shipped, within 1 point (CPU float differences flip a few
    pixels at most)."""
    from conftest import shared_data_dir

    path = BUNDLE / "models" / weights.split()[0]
    if not path.exists():
        pytest.skip(f"models/{path.name} not trained yet")
    data = shared_data_dir()
    for sub in ("isic2016", "ham10000", "weak_samples"):
        shared_data_dir(sub)
    out = tmp_path / "eval"
    wf = bundle_workflow(
        BUNDLE_NAME, ["train.json", "evaluate.json"], "train", shared_data_dir=str(data), output_dir=str(out),
        eval_shots=[1], n_eval_episodes=20, n_overlays=0, eval_ckpt_path=str(path),
        support_threshold=weights.endswith("support_threshold"),
    )  # fmt: skip
    wf.initialize()
    wf.run()
    got = {r["pool"]: r["episode_dice"] for r in json.loads((out / "metrics.json").read_text())["results"]}
    assert set(got) == set(SHIPPED_20_EPISODES[weights])
    for pool, expected in SHIPPED_20_EPISODES[weights].items():
        assert abs(got[pool] - expected) < 0.01, (pool, got[pool], expected)
