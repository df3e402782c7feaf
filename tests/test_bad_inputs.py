# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Bad-input regression suite (issue 17, items 4 and 5): the ``labelless`` command line and the six bundles' train /
evaluate / inference configs (through MONAI's ConfigWorkflow) with wrong options and broken data.

Every failing case asserts

(a) the failure: in process, an exception whose cause chain holds a labelless :class:`ConfigError` /
    :class:`DataError` (the innermost one is what the command line and the bundle excepthook print; an ``OSError``
    chained *below* it with ``raise ... from`` is only detail) and no sign that the computation started (the
    functions that do the work are replaced by tripwires); in a subprocess, a non-zero exit status;
(b) the message: one line that names the option or the file (and, for subprocesses, the last line of stderr is
    ``labelless: error: ...`` and there is no traceback);
(c) the inputs: the sha256 of every file under the shared input root, and its folder list, are unchanged (nothing
    was written into an input folder, not even an empty output folder).

A few cases that used to fail and are now handled (``--folds 0``, a 16-bit PNG, ``--queries <prepared folder>``)
check the result instead. Inputs are tiny (32–48 px) and built once per module.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from _bundles import BUNDLES, TINY, bundle_workflow
from labelless.cli import LabellessCLI
from labelless.data.phantoms import write_phantom_dataset
from labelless.errors import ConfigError, DataError, LabellessError, find_labelless_error
from labelless.semisup.synthetic import write_synthetic_ultrasound
from labelless.weak.synthetic import write_weak_phantoms

VOL = "ssl_alpnet_fewshot_segmentation"
DSP = "dspnet_fewshot_segmentation"
PSM = "psmnet_fewshot_segmentation"
FSMS = "fsms_fewshot_skin_segmentation"
SABR = "sabrnet_semisupervised_ultrasound_segmentation"
CLT = "cltnet_weakly_supervised_segmentation"
FSMS_SMALL = {"width": 4, "feature_channels": 8, "image_size": 32}
SABR_TINY = {"image_size": 32, "network_profile": "tiny"}
CLT_TINY = {"image_size": 32, "ngf": 4, "ndf": 4}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------------ inputs
def _tree(root: Path) -> dict[str, str]:
    """Every folder and file under ``root``: ``{relative path: sha256 of the file, or "<dir>"}``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _lesions(root: Path, n: int = 6) -> Path:
    """FSMS-style image/mask folder: RGB 40×48 PNGs with a dark round lesion, masks ``<id>.png`` (0/255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(n):
        mask = ((yy - 20) ** 2 + (xx - 20 - i) ** 2) < 100
        img = np.clip(np.full((40, 48, 3), 180.0) + rng.normal(0, 8, (40, 48, 3)), 0, 255).astype(np.uint8)
        img[mask] = (90, 60, 50)
        Image.fromarray(img).save(root / "images" / f"L{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"L{i}.png")
    return root


def _odd_files(x: Path, abd: Path) -> None:
    """Broken and unusual files, each used by one or more cases."""
    x.mkdir()
    img = nib.load(str(abd / "image_2.nii.gz"))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), str(x / "nan_query.nii.gz"))
    lab = nib.load(str(abd / "label_1.nii.gz"))
    shifted = lab.affine.copy()
    shifted[:3, 3] += 10.0  # same grid, another position
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), shifted), str(x / "shifted_label.nii.gz"))
    (x / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (x / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (x / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"foo": torch.zeros(1)}, x / "nokeys.pt")  # readable, but none of the network's keys
    rgb = np.full((40, 48, 3), 120, np.uint8)
    Image.fromarray(rgb[:1, :1]).save(x / "one_px.png")
    Image.fromarray(rgb[:, :3]).save(x / "thin.png")
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)).save(x / "deep16.png")
    Image.fromarray(np.full((40, 48), 1000.0, np.float32), mode="F").save(x / "float.tif")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(x / "small_mask.png")
    nib.save(nib.Nifti1Image(np.full((8, 8), np.nan, np.float32), np.eye(4)), str(x / "nan_slice.nii.gz"))
    (x / "afile").write_text("a file, not a folder")
    (x / "empty").mkdir()
    (x / "tags.csv").write_text("foo,bar\n1,2\n")
    (x / "meta.json").write_text("{not json")
    (x / "preds").mkdir()
    nan_set = x / "nan_set"  # a prepared layout whose fold-0 training scan 4 holds a NaN
    nan_set.mkdir()
    for f in abd.glob("*_[0-9]*.nii.gz"):
        (nan_set / f.name).write_bytes(f.read_bytes())
    four = nib.load(str(abd / "image_4.nii.gz"))
    a4 = np.asarray(four.dataobj).astype(np.float32)
    a4[3, 3, 3] = np.inf
    nib.save(nib.Nifti1Image(a4, four.affine), str(nan_set / "image_4.nii.gz"))
    weak_empty = x / "weak_empty"  # weak-domain layout with an empty trainA
    (weak_empty / "trainA").mkdir(parents=True)
    (weak_empty / "trainB").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(weak_empty / "trainB" / "b.png")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The one input root of every case (its tree is compared before and after each case)."""
    root = tmp_path_factory.mktemp("inputs")
    abd = write_phantom_dataset(root / "abd", "abdomen", n_volumes=6, seed=5, shape=(32, 32, 6))
    write_weak_phantoms(root / "weak", n_train=3, n_test=2, n_val=2, size=32, seed=2)
    write_synthetic_ultrasound(root / "us", kind="head", n_labeled=6, n_unlabeled=3, seed=3, size=48)
    _lesions(root / "les")
    _odd_files(root / "x", abd)
    # a tiny trained volume model (fold 0, Setting 1): the evaluation cases' checkpoint folder
    work = tmp_path_factory.mktemp("train")
    wf = bundle_workflow(VOL, ["train.json"], "train", dataset_dir=str(abd), derived_dir=str(work / "derived"),
                         ckpt_dir=str(root / "models"), output_dir=str(work / "eval"), n_steps=1, epoch_length=1,
                         **TINY)  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (root / "models" / "fold0_setting1.pt").is_file()
    return root


@pytest.fixture(scope="module")
def baseline(inputs) -> dict[str, str]:
    return _tree(inputs)


@pytest.fixture(scope="module")
def readonly(tmp_path_factory) -> Path:
    """An output folder that cannot be created: below a mode-555 folder, or (as root, who may write there) in sysfs,
    which refuses new entries even to root."""
    if os.geteuid() != 0:
        ro = tmp_path_factory.mktemp("ro")
        ro.chmod(0o555)
        yield ro / "out"
        ro.chmod(0o755)
        return
    probe = Path("/sys/labelless_bad_inputs_probe")
    try:
        probe.mkdir()
    except OSError:
        yield probe / "out"
        return
    probe.rmdir()
    pytest.skip("no read-only location available to this user")


class WorkStartedError(Exception):
    """Raised by the tripwires: the computation began although the input was bad."""


def _tripwire(*args: Any, **kwargs: Any) -> None:
    raise WorkStartedError("the computation started before the bad input was reported")


#: functions that do the work of a run (a training loop, an evaluation, a segmentation, a mask written)
WORK = [
    ("ignite.engine", "Engine.run"),
    ("labelless.fewshot.volume.protocol", "evaluate"),
    ("labelless.fewshot.volume.protocol", "score_predictions"),
    ("labelless.fewshot.volume.protocol", "segment_volume"),
    ("labelless.fewshot.image.workflow", "evaluate_pools"),
    ("labelless.fewshot.image.inference", "write_image2d"),
    ("labelless.semisup.protocol", "evaluate_items"),
    ("labelless.semisup.inference", "predict_masks"),
    ("labelless.weak.workflow", "evaluate_images"),
    ("labelless.weak.inference", "WeakSegmentationInferenceRunner.predict"),
]


@pytest.fixture
def tripwires(monkeypatch):
    import importlib

    for module, attr in WORK:
        target: Any = importlib.import_module(module)
        *owners, name = attr.split(".")
        for owner in owners:
            target = getattr(target, owner)
        monkeypatch.setattr(target, name, _tripwire)


def _check_error(exc: BaseException, needles: tuple[str, ...]) -> str:
    """(a) a labelless ConfigError/DataError caused the failure (not a tripwire), (b) one line naming the needles
    (plain substrings, or ``re:<pattern>``)."""
    err = find_labelless_error(exc)
    assert err is not None, f"no labelless error in the chain of {type(exc).__name__}: {exc}"
    assert isinstance(err, (ConfigError, DataError)), repr(err)
    chain, e = [], exc
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert not any(isinstance(c, WorkStartedError) for c in chain), "the computation started before the error"
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg and msg, f"not one line: {msg!r}"
    for needle in needles:
        if needle.startswith("re:"):
            assert re.search(needle[3:], msg), (needle, msg)
        else:
            assert needle in msg, (needle, msg)
    return msg


def _fmt(value: Any, inputs: Path, out: Path) -> Any:
    """Case values name files as ``{in}/...`` (the input root) and ``{out}/...`` (this case's output root)."""
    if isinstance(value, str):
        return value.replace("{in}", str(inputs)).replace("{out}", str(out))
    if isinstance(value, (list, tuple)):
        return type(value)(_fmt(v, inputs, out) for v in value)
    if isinstance(value, dict):
        return {k: _fmt(v, inputs, out) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ bundle cases
def _vol_train(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/abd", "derived_dir": "{out}/derived", "ckpt_dir": "{out}/models",
            "output_dir": "{out}/eval", "n_steps": 1, "epoch_length": 1, **TINY}  # fmt: skip
    return VOL, ["train.json"], "train", {**base, **kw}


def _vol_eval(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/abd", "ckpt_dir": "{in}/models", "output_dir": "{out}/eval", "folds": [0], **TINY}
    return VOL, ["train.json", "evaluate.json"], "train", {**base, **kw}


def _vol_inf(bundle: str = VOL, **kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"load_pretrain": False, "output_dir": "{out}/pred", "support_image": "{in}/abd/image_1.nii.gz",
            "support_label": "{in}/abd/label_1.nii.gz", "label_value": 1, "queries": ["{in}/abd/image_2.nii.gz"],
            "image_size": 32, **TINY}  # fmt: skip
    return bundle, ["inference.json"], "infer", {**base, **kw}


def _fsms_train(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/les", "ckpt_dir": "{out}/models", "output_dir": "{out}/eval", "n_steps": 1,
            "epoch_length": 1, "n_tasks": 1, "n_unlabeled": 1, **FSMS_SMALL}  # fmt: skip
    return FSMS, ["train.json"], "train", {**base, **kw}


def _fsms_eval(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/les", "output_dir": "{out}/eval", "eval_ckpt_path": None, "eval_shots": [1],
            "n_eval_episodes": 1, "n_overlays": 0, **FSMS_SMALL}  # fmt: skip
    return FSMS, ["train.json", "evaluate.json"], "train", {**base, **kw}


def _fsms_inf(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"load_pretrain": False, "output_dir": "{out}/pred", "support_images": ["{in}/les/images/L0.png"],
            "support_masks": ["{in}/les/masks/L0.png"], "queries": ["{in}/les/images/L1.png"], **FSMS_SMALL}
    return FSMS, ["inference.json"], "infer", {**base, **kw}


def _sabr_train(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/us", "bundle_root": "{out}", "stage": "finetune", "init_ckpt": None, "n_steps": 1,
            "epoch_length": 1, "val_interval": 1, **SABR_TINY}  # fmt: skip
    return SABR, ["train.json"], "train", {**base, **kw}


def _sabr_eval(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/us", "bundle_root": "{out}", "output_dir": "{out}/eval", "eval_ckpt_path": None,
            **SABR_TINY}  # fmt: skip
    return SABR, ["train.json", "evaluate.json"], "train", {**base, **kw}


def _sabr_inf(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"load_pretrain": False, "images": "{in}/us/unlabeled", "output_dir": "{out}/pred", **SABR_TINY}
    return SABR, ["inference.json"], "infer", {**base, **kw}


def _clt_train(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/weak", "ckpt_dir": "{out}/models", "output_dir": "{out}/eval", "n_steps": 1,
            "epoch_length": 1, "val_interval": 1, **CLT_TINY, "image_size": 96}  # fmt: skip
    return CLT, ["train.json"], "train", {**base, **kw}


def _clt_eval(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"dataset_dir": "{in}/weak", "output_dir": "{out}/eval", "eval_ckpt_path": None, **CLT_TINY}
    return CLT, ["train.json", "evaluate.json"], "train", {**base, **kw}


def _clt_inf(**kw: Any) -> tuple[str, list[str], str, dict]:
    base = {"load_pretrain": False, "images": "{in}/weak/testA/images", "output_dir": "{out}/pred", **CLT_TINY}
    return CLT, ["inference.json"], "infer", {**base, **kw}


MUST_INT = "must be an integer"
MUST_NUM = "must be a number"
INSIDE = "lies inside the"

#: (id, workflow, needles of the message)
BUNDLE_CASES: list[tuple[str, tuple, tuple[str, ...]]] = [
    # --- few-shot volume bundles (SSL-ALPNet; DSPNet and PSMNet for their own options): train.json
    ("vol-train-n_steps-negative", _vol_train(n_steps=-1), ("n_steps", MUST_INT, ">= 1", "-1")),
    ("vol-train-n_steps-text", _vol_train(n_steps="x"), ("n_steps", MUST_INT, "'x'")),
    ("vol-train-epoch_length-0", _vol_train(epoch_length=0), ("epoch_length", MUST_INT)),
    ("vol-train-learning_rate-text", _vol_train(learning_rate="x"), ("learning_rate", MUST_NUM, "> 0")),
    ("vol-train-learning_rate-negative", _vol_train(learning_rate=-1), ("learning_rate", MUST_NUM)),
    ("vol-train-fold-text", _vol_train(fold="a"), ("fold", MUST_INT)),
    ("vol-train-fold-7", _vol_train(fold=7), ("fold", "0..4", "7")),
    ("vol-train-setting-3", _vol_train(setting=3), ("setting", "1..2")),
    ("vol-train-n_shots-text", _vol_train(n_shots="abc"), ("n_shots", MUST_INT, "'abc'")),
    ("vol-train-seed-text", _vol_train(seed="x"), ("seed", MUST_INT)),
    ("vol-train-num_workers-negative", _vol_train(num_workers=-1), ("num_workers", ">= 0")),
    ("vol-train-log_every-0", _vol_train(log_every=0), ("log_every", ">= 1")),
    ("vol-train-proto_threshold-2", _vol_train(proto_threshold=2), ("proto_threshold", "[0, 1]")),
    ("vol-train-resume-maybe", _vol_train(resume="maybe"), ("resume", "true or false")),
    ("vol-train-augmentation", _vol_train(augmentation="bogus"), ("augmentation", "'bogus'")),
    ("vol-train-missing-dataset", _vol_train(dataset_dir="{in}/nope"), ("nope", "does not exist")),
    ("vol-train-wrong-layout", _vol_train(dataset_dir="{in}/les"), ("les", "image_<id>.nii.gz")),
    ("vol-train-preset", _vol_train(dataset_preset="bogus"), ("dataset preset", "'bogus'")),
    ("vol-train-output_dir-file", _vol_train(output_dir="{in}/x/afile"), ("output_dir", "afile", "is a file")),
    ("vol-train-ckpt_dir-file", _vol_train(ckpt_dir="{in}/x/afile"), ("ckpt_dir", "afile", "is a file")),
    ("vol-train-derived_dir-in-dataset", _vol_train(derived_dir="{in}/abd/derived"), ("derived_dir", INSIDE)),
    ("vol-train-inf-image", _vol_train(dataset_dir="{in}/x/nan_set"), ("image_4.nii.gz", "NaN or infinite")),
    ("dspnet-train-attention_temperature", (DSP,) + _vol_train(attention_temperature=0)[1:],
     ("attention_temperature", "> 0")),
    ("psmnet-train-psm_depth", (PSM,) + _vol_train(psm_depth=0)[1:], ("psm_depth", ">= 1")),
    # evaluate.json
    ("vol-eval-folds-text", _vol_eval(folds="abc"), ("folds", "list of integers", "'abc'")),
    ("vol-eval-folds-9", _vol_eval(folds=[9]), ("folds", "0..4", "9")),
    ("vol-eval-n_overlays-negative", _vol_eval(n_overlays=-1), ("n_overlays", ">= 0", "-1")),
    ("vol-eval-output-in-dataset", _vol_eval(output_dir="{in}/abd/eval"), ("output_dir", INSIDE, "abd")),
    ("vol-eval-batch_size-0", _vol_eval(eval_batch_size=0), ("eval_batch_size", ">= 1")),
    ("vol-eval-modes", _vol_eval(eval_modes=["bogus"]), ("eval_modes", "'bogus'")),
    ("vol-eval-z_margin", _vol_eval(z_margin=-1), ("z_margin", ">= 0")),
    ("vol-eval-save_predictions", _vol_eval(save_predictions="maybe"), ("save_predictions", "true or false")),
    ("vol-eval-n_shots-text", _vol_eval(n_shots="abc"), ("n_shots", MUST_INT)),
    ("vol-eval-classes", _vol_eval(classes=["NOPE"]), ("'NOPE'", "label map")),
    ("vol-eval-missing-ckpt", _vol_eval(eval_ckpt_path="{in}/models/typo.pt"), ("eval_ckpt_path", "typo.pt")),
    ("vol-eval-garbage-ckpt", _vol_eval(eval_ckpt_path="{in}/x/garbage.pt"), ("garbage.pt", "cannot read")),
    ("vol-eval-ckpt-missing-keys", _vol_eval(eval_ckpt_path="{in}/x/nokeys.pt"), ("nokeys.pt", "missing keys")),
    # inference.json
    ("vol-infer-label_value-text", _vol_inf(label_value="abc"), ("label_value", MUST_NUM, "'abc'")),
    ("vol-infer-image_size-negative", _vol_inf(image_size=-64), ("image_size", ">= 8", "-64")),
    ("vol-infer-support-affine", _vol_inf(support_label="{in}/x/shifted_label.nii.gz"),
     ("shifted_label.nii.gz", "affine")),
    ("vol-infer-output-in-queries", _vol_inf(output_dir="{in}/abd/pred"), ("output_dir", INSIDE, "abd")),
    ("vol-infer-output-file", _vol_inf(output_dir="{in}/x/afile"), ("output_dir", "is a file")),
    ("vol-infer-n_overlays-negative", _vol_inf(n_overlays=-1), ("n_overlays", ">= 0")),
    ("vol-infer-batch_size-0", _vol_inf(batch_size=0), ("batch_size", ">= 1")),
    ("vol-infer-n_shots-text", _vol_inf(n_shots="abc"), ("n_shots", MUST_INT)),
    ("vol-infer-support_slices-text", _vol_inf(support_slices="x"), ("support_slices", "'x'")),
    ("vol-infer-norm_stats-std-0", _vol_inf(norm_stats=[0, 0]), ("norm_stats std", "> 0")),
    ("vol-infer-normalization", _vol_inf(normalization="bogus"), ("normalization", "'bogus'")),
    ("vol-infer-nan-query", _vol_inf(queries=["{in}/x/nan_query.nii.gz"]), ("nan_query.nii.gz", "NaN")),
    ("vol-infer-corrupt-query", _vol_inf(queries=["{in}/x/corrupt.nii.gz"]), ("corrupt.nii.gz", "cannot read")),
    ("vol-infer-corrupt-support", _vol_inf(support_image="{in}/x/corrupt.nii.gz"), ("corrupt.nii.gz",)),
    ("vol-infer-empty-query-folder", _vol_inf(queries="{in}/x/empty"), ("empty", "no image volumes")),
    ("vol-infer-absent-label-value", _vol_inf(label_value=99), ("label_1.nii.gz", "label value 99")),
    ("vol-infer-garbage-ckpt", _vol_inf(load_pretrain=True, ckpt_path="{in}/x/garbage.pt"), ("garbage.pt",)),
    ("dspnet-infer-bcma_setting", _vol_inf(DSP, bcma_setting=3), ("bcma_setting", "1..2")),
    # --- FSMS: train.json
    ("fsms-train-n_shots-text", _fsms_train(n_shots="abc"), ("n_shots", MUST_INT)),
    ("fsms-train-n_tasks-0", _fsms_train(n_tasks=0), ("n_tasks", ">= 1")),
    ("fsms-train-image_size-negative", _fsms_train(image_size=-64), ("image_size", ">= 8")),
    ("fsms-train-learning_rate-text", _fsms_train(learning_rate="x"), ("learning_rate", MUST_NUM)),
    ("fsms-train-surrogate_mode", _fsms_train(surrogate_mode="bogus"), ("surrogate_mode", "'bogus'")),
    ("fsms-train-surrogate-maybe", _fsms_train(surrogate="maybe"), ("surrogate", "true or false")),
    ("fsms-train-lr_schedule", _fsms_train(lr_schedule="linear"), ("lr_schedule", "'linear'")),
    ("fsms-train-surrogate_weight-text", _fsms_train(surrogate_weight="x"), ("surrogate_weight", MUST_NUM)),
    ("fsms-train-n_steps-negative", _fsms_train(n_steps=-1), ("n_steps", ">= 1")),
    ("fsms-train-missing-class-dir", _fsms_train(class_dirs="{in}/nope"), ("nope", "does not exist")),
    ("fsms-train-empty-class-dir", _fsms_train(class_dirs="{in}/x/empty"), ("empty", "no class folder")),
    ("fsms-train-wrong-layout", _fsms_train(dataset_dir="{in}/abd"), ("abd", "images/ and masks/")),
    ("fsms-train-output_dir-file", _fsms_train(output_dir="{in}/x/afile"), ("output_dir", "is a file")),
    # evaluate.json
    ("fsms-eval-eval_shots-text", _fsms_eval(eval_shots="abc"), ("eval_shots", "'abc'")),
    ("fsms-eval-eval_shots-0", _fsms_eval(eval_shots=[0]), ("eval_shots", ">= 1")),
    ("fsms-eval-episodes-0", _fsms_eval(n_eval_episodes=0), ("n_eval_episodes", ">= 1")),
    ("fsms-eval-split", _fsms_eval(eval_split="bogus"), ("eval_split", "'bogus'")),
    ("fsms-eval-output-in-dataset", _fsms_eval(output_dir="{in}/les/eval"), ("output_dir", INSIDE, "les")),
    ("fsms-eval-n_overlays-negative", _fsms_eval(n_overlays=-1), ("n_overlays", ">= 0")),
    ("fsms-eval-support_threshold", _fsms_eval(support_threshold="maybe"), ("support_threshold", "true or false")),
    # inference.json
    ("fsms-infer-n_shots-vs-supports", _fsms_inf(n_shots=3), ("n_shots=3", "1 support image")),
    ("fsms-infer-support_threshold", _fsms_inf(support_threshold="maybe"), ("support_threshold", "true or false")),
    ("fsms-infer-1px-query", _fsms_inf(queries=["{in}/x/one_px.png"]), ("one_px.png", "1x1", "too small")),
    ("fsms-infer-3px-wide-query", _fsms_inf(queries=["{in}/x/thin.png"]), ("thin.png", "40x3", "too small")),
    ("fsms-infer-output-is-query-folder", _fsms_inf(queries="{in}/les/images", output_dir="{in}/les/images"),
     ("output_dir", INSIDE, "images")),
    ("fsms-infer-n_overlays-negative", _fsms_inf(n_overlays=-1), ("n_overlays", ">= 0")),
    ("fsms-infer-threshold-2", _fsms_inf(threshold=2), ("threshold", "(0, 1)")),
    ("fsms-infer-batch_size-0", _fsms_inf(batch_size=0), ("batch_size", ">= 1")),
    ("fsms-infer-mask-size", _fsms_inf(support_masks=["{in}/x/small_mask.png"]), ("small_mask.png", "differs")),
    ("fsms-infer-corrupt-query", _fsms_inf(queries=["{in}/x/corrupt.png"]), ("corrupt.png", "cannot read")),
    ("fsms-infer-float-image", _fsms_inf(queries=["{in}/x/float.tif"]),
     ("float.tif", "float32", "1000", "expected 8-bit, 16-bit or [0, 1]")),
    ("fsms-infer-empty-query-folder", _fsms_inf(queries="{in}/x/empty"), ("empty", "no query images")),
    ("fsms-infer-support-count", _fsms_inf(support_masks=["{in}/les/masks/L0.png", "{in}/les/masks/L1.png"]),
     ("1 support images but 2 support masks",)),
    # --- SABR-Net: train.json
    ("sabr-train-labeled_ratio-1.5", _sabr_train(labeled_ratio=1.5), ("labeled_ratio", "(0, 1]", "1.5")),
    ("sabr-train-val_interval-negative", _sabr_train(val_interval=-3), ("val_interval", ">= 0", "-3")),
    ("sabr-train-batch_size-0", _sabr_train(batch_size=0), ("batch_size", ">= 1")),
    ("sabr-train-learning_rate-text", _sabr_train(learning_rate="x"), ("learning_rate", MUST_NUM)),
    ("sabr-train-image_size-not-16", _sabr_train(image_size=30), ("image_size", "multiple of 16")),
    ("sabr-train-stage", _sabr_train(stage="bogus"), ("stage", "'bogus'")),
    ("sabr-train-ema_decay-2", _sabr_train(ema_decay=2), ("ema_decay", "[0, 1)")),
    ("sabr-train-shadow_prob-3", _sabr_train(stage="pretrain", shadow_prob=3), ("shadow_prob", "[0, 1]")),
    ("sabr-train-n_classes-1", _sabr_train(n_classes=1), ("n_classes", ">= 2")),
    ("sabr-train-warmup_steps-negative", _sabr_train(warmup_steps=-1), ("warmup_steps", ">= 0")),
    ("sabr-train-layout", _sabr_train(layout="bogus"), ("layout", "'bogus'")),
    ("sabr-train-empty-dataset", _sabr_train(dataset_dir="{in}/x/empty"), ("empty", "no known ultrasound layout")),
    ("sabr-train-missing-init_ckpt", _sabr_train(init_ckpt="{in}/nope.pt"), ("nope.pt", "does not exist")),
    ("sabr-train-bundle_root-file", _sabr_train(bundle_root="{in}/x/afile"), ("output_dir", "below the file")),
    # evaluate.json
    ("sabr-eval-split", _sabr_eval(eval_split="bogus"), ("eval_split", "'bogus'")),
    ("sabr-eval-output-in-dataset", _sabr_eval(output_dir="{in}/us/eval"), ("output_dir", INSIDE, "us")),
    ("sabr-eval-n_overlays-negative", _sabr_eval(n_overlays=-1), ("n_overlays", ">= 0")),
    ("sabr-eval-offset_scale-text", _sabr_eval(offset_scale="x"), ("offset_scale", MUST_NUM)),
    ("sabr-eval-refine-maybe", _sabr_eval(refine="maybe"), ("refine", "true or false")),
    # inference.json
    ("sabr-infer-image_size-negative", _sabr_inf(image_size=-64), ("image_size", ">= 8", "-64")),
    ("sabr-infer-pixel_size-negative", _sabr_inf(pixel_size=-1), ("pixel_size", "positive")),
    ("sabr-infer-output-in-input", _sabr_inf(output_dir="{in}/us/unlabeled/pred"), ("output_dir", INSIDE)),
    ("sabr-infer-missing-images", _sabr_inf(images="{in}/nope"), ("nope", "does not exist")),
    ("sabr-infer-corrupt-image", _sabr_inf(images=["{in}/x/corrupt.png"]), ("corrupt.png", "cannot read")),
    ("sabr-infer-nan-nifti", _sabr_inf(images=["{in}/x/nan_slice.nii.gz"]), ("nan_slice.nii.gz", "NaN")),
    ("sabr-infer-empty-folder", _sabr_inf(images="{in}/x/empty"), ("empty", "no PNG/JPG/NIfTI/DICOM")),
    # --- CLTNet: train.json
    ("clt-train-n_steps-0", _clt_train(n_steps=0), ("n_steps", ">= 1")),
    ("clt-train-image_size-too-small", _clt_train(image_size=32), ("image_size 32", "discriminators", ">= 96")),
    ("clt-train-learning_rate-text", _clt_train(learning_rate="x"), ("learning_rate", MUST_NUM)),
    ("clt-train-contrast-text", _clt_train(contrast="x"), ("contrast", MUST_NUM)),
    ("clt-train-weight_decay-negative", _clt_train(weight_decay=-1), ("weight_decay", ">= 0")),
    ("clt-train-val_interval-negative", _clt_train(val_interval=-3), ("val_interval", ">= 0")),
    ("clt-train-n_val_overlays-negative", _clt_train(n_val_overlays=-1), ("n_val_overlays", ">= 0")),
    ("clt-train-loss_weights", _clt_train(loss_weights="bogus"), ("loss weight", "'bogus'")),
    ("clt-train-wrong-layout", _clt_train(dataset_dir="{in}/les"), ("trainA", "does not exist")),
    ("clt-train-empty-trainA", _clt_train(dataset_dir="{in}/x/weak_empty"), ("trainA", "no images")),
    # evaluate.json
    ("clt-eval-postprocess", _clt_eval(postprocess="bogus"), ("postprocess", "'bogus'")),
    ("clt-eval-split", _clt_eval(eval_split="bogus"), ("eval_split", "'bogus'")),
    ("clt-eval-output-in-dataset", _clt_eval(output_dir="{in}/weak/eval"), ("output_dir", INSIDE, "weak")),
    ("clt-eval-n_overlays-negative", _clt_eval(n_overlays=-1), ("n_overlays", ">= 0")),
    ("clt-eval-crf_alpha-text", _clt_eval(crf_alpha="x"), ("crf_alpha", MUST_NUM)),
    ("clt-eval-zero_corners-maybe", _clt_eval(zero_corners="maybe"), ("zero_corners", "true or false")),
    ("clt-eval-invert_mask-maybe", _clt_eval(invert_mask="maybe"), ("invert_mask", "true or false")),
    ("clt-eval-flip_tta-maybe", _clt_eval(flip_tta="maybe"), ("flip_tta", "true or false")),
    # inference.json
    ("clt-infer-crf_alpha-text", _clt_inf(crf_alpha="x"), ("crf_alpha", MUST_NUM)),
    ("clt-infer-invert_mask-maybe", _clt_inf(invert_mask="maybe"), ("invert_mask", "true or false")),
    ("clt-infer-flip_tta-maybe", _clt_inf(flip_tta="maybe"), ("flip_tta", "true or false")),
    ("clt-infer-image_size-0", _clt_inf(image_size=0), ("image_size", ">= 8")),
    ("clt-infer-output-in-input", _clt_inf(output_dir="{in}/weak/testA/images/pred"), ("output_dir", INSIDE)),
    ("clt-infer-corrupt-image", _clt_inf(images=["{in}/x/corrupt.png"]), ("corrupt.png", "cannot read")),
    ("clt-infer-volume-as-image", _clt_inf(images=["{in}/x/nan_query.nii.gz"]), ("nan_query.nii.gz", "3D volume")),
    ("clt-infer-empty-folder", _clt_inf(images="{in}/x/empty"), ("empty", "no images")),
]


@pytest.mark.parametrize("workflow,needles", [c[1:] for c in BUNDLE_CASES], ids=[c[0] for c in BUNDLE_CASES])
def test_bundle_bad_input(inputs, baseline, tmp_path, tripwires, workflow, needles):
    bundle, configs, kind, overrides = workflow
    wf = bundle_workflow(bundle, configs, kind, **_fmt(overrides, inputs, tmp_path))
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    _check_error(info.value, _fmt(needles, inputs, tmp_path))
    assert _tree(inputs) == baseline


@pytest.mark.parametrize("workflow", [_vol_eval(), _vol_inf(), _fsms_eval(), _fsms_inf(), _sabr_eval(),
                                      _sabr_inf(), _clt_eval(), _clt_inf()],
                         ids=["vol-eval", "vol-infer", "fsms-eval", "fsms-infer", "sabr-eval", "sabr-infer",
                              "clt-eval", "clt-infer"])  # fmt: skip
def test_bundle_read_only_output_fails_before_the_computation(inputs, baseline, tmp_path, tripwires, readonly,
                                                              workflow):  # fmt: skip
    bundle, configs, kind, overrides = workflow
    wf = bundle_workflow(bundle, configs, kind, **_fmt({**overrides, "output_dir": str(readonly)}, inputs, tmp_path))
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    _check_error(info.value, ("output_dir", str(readonly), "re:not writable|cannot be created"))
    assert _tree(inputs) == baseline


# --------------------------------------------------------------------------------------------------- CLI cases
EV = {"preset": "phantom_abdomen", "modes": ["protocol"], "n_overlays": 0}

#: (id, method name, args, kwargs, needles)
CLI_CASES: list[tuple[str, str, tuple, dict, tuple[str, ...]]] = [
    ("evaluate-folds-text", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "folds": "abc"}, ("--folds", "'abc'")),
    ("evaluate-folds-9", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "folds": [9]}, ("folds", "0..4", "[9]")),
    ("evaluate-n_shots-text", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "n_shots": "abc"},
     ("--n_shots", MUST_INT)),
    ("evaluate-n_overlays-negative", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "n_overlays": -1},
     ("--n_overlays", ">= 0", "-1")),
    ("evaluate-output-in-dataset", "evaluate", ("{in}/abd", "{in}/abd/ev"), EV, ("output_dir", INSIDE, "abd")),
    ("evaluate-output-in-predictions", "evaluate", ("{in}/abd", "{in}/x/preds/ev"),
     {**EV, "predictions_dir": "{in}/x/preds", "folds": [0]}, ("output_dir", INSIDE, "preds")),
    ("evaluate-output-is-a-file", "evaluate", ("{in}/abd", "{in}/x/afile"), EV, ("output_dir", "afile", "is a file")),
    ("evaluate-modes", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "modes": ["bogus"]}, ("--modes", "'bogus'")),
    ("evaluate-label_map-text", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "label_map": "abc"},
     ("--label_map", "'abc'")),
    ("evaluate-missing-dataset", "evaluate", ("{in}/nope", "{out}/ev"), EV, ("nope", "does not exist")),
    ("evaluate-empty-dataset", "evaluate", ("{in}/x/empty", "{out}/ev"), EV, ("empty", "image_<id>.nii.gz")),
    ("evaluate-unknown-class", "evaluate", ("{in}/abd", "{out}/ev"), {**EV, "classes": ["NOPE"]}, ("'NOPE'",)),
    ("evaluate-preset", "evaluate", ("{in}/abd", "{out}/ev"), {"preset": "bogus"}, ("preset", "'bogus'")),
    ("phantoms-shape-text", "phantoms", ("{out}/ph",), {"shape": "abc"}, ("--shape", "'abc'")),
    ("phantoms-n_volumes-0", "phantoms", ("{out}/ph",), {"n_volumes": 0}, ("--n_volumes", ">= 1")),
    ("phantoms-seed-text", "phantoms", ("{out}/ph",), {"seed": "x", "shape": [32, 32, 4]}, ("--seed", "'x'")),
    ("phantoms-into-a-users-folder", "phantoms", ("{in}/les",), {"n_volumes": 1, "shape": [32, 32, 4]},
     ("re:les is not empty",)),
    ("superpixels-out-in-dataset", "superpixels", ("{in}/abd",),
     {"out_dir": "{in}/abd/sp", "preset": "phantom_abdomen", "workers": 1}, ("out_dir", INSIDE, "abd")),
    ("superpixels-method", "superpixels", ("{in}/abd",), {"out_dir": "{out}/sp", "method": "bogus"},
     ("superpixel method", "'bogus'")),
    ("episodes-output-in-dataset", "episodes", ("{in}/abd", "{in}/abd/ep"), {"preset": "phantom_abdomen"},
     ("output_dir", INSIDE, "abd")),
    ("episodes-n-0", "episodes", ("{in}/abd", "{out}/ep"), {"preset": "phantom_abdomen", "n": 0}, ("--n", ">= 1")),
    ("weak_domains-n_test-text", "weak_domains", ("{in}/abd", "{out}/wd"), {"n_test": "abc"}, ("--n_test",)),
    ("weak_domains-output-in-input", "weak_domains", ("{in}/abd", "{in}/abd/wd"), {}, (INSIDE, "abd")),
    ("weak_domains_images-test_fraction", "weak_domains_images", ("{in}/les/images", "{out}/wd"),
     {"test_fraction": 1.5}, ("test_fraction", "1.5")),
    ("weak_domains_images-val_fraction-no-masks", "weak_domains_images", ("{in}/les/images", "{out}/wd"),
     {"val_fraction": 0.1}, ("val_fraction", "masks_dir")),
    ("weak_domains_images-normals", "weak_domains_images", ("{in}/les/images", "{out}/wd"),
     {"normals": "healthy"}, ("normals", "'healthy'")),
    ("weak_domains_images-inpaint_options-text", "weak_domains_images", ("{in}/les/images", "{out}/wd"),
     {"normals": "inpaint", "inpaint_options": "max_border=0.5"}, ("--inpaint_options", "JSON")),
    ("weak_domains_images-inpaint_options-key", "weak_domains_images", ("{in}/les/images", "{out}/wd"),
     {"normals": "inpaint", "inpaint_options": {"radius": 3}}, ("inpaint_options", "radius")),
    ("weak_domains_images-a_crops", "weak_domains_images", ("{in}/les/images", "{out}/wd"),
     {"lesion_crops": 2, "a_crops": "skin"}, ("a_crops", "'skin'")),
    ("weak_domains_csv-columns", "weak_domains_csv", ("{in}/x/tags.csv", "{out}/wd"), {}, ("tags.csv", "header")),
    ("fsms_synthetic-size-text", "fsms_synthetic", ("{out}/fs",), {"size": "abc"}, ("--size", MUST_INT)),
    ("verify_metadata-bad-json", "verify_metadata", ("{in}/x/meta.json",), {}, ("meta.json", "cannot read")),
]


