# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""DSPNet bundle specifics: Cal in the checkpoint and in the low-lr group, the head in both loss terms, BCMA presets
from the config, ablation switches (trained and at test time), the shipped weights. The contract shared with the other
few-shot bundles (train/evaluate/inference from any cwd, unseen dataset, torchrun) is in test_bundle_fewshot.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from _bundles import BUNDLES, TINY, bundle_workflow, phantom_liver_dices, root_cause, train_tiny
from labelless.data.phantoms import write_phantom_dataset
from labelless.errors import ConfigError, DataError

BUNDLE_NAME = "dspnet_fewshot_segmentation"
BUNDLE = BUNDLES / BUNDLE_NAME
CONFIGS = BUNDLE / "configs"
SWITCHES_OFF = {"use_fspa": False, "use_bcma": False, "use_cross_attention": False}


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("abd"), "abdomen", n_volumes=6, seed=5, shape=(64, 64, 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, abdomen) -> Path:
    return train_tiny(BUNDLE_NAME, abdomen, tmp_path_factory.mktemp("dsp"), n_steps=3)


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), **TINY, **overrides})
    return parser


def test_checkpoint_holds_cal_and_the_optimiser_its_low_lr_group(trained):
    ckpt = torch.load(trained / "fold0_setting1.pt", map_location="cpu", weights_only=True)
    assert "head.bcma.cal" in ckpt["model"] and ckpt["model"]["head.bcma.cal"].shape == (256, 256)
    lrs = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(lrs[0] * 1e-4)
    assert len(ckpt["optimizer"]["param_groups"][1]["params"]) == 1  # Cal only


def test_par_term_uses_the_model_head():
    parser = _parser()
    net, loss = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    assert loss.par_head is net.head
    assert not list(loss.parameters())  # the head is referenced, not registered twice


@pytest.mark.parametrize(
    "overrides, alpha, weights",
    [
        ({}, 0.3, (0.2, 0.8, 0.2)),
        ({"setting": 2}, 0.2, (0.3, 0.6, 0.3)),
        ({"dataset_preset": "cmr"}, 0.3, (0.1, 0.9, 0.1)),
        ({"setting": 2, "bcma_alpha": 0.5, "bcma_weights": [0.0, 1.0, 0.0]}, 0.5, (0.0, 1.0, 0.0)),
    ],
)
def test_bcma_presets_follow_dataset_and_setting(overrides, alpha, weights):
    head = _parser(**overrides).get_parsed_content("network_def").head
    assert head.bcma_alpha == pytest.approx(alpha) and head.bcma_alpha_bg == pytest.approx(alpha)
    assert head.bcma.cal[5, 4:7].tolist() == pytest.approx(list(weights))


def test_undefined_preset_is_a_config_error():
    with pytest.raises(Exception) as info:
        _parser(dataset_preset="cmr", setting=2).get_parsed_content("network_def")
    root = root_cause(info.value)
    assert isinstance(root, ConfigError) and "Setting 2" in str(root)


def test_ablation_switches_train_and_drop_the_modules(abdomen, tmp_path):
    models = train_tiny(BUNDLE_NAME, abdomen, tmp_path, n_steps=2, **SWITCHES_OFF)
    ckpt = torch.load(models / "fold0_setting1.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("head.") for k in ckpt["model"])
    assert len(ckpt["optimizer"]["param_groups"]) == 1


@pytest.mark.parametrize("switch", ["use_fspa", "use_bcma", "use_cross_attention"])
def test_test_time_ablation_of_a_trained_model(trained, abdomen, tmp_path, switch):
    """The full model's checkpoint evaluated with one module switched off (BCMA off ignores the trained Cal)."""
    out = tmp_path / "eval"
    wf = bundle_workflow(
        BUNDLE_NAME, ["train.json", "evaluate.json"], "train", dataset_dir=str(abdomen), ckpt_dir=str(trained),
        output_dir=str(out), folds=[0], classes=["LIVER"], eval_modes=["protocol"], n_overlays=0,
        **{switch: False}, **TINY,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["per_class"]["LIVER"]["dice"] <= 1.0


def test_ssl_alpnet_checkpoint_is_refused_with_bcma(trained, abdomen, tmp_path):
    """Strict loading: a checkpoint without Cal does not silently run DSPNet with an untrained Cal."""
    ckpt = torch.load(trained / "fold0_setting1.pt", map_location="cpu", weights_only=True)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}
    torch.save(state, tmp_path / "alp.pt")
    wf = bundle_workflow(
        BUNDLE_NAME, ["inference.json"], "infer", ckpt_path=str(tmp_path / "alp.pt"), output_dir=str(tmp_path / "p"),
        support_image=str(abdomen / "image_1.nii.gz"), support_label=str(abdomen / "label_1.nii.gz"), label_value=1,
        queries=[str(abdomen / "image_2.nii.gz")], image_size=64, **TINY,
    )  # fmt: skip
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    root = root_cause(info.value)
    assert isinstance(root, DataError) and "missing keys" in str(root) and "alp.pt" in str(root)


def test_shipped_weights_load_strictly_and_segment_phantom_livers(tmp_path):
    """inference.json with its defaults (shipped weights, embedded phantoms, Setting-1 abdominal BCMA preset)."""
    path = BUNDLE / "models" / "model.pt"
    if not path.exists():
        pytest.skip("models/model.pt not trained yet")
    assert path.stat().st_size <= 20 * 1024 * 1024
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "head.bcma.cal" in state and state["head.bcma.cal"].shape == (256, 256)
    out = tmp_path / "pred"
    wf = bundle_workflow(BUNDLE_NAME, ["inference.json"], "infer", output_dir=str(out))
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    dices = phantom_liver_dices(out)
    assert np.mean(dices) > 0.6, dices
