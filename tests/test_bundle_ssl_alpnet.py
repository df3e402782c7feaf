# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""SSL-ALPNet bundle specifics: inference errors, the CT preset, the shipped weights (main job, ckpt_export). The
contract shared with the other few-shot bundles is in test_bundle_fewshot.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from _bundles import BUNDLES, TINY, bundle_workflow, phantom_liver_dices, root_cause, train_tiny
from labelless.errors import DataError
from labelless.phantoms import write_phantom_dataset

BUNDLE_NAME = "ssl_alpnet_fewshot_segmentation"
BUNDLE = BUNDLES / BUNDLE_NAME
CONFIGS = BUNDLE / "configs"


def _workflow(config_files, workflow_type, **overrides) -> ConfigWorkflow:
    return bundle_workflow(BUNDLE_NAME, config_files, workflow_type, **overrides)


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("abd"), "abdomen", n_volumes=6, seed=5, shape=(64, 64, 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, abdomen) -> Path:
    """A tiny model trained for a few iterations through train.json (fold 0, Setting 1)."""
    out = tmp_path_factory.mktemp("train")
    train_tiny(BUNDLE_NAME, abdomen, out)
    return out


def _infer(tmp_path, trained, abdomen, **kw) -> ConfigWorkflow:
    args = {
        "ckpt_path": str(trained / "models" / "fold0_setting1.pt"), "output_dir": str(tmp_path / "p"),
        "support_image": str(abdomen / "image_1.nii.gz"), "support_label": str(abdomen / "label_1.nii.gz"),
        "label_value": 1, "queries": [str(abdomen / "image_2.nii.gz")], "image_size": 64, **TINY,
    }  # fmt: skip
    args.update(kw)
    return _workflow(["inference.json"], "infer", **args)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"label_value": 7}, "label value 7 is not present"),
        ({"ckpt_path": "/nonexistent/model.pt"}, "checkpoint not found"),
        ({"encoder": "resnet18", "encoder_options": {"base_width": 8}}, "does not fit this network"),
        ({"queries": ["/nonexistent/query.nii.gz"]}, "does not exist"),
        ({"support_slices": [2, 4, 99]}, "support slice 99 is outside the volume"),
        ({"support_slices": [0, 4, 5]}, "support slice 0 does not contain label 1"),
    ],
)
def test_inference_bad_input_is_a_clear_error(tmp_path, trained, abdomen, overrides, needle):
    wf = _infer(tmp_path, trained, abdomen, **overrides)
    with pytest.raises(Exception) as info:  # MONAI wraps config errors in RuntimeError: check the root cause
        wf.initialize()
        wf.run()
    root = root_cause(info.value)
    assert isinstance(root, DataError), repr(root)
    assert needle in str(root)


def test_inference_without_weights_only_on_request(tmp_path, trained, abdomen):
    wf = _infer(tmp_path, trained, abdomen, ckpt_path="/nonexistent/model.pt", load_pretrain=False)
    wf.initialize()
    wf.run()
    assert (tmp_path / "p" / "image_2_pred.nii.gz").is_file()


def test_shipped_weights_are_small_plain_state_dict():
    path = BUNDLE / "models" / "model.pt"
    if not path.exists():
        pytest.skip("models/model.pt not trained yet")
    assert path.stat().st_size <= 20 * 1024 * 1024
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    from labelless.networks.fewshot import build_fewshot_segmentor

    net = build_fewshot_segmentor("resnet18", base_width=32)
    net.load_state_dict(state)


def test_ct_preset_uses_fold_statistics(trained, tmp_path):
    """dataset=synapse (CT rule: z-score with the fold's training statistics) selected with one override."""
    data = write_phantom_dataset(tmp_path / "ct", "abdomen", n_volumes=6, seed=2, shape=(64, 64, 8), modality="ct")
    out = tmp_path / "eval"
    wf = _workflow(
        ["train.json", "evaluate.json"], "train", dataset_dir=str(data), dataset="synapse",
        ckpt_dir=str(trained / "models"), output_dir=str(out), folds=[0], classes=[1, 2, 3],
        eval_modes=["protocol"], n_overlays=0, **TINY,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"SPLEEN", "KID_R", "KID_L"}


def test_main_job_shipped_weights_segment_phantom_livers(tmp_path):
    """The README's first command: inference.json with its defaults (shipped weights, embedded phantoms)."""
    if not (BUNDLE / "models" / "model.pt").exists():
        pytest.skip("models/model.pt not trained yet")
    out = tmp_path / "pred"
    wf = _workflow(["inference.json"], "infer", output_dir=str(out))
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    dices = phantom_liver_dices(out)
    assert np.mean(dices) > 0.6, dices


def test_ckpt_export_torchscript_of_the_trained_encoder(tmp_path):
    """ckpt_export writes the trained part (the encoder) to TorchScript; the parameter-free head stays in Python."""
    if not (BUNDLE / "models" / "model.pt").exists():
        pytest.skip("models/model.pt not trained yet")
    ts = tmp_path / "model.ts"
    res = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "export_def", "--filepath", str(ts),
         "--ckpt_file", str(BUNDLE / "models" / "model.pt"), "--meta_file", str(CONFIGS / "metadata.json"),
         "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(BUNDLE)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    from labelless.networks.fewshot import build_fewshot_segmentor
    from labelless.networks.prototypes import ALPHead

    net = build_fewshot_segmentor("resnet18", base_width=32)
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    scripted = torch.jit.load(str(ts), map_location="cpu")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f_ts, f_net = scripted(x), net.encoder(x)
        assert torch.allclose(f_ts, f_net, atol=1e-5)
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 16:48] = 1
        logits_ts = ALPHead()(f_ts[:1], mask, f_ts[1:], window=2, output_size=(64, 64))
        logits = net(x[:1], mask, x[1:])
    assert torch.allclose(logits_ts, logits, atol=1e-4)