@pytest.mark.parametrize("method,args,kwargs,needles", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(inputs, baseline, tmp_path, tripwires, method, args, kwargs, needles):
    call: Callable = getattr(LabellessCLI(), method)
    with pytest.raises(LabellessError) as info:
        call(*_fmt(list(args), inputs, tmp_path), **_fmt(kwargs, inputs, tmp_path))
    _check_error(info.value, _fmt(needles, inputs, tmp_path))
    assert _tree(inputs) == baseline


def test_cli_prepare_bad_spacing(inputs, baseline, tmp_path):
    with pytest.raises(LabellessError) as info:
        LabellessCLI().prepare.chaos(str(inputs / "abd"), str(tmp_path / "p"), spacing="abc")
    _check_error(info.value, ("--spacing", "3 numbers"))
    assert _tree(inputs) == baseline


def test_cli_read_only_output_fails_before_the_computation(inputs, baseline, tripwires, readonly):
    with pytest.raises(LabellessError) as info:
        LabellessCLI().evaluate(str(inputs / "abd"), str(readonly), **EV)
    _check_error(info.value, ("output_dir", str(readonly), "re:not writable|cannot be created"))
    assert _tree(inputs) == baseline


# ------------------------------------------------------------------------------ cases that work now (checked)
def test_cli_folds_0_is_fold_zero(inputs, baseline, tmp_path):
    """``--folds 0`` arrives as the integer 0: it means fold 0 (not an error)."""
    import json

    LabellessCLI().evaluate(str(inputs / "abd"), str(tmp_path / "ev"), folds=0, **EV)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["folds_evaluated"] == [0]
    assert _tree(inputs) == baseline


def test_volume_evaluate_folds_as_one_integer(inputs, baseline, tmp_path):
    import json

    bundle, configs, kind, overrides = _vol_eval(folds=0, eval_modes="protocol", n_overlays=0)
    wf = bundle_workflow(bundle, configs, kind, **_fmt(overrides, inputs, tmp_path))
    wf.initialize()
    wf.run()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["folds_evaluated"] == [0] and metrics["mode"] == "protocol"
    assert _tree(inputs) == baseline


def test_volume_inference_on_a_prepared_folder_segments_its_images_only(inputs, baseline, tmp_path):
    bundle, configs, kind, overrides = _vol_inf(queries="{in}/abd", n_overlays=0)
    wf = bundle_workflow(bundle, configs, kind, **_fmt(overrides, inputs, tmp_path))
    wf.initialize()
    wf.run()
    written = sorted(p.name for p in (tmp_path / "pred").glob("*_pred.nii.gz"))
    assert written == [f"image_{i}_pred.nii.gz" for i in range(1, 7)]
    assert _tree(inputs) == baseline


def test_fsms_16bit_png_query_is_read_as_16_bit(inputs, baseline, tmp_path):
    """A 16-bit PNG used to be refused as "int32 ... expected 8-bit, 16-bit or [0, 1]"; it is scaled by 65535."""
    from labelless.data.images import read_rgb

    rgb = read_rgb(inputs / "x" / "deep16.png")
    assert rgb.max() == pytest.approx(40 * 48 * 30 / 65535 - 30 / 65535, rel=1e-4) and rgb.min() == 0.0
    bundle, configs, kind, overrides = _fsms_inf(queries=["{in}/x/deep16.png"])
    wf = bundle_workflow(bundle, configs, kind, **_fmt(overrides, inputs, tmp_path))
    wf.initialize()
    wf.run()
    assert np.asarray(Image.open(tmp_path / "pred" / "deep16_mask.png")).shape == (40, 48)
    assert _tree(inputs) == baseline


# ----------------------------------------------------------------------------------- subprocess cases (4)
def _last_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["evaluate", "{in}/abd", "{out}/ev", "--preset", "phantom_abdomen", "--folds", "abc"], ("--folds", "'abc'")),
        (["evaluate", "{in}/abd", "{in}/x/afile", "--preset", "phantom_abdomen", "--modes", "[protocol]"],
         ("output_dir", "afile", "is a file")),
    ],
    ids=["folds-text", "output-is-a-file"],
)
def test_cli_subprocess_one_line_error(inputs, baseline, tmp_path, args, needles):
    res = subprocess.run([sys.executable, "-m", "labelless", *_fmt(args, inputs, tmp_path)], capture_output=True,
                         text=True, timeout=300, env=ENV, cwd=tmp_path)  # fmt: skip
    last = _last_line(res)
    assert res.returncode == 2 and last.startswith("labelless: error: "), last
    for needle in _fmt(needles, inputs, tmp_path):
        assert needle in last, (needle, last)
    assert not (tmp_path / "ev").exists()
    assert _tree(inputs) == baseline


@pytest.mark.parametrize(
    "bundle,configs,args,needles",
    [
        (VOL, ["inference.json"], ["--label_value", "abc", "--support_image", "{in}/abd/image_1.nii.gz",
                                   "--support_label", "{in}/abd/label_1.nii.gz", "--queries", "{in}/abd/image_2.nii.gz",
                                   "--output_dir", "{out}/pred", "--load_pretrain", "false", "--encoder", "tiny",
                                   "--encoder_options", "{}"], ("label_value", "'abc'")),
        (FSMS, ["train.json", "evaluate.json"], ["--eval_shots", "abc", "--dataset_dir", "{in}/les", "--output_dir",
                                                 "{out}/eval", "--image_size", "32"], ("eval_shots", "'abc'")),
    ],
    ids=["volume-label_value-text", "fsms-eval_shots-text"],
)  # fmt: skip
def test_bundle_subprocess_one_line_error(inputs, baseline, tmp_path, bundle, configs, args, needles):
    files = [str(BUNDLES / bundle / "configs" / c) for c in configs]
    cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    res = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg, "--bundle_root", str(BUNDLES / bundle),
         *_fmt(args, inputs, tmp_path)], capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    last = _last_line(res)
    assert last.startswith("labelless: error: "), last
    for needle in needles:
        assert needle in last, (needle, last)
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.nii.gz"))
    assert _tree(inputs) == baseline


def test_every_bundle_and_the_cli_are_covered():
    """Issue 17 asks for at least 60 bad-input cases across the command line and the bundles (the parametrized lists
    above; the read-only and subprocess tests come on top)."""
    assert {c[1][0] for c in BUNDLE_CASES} == {p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()}
    assert len(BUNDLE_CASES) >= 60 and len(CLI_CASES) >= 20
