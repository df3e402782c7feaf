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
from labelless.data.phantoms import write_phantom_dataset
from labelless.errors import DataError

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


@pytest.mark.parametrize("off", [False, "false"])  # "false" is what a command line passes
def test_inference_without_weights_only_on_request(tmp_path, trained, abdomen, off):
    wf = _infer(tmp_path, trained, abdomen, ckpt_path="/nonexistent/model.pt", load_pretrain=off)
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
        ["train.json", "evaluate.json"], "train", dataset_dir=str(data), dataset_preset="synapse",
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


def _bundle_run(config_files: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of this bundle from ``cwd``, command-line overrides as strings (as a user types
    them; fire passes ``false`` as the string "false")."""
    files = "[" + ",".join(f"'{CONFIGS / f}'" for f in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(BUNDLE),
           "--encoder", "tiny", "--encoder_options", "{}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _masks(folder: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {p.name: np.asarray(nib.load(str(p)).dataobj) > 0 for p in sorted(folder.rglob("*_pred.nii.gz"))}


def test_boolean_switches_false_through_monai_bundle_run(trained, abdomen, tmp_path):
    """``--save_predictions false`` (evaluate.json) and ``--predict_outside_extent false`` (inference.json and
    evaluate.json) given on the command line mean false and change what is written."""
    ev = ["--dataset_dir", str(abdomen), "--ckpt_dir", str(trained / "models"), "--folds", "[0]",
          "--eval_modes", "['gt_free']", "--n_overlays", "0"]  # fmt: skip
    off = _bundle_run(["train.json", "evaluate.json"], tmp_path, *ev, "--output_dir", str(tmp_path / "ev_off"),
                      "--save_predictions", "false")  # fmt: skip
    assert off.returncode == 0, off.stderr[-3000:]
    assert (tmp_path / "ev_off" / "metrics.json").is_file() and not (tmp_path / "ev_off" / "predictions").exists()
    on = _bundle_run(["train.json", "evaluate.json"], tmp_path, *ev, "--output_dir", str(tmp_path / "ev_on"),
                     "--save_predictions", "true", "--predict_outside_extent", "false")  # fmt: skip
    assert on.returncode == 0, on.stderr[-3000:]
    assert list((tmp_path / "ev_on" / "predictions" / "gt_free").glob("*.nii.gz"))

    # a support whose liver is labelled on its two middle slices only: the extent it implies for the query is
    # narrow, so predict_outside_extent=false must clear the query's outer slices
    import nibabel as nib

    lab = nib.load(str(abdomen / "label_1.nii.gz"))
    arr = np.asarray(lab.dataobj).copy()
    z_keep = np.flatnonzero((arr == 1).any(axis=(0, 1)))
    mid = z_keep[len(z_keep) // 2 - 1 : len(z_keep) // 2 + 1]
    arr[..., [z for z in range(arr.shape[2]) if z not in set(mid.tolist())]] = 0
    (tmp_path / "support").mkdir()  # an input folder: the outputs go elsewhere
    nib.save(nib.Nifti1Image(arr, lab.affine), str(tmp_path / "support" / "support_label.nii.gz"))
    inf = ["--ckpt_path", str(trained / "models" / "fold0_setting1.pt"), "--support_image",
           str(abdomen / "image_1.nii.gz"), "--support_label", str(tmp_path / "support" / "support_label.nii.gz"),
           "--label_value", "1",
           "--queries", str(abdomen / "image_2.nii.gz"), "--image_size", "64", "--n_overlays", "0"]  # fmt: skip
    full = _bundle_run(["inference.json"], tmp_path, *inf, "--output_dir", str(tmp_path / "inf_full"))
    cut = _bundle_run(["inference.json"], tmp_path, *inf, "--output_dir", str(tmp_path / "inf_cut"),
                      "--predict_outside_extent", "false")  # fmt: skip
    assert full.returncode == 0 and cut.returncode == 0, (full.stderr + cut.stderr)[-3000:]
    pf, pc = _masks(tmp_path / "inf_full"), _masks(tmp_path / "inf_cut")
    assert set(pf) == set(pc) == {"image_2_pred.nii.gz"}
    f, c = pf["image_2_pred.nii.gz"], pc["image_2_pred.nii.gz"]
    assert not (c & ~f).any() and int(c.sum()) < int(f.sum())
    # the cut removed whole slices outside the extent estimated from the support (z is the NIfTI's last axis)
    per_slice_full, per_slice_cut = f.sum(axis=(0, 1)), c.sum(axis=(0, 1))
    assert any(a > 0 and b == 0 for a, b in zip(per_slice_full, per_slice_cut))
