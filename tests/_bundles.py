# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Helpers of the bundle tests: a ConfigWorkflow of a bundle by name, and the root cause of a wrapped error."""

from __future__ import annotations

import os
from pathlib import Path

from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
# tiny encoder overrides of the few-shot bundles (fast CPU tests)
TINY = {"encoder": "tiny", "encoder_options": {}}


def bundle_workflow(bundle: str, config_files: list[str], workflow_type: str, **overrides: object) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of ``bundles/<bundle>`` from its config files, metadata and logging config
    (``bundle_root`` defaults to the bundle folder; an override moves every output under another root)."""
    root = BUNDLES / bundle
    files = [str(root / "configs" / f) for f in config_files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **{"bundle_root": str(root), **overrides},
    )


def root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__`` (MONAI wraps errors raised while instantiating config items)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def train_tiny(bundle: str, dataset_dir: Path, out: Path, n_steps: int = 5, **overrides: object) -> Path:
    """Train ``bundle``'s tiny-encoder model for a few iterations through train.json, from ``out`` as the working
    directory (not the bundle's); returns the checkpoint folder ``out/models``."""
    cwd = os.getcwd()
    os.chdir(out)
    try:
        wf = bundle_workflow(
            bundle, ["train.json"], "train", dataset_dir=str(dataset_dir), derived_dir=str(out / "derived"),
            ckpt_dir=str(out / "models"), output_dir=str(out / "eval"), n_steps=n_steps, epoch_length=2,
            **{**TINY, **overrides},
        )  # fmt: skip
        wf.initialize()
        assert wf.check_properties() == []
        wf.run()
        wf.finalize()
    finally:
        os.chdir(cwd)
    return out / "models"


def phantom_liver_dices(pred_dir: Path, pids: range = range(2, 9)) -> list[float]:
    """Dice of ``<pred_dir>/image_<pid>_pred.nii.gz`` against the liver (class 1) of the embedded abdominal phantoms;
    also checks that every prediction lies on its phantom's grid."""
    import nibabel as nib
    import numpy as np

    from labelless.data.phantoms import default_dataset_dir

    data = default_dataset_dir("abdomen")
    dices = []
    for pid in pids:
        pred = nib.load(str(pred_dir / f"image_{pid}_pred.nii.gz"))
        truth = nib.load(str(data / f"label_{pid}.nii.gz"))
        assert np.allclose(pred.affine, truth.affine) and pred.shape == truth.shape
        p, t = np.asarray(pred.dataobj) > 0, np.asarray(truth.dataobj) == 1
        dices.append(float(2 * (p & t).sum() / (p.sum() + t.sum())))
    return dices
