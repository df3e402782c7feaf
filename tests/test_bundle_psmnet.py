# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""PSMNet bundle specifics: MCAM weights in the checkpoint, the reference loss (query CE only) with PAR and soft Dice
as options, PSM-only / MCAM-only ablation switches, the shipped weights. The contract shared with the other few-shot
bundles (train/evaluate/inference from any cwd, unseen dataset, torchrun) is in test_bundle_fewshot.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from _bundles import BUNDLES, TINY, bundle_workflow, phantom_liver_dices, train_tiny
from labelless.data.phantoms import write_phantom_dataset

BUNDLE_NAME = "psmnet_fewshot_segmentation"
BUNDLE = BUNDLES / BUNDLE_NAME
CONFIGS = BUNDLE / "configs"


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("abd"), "abdomen", n_volumes=6, seed=5, shape=(64, 64, 10))


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), **TINY, **overrides})
    return parser


def test_reference_loss_is_query_ce_only_and_the_options_use_the_model_head():
    parser = _parser()
    loss, net = parser.get_parsed_content("loss"), parser.get_parsed_content("network_def")
    assert loss.par_weight == 0.0 and loss.dice_weight == 0.0
    assert loss.par_head is net.head
    assert parser.get_parsed_content("n_steps") == 50100


@pytest.mark.parametrize(
    "overrides, has_mcam, psm",
    [({}, True, True), ({"use_mcam": "false"}, False, True), ({"use_psm": False}, True, False)],
)
def test_ablation_switches_from_the_command_line(overrides, has_mcam, psm):
    head = _parser(**overrides).get_parsed_content("network_def").head
    assert (head.mcam is not None) == has_mcam and head.use_psm == psm


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_mcam": False},  # PSM only
        {"use_psm": False},  # MCAM only
        {"par_weight": 1.0, "dice_weight": 0.5},  # the reference's zero-weighted terms switched on
    ],
)
def test_training_variants_run_and_save_mcam_weights(abdomen, tmp_path, overrides):
    models = train_tiny(BUNDLE_NAME, abdomen, tmp_path, n_steps=2, **overrides)
    ckpt = torch.load(models / "fold0_setting1.pt", map_location="cpu", weights_only=True)
    mcam_keys = [k for k in ckpt["model"] if k.startswith("head.mcam.")]
    assert bool(mcam_keys) == overrides.get("use_mcam", True)
    if mcam_keys:  # W_out starts at zero and moved: MCAM is trained
        assert float(ckpt["model"]["head.mcam.blocks.0.w_out.weight"].abs().sum()) > 0.0


def test_shipped_weights_load_strictly_and_segment_phantom_livers(tmp_path):
    path = BUNDLE / "models" / "model.pt"
    if not path.exists():
        pytest.skip("models/model.pt not trained yet")
    assert path.stat().st_size <= 20 * 1024 * 1024
    out = tmp_path / "pred"
    wf = bundle_workflow(BUNDLE_NAME, ["inference.json"], "infer", output_dir=str(out))
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    dices = phantom_liver_dices(out)
    assert np.mean(dices) > 0.5, dices
