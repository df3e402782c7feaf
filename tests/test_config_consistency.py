# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Config sections meant to be identical across bundles stay identical.

Bundles are standalone (the Model Zoo copies a bundle folder on its own), so shared sections are written out in each
bundle instead of being imported from one file. This test is what keeps those copies from drifting: when one is
changed, change them all (or move the section out of the list below, with a reason).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _bundles import BUNDLES
from labelless.resources import META_SCHEMA

ALL = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
VOLUME = ["ssl_alpnet_fewshot_segmentation", "dspnet_fewshot_segmentation", "psmnet_fewshot_segmentation"]
#: bundles trained with one item per iteration (SABR-Net's batch size depends on its stage: 1 for stage 1, 4 after)
ONE_ITEM = [b for b in ALL if b != "sabrnet_semisupervised_ultrasound_segmentation"]

#: (bundles, file): whole files that must be byte-identical
IDENTICAL_FILES = [
    (ALL, "logging.conf"),
    (VOLUME, "evaluate.json"),
    (VOLUME, "multi_gpu_train.json"),
    (VOLUME, "adapt.json"),
]
#: (bundles, file, config ids): sections that must be equal (``#`` separates nested ids, as in MONAI)
IDENTICAL_SECTIONS = [
    (ALL, "train.json", ["bundle_root", "device", "dataset_dir", "train#inferer"]),
    (ONE_ITEM, "train.json", ["train#dataloader#batch_size"]),
    (ALL, "inference.json", ["bundle_root", "device", "inferer", "load_pretrain", "dataloader", "initialize", "run",
                             "finalize"]),  # fmt: skip
    (VOLUME, "train.json", ["dataset_preset", "label_map", "class_names", "derived_dir", "amp", "seed",
                            "setting", "label_set", "fold", "n_shots", "augmentation", "encoder", "encoder_options",
                            "pretrained_path", "labelled_dataset", "train#dataset", "lr_scheduler",
                            "ckpt_name"]),  # fmt: skip
    (VOLUME, "inference.json", ["dataset_dir", "support_image", "support_label", "label_value", "queries",
                                "support_slices", "normalization", "norm_stats", "image_size", "n_shots",
                                "n_overlays", "predict_outside_extent", "batch_size", "inputs", "datalist",
                                "preprocessing", "dataset", "dataloader", "postprocessing", "handlers", "evaluator",
                                "encoder", "encoder_options", "pretrained_path"]),  # fmt: skip
    (ALL, "metadata.json", ["schema", "monai_version", "pytorch_version", "numpy_version", "intended_use",
                            "authors", "copyright"]),  # fmt: skip
]


def _get(config: dict, cid: str):
    node = config
    for part in cid.split("#"):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(cid)
        node = node[part]
    return node


def _load(bundle: str, name: str) -> dict:
    return json.loads((BUNDLES / bundle / "configs" / name).read_text(encoding="utf-8"))


def test_bundle_groups_exist():
    assert set(VOLUME) <= set(ALL) and "fsms_fewshot_skin_segmentation" in ALL


@pytest.mark.parametrize("bundles,name", IDENTICAL_FILES, ids=[f"{n}:{len(b)}" for b, n in IDENTICAL_FILES])
def test_identical_files(bundles: list[str], name: str):
    texts = {b: (BUNDLES / b / "configs" / name).read_bytes() for b in bundles}
    first = bundles[0]
    differ = [b for b in bundles if texts[b] != texts[first]]
    assert not differ, f"configs/{name} of {differ} differs from {first}'s; keep the copies identical"


@pytest.mark.parametrize(
    "bundles,name,ids", IDENTICAL_SECTIONS, ids=[f"{n}:{len(b)}" for b, n, _ in IDENTICAL_SECTIONS]
)
def test_identical_sections(bundles: list[str], name: str, ids: list[str]):
    configs = {b: _load(b, name) for b in bundles}
    first = bundles[0]
    for cid in ids:
        values = {}
        for b in bundles:
            try:
                values[b] = _get(configs[b], cid)
            except KeyError:
                pytest.fail(f"bundles/{b}/configs/{name} has no {cid!r} (listed as shared)")
        differ = [b for b in bundles if values[b] != values[first]]
        assert not differ, f"{name}#{cid} of {differ} differs from {first}'s: {values[differ[0]]!r} vs " + repr(
            values[first]
        )


def test_the_check_can_fail(tmp_path: Path):
    """The comparison sees a one-character drift (guards against a check that cannot fail)."""
    a = _load(VOLUME[0], "train.json")
    b = json.loads(json.dumps(a))
    b["lr_scheduler"]["gamma"] = 0.96
    assert _get(a, "lr_scheduler") != _get(b, "lr_scheduler")


@pytest.mark.parametrize("bundle", ALL)
def test_metadata_verifies_offline(bundle):
    """Every bundle's metadata.json against the Model Zoo schema (a local copy: nothing is downloaded)."""
    res = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
         str(BUNDLES / bundle / "configs" / "metadata.json"), "--filepath", str(META_SCHEMA)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "verified" in (res.stdout + res.stderr).lower()
