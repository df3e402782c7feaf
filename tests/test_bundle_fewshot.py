# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The contract every few-shot volume bundle keeps (SSL-ALPNet, DSPNet, PSMNet): train / evaluate / inference through
MONAI's ConfigWorkflow from another working directory, an unseen dataset with overrides only, torchrun, metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _bundles import BUNDLES, TINY, bundle_workflow, root_cause, train_tiny
from labelless.data.phantoms import write_phantom_dataset
from labelless.errors import ConfigError

FEWSHOT_BUNDLES = ["ssl_alpnet_fewshot_segmentation", "dspnet_fewshot_segmentation", "psmnet_fewshot_segmentation"]


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("abd"), "abdomen", n_volumes=6, seed=5, shape=(64, 64, 10))


@pytest.fixture(scope="module", params=FEWSHOT_BUNDLES)
def trained(request, tmp_path_factory, abdomen) -> tuple[str, Path]:
    """(bundle, run folder): a tiny model trained for a few iterations through train.json (fold 0, Setting 1)."""
    bundle = request.param
    out = tmp_path_factory.mktemp(f"train_{bundle.split('_')[0]}")
    train_tiny(bundle, abdomen, out)
    assert (out / "models" / "fold0_setting1.pt").is_file()
    return bundle, out


@pytest.mark.parametrize("bundle", FEWSHOT_BUNDLES)
def test_bundle_layout(bundle):
    root = BUNDLES / bundle
    for rel in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/multi_gpu_train.json",
                "configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE"):
        assert (root / rel).is_file(), rel
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]


def test_optim_set_to_none_changes_no_weight(trained, abdomen, tmp_path):
    """The configs free gradient buffers between steps (optim_set_to_none=True, less memory); the weights are the
    same as with zeroed buffers."""
    bundle, run = trained
    zeroed = train_tiny(bundle, abdomen, tmp_path, optim_set_to_none=False)
    a = torch.load(run / "models" / "fold0_setting1.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(zeroed / "fold0_setting1.pt", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_checkpoint_loads_weights_only(trained):
    _, out = trained
    ckpt = torch.load(out / "models" / "fold0_setting1.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 5


def test_evaluate_writes_reports_and_lists_missing_folds(trained, abdomen):
    bundle, run = trained
    out = run / "evaluate"
    wf = bundle_workflow(
        bundle, ["train.json", "evaluate.json"], "train", dataset_dir=str(abdomen), ckpt_dir=str(run / "models"),
        output_dir=str(out), folds=[0, 1], n_overlays=1, **TINY,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "protocol" and "gt_free" in metrics
    assert metrics["folds_evaluated"] == [0] and metrics["folds_missing"] == [1]
    assert set(metrics["per_class"]) == {"LIVER", "RK", "LK", "SPLEEN"}
    assert all(0.0 <= v["dice"] <= 1.0 for v in metrics["per_class"].values())
    assert list((out / "overlays").glob("*.png"))


@pytest.mark.parametrize("which", ["eval_ckpt_path", "ckpt_dir"])
def test_evaluate_missing_checkpoint_is_an_error_before_any_output(trained, abdomen, tmp_path, which):
    bundle, run = trained
    bad = {"eval_ckpt_path": str(run / "models" / "fold0_setting1.pt.typo")} if which == "eval_ckpt_path" else {
        "ckpt_dir": str(tmp_path / "no_models")}  # fmt: skip
    out = tmp_path / "evaluate"
    args = {"ckpt_dir": str(run / "models"), "output_dir": str(out), "folds": [0], **TINY, **bad}
    wf = bundle_workflow(bundle, ["train.json", "evaluate.json"], "train", dataset_dir=str(abdomen), **args)
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    err = root_cause(info.value)
    assert isinstance(err, ConfigError)
    expected = "fold0_setting1.pt.typo does not exist" if which == "eval_ckpt_path" else "no checkpoint for any"
    assert expected in str(err)
    assert not (out / "metrics.json").exists()


def test_evaluate_unseen_dataset_with_overrides_only(trained, tmp_path):
    """A prepared-layout dataset never seen by the tests' presets: raw labels 200/500/600, own class names."""
    bundle, run = trained
    data = write_phantom_dataset(tmp_path / "cmr_like", "cardiac", n_volumes=6, seed=9, shape=(64, 64, 8))
    (data / "classmap_1.json").unlink()  # no class-slice index either: it is computed
    out = tmp_path / "eval"
    wf = bundle_workflow(
        bundle, ["train.json", "evaluate.json"], "train", dataset_dir=str(data), ckpt_dir=str(run / "models"),
        output_dir=str(out), folds=[0], label_map={"200": 1, "500": 2, "600": 3},
        class_names={"1": "MYOCARDIUM", "2": "BLOODPOOL", "3": "RIGHTVENTRICLE"},
        classes=["MYOCARDIUM", "BLOODPOOL", "RIGHTVENTRICLE"], eval_modes=["protocol"], n_overlays=0, **TINY,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"MYOCARDIUM", "BLOODPOOL", "RIGHTVENTRICLE"}
    assert metrics["per_scan"] and all(s["n_scored_slices"] > 0 for s in metrics["per_scan"])


def test_inference_keeps_query_geometry_and_resamples_other_sizes(trained, abdomen, tmp_path):
    bundle, run = trained
    # a query of another in-plane size and spacing than the network input: resampled there and back
    img = nib.load(str(abdomen / "image_2.nii.gz"))
    data = np.asarray(img.dataobj)[:60, :52]
    affine = img.affine.copy()
    affine[:3, :3] *= 1.3
    (tmp_path / "q").mkdir()  # an input folder: the predictions go elsewhere
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "q" / "odd_query.nii.gz"))
    out = tmp_path / "pred"
    wf = bundle_workflow(
        bundle, ["inference.json"], "infer", ckpt_path=str(run / "models" / "fold0_setting1.pt"), output_dir=str(out),
        support_image=str(abdomen / "image_1.nii.gz"), support_label=str(abdomen / "label_1.nii.gz"), label_value=1,
        queries=[str(tmp_path / "q" / "odd_query.nii.gz"), str(abdomen / "image_3.nii.gz")], image_size=64, **TINY,
    )  # fmt: skip
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    pred = nib.load(str(out / "odd_query_pred.nii.gz"))
    assert pred.shape == data.shape
    assert np.allclose(pred.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}
    assert (out / "image_3_pred.nii.gz").is_file()
    assert list((out / "overlays").glob("odd_query_z*.png"))


@pytest.mark.parametrize("bundle", FEWSHOT_BUNDLES)
def test_multi_gpu_config_runs_under_torchrun_on_cpu(bundle, abdomen, tmp_path):
    """multi_gpu_train.json with gloo on CPU: 2 processes, DistributedSampler, rank-0 checkpoint."""
    configs = BUNDLES / bundle / "configs"
    cfg = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
         "-m", "monai.bundle", "run", "--config_file", cfg, "--bundle_root", str(BUNDLES / bundle),
         "--dataset_dir", str(abdomen), "--derived_dir", str(tmp_path / "derived"),
         "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
         "--n_steps", "4", "--epoch_length", "2", "--encoder", "tiny", "--encoder_options", "{}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "models" / "fold0_setting1.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 4
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP
