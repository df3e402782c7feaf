# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""GT-free volume inference (labelless.fewshot.volume.gtfree, issue 16): empty slices, extent mapping, presence,
3D clean-up, option checks, and the same code path in the inference runner, the GT-free evaluation and the CLI;
plus the one-vocabulary items (preset option alias, the preset named in label errors, comparable_with_published,
the random-initialisation warning)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError, DataError
from labelless.fewshot.volume.gtfree import (
    GTFreeOptions,
    body_extent,
    calibrate_foreground_threshold,
    calibrate_presence,
    cleanup_components,
    empty_slices,
    estimated_extent,
    postprocess_volume,
    slice_scores,
)
from labelless.fewshot.volume.inference import FewShotVolumeInferenceRunner
from labelless.fewshot.volume.protocol import (
    evaluate_fold,
    prediction_filename,
    prepare_gt_free_support,
    segment_volume,
    segment_volume_gt_free,
    support_relative_chunks,
)

OFF = {
    "extent_reference": "volume",
    "presence": "none",
    "cleanup": "none",
    "predict_outside_extent": True,
    "foreground_threshold": "argmax",
}


class AllForeground(nn.Module):
    """A predictor that segments everything (the failure of the cardiac report: foreground on a blank slice)."""

    def forward(self, sup_img: torch.Tensor, sup_msk: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        b, _, h, w = query.shape
        return torch.stack([torch.zeros(b, h, w), torch.ones(b, h, w)], dim=1)


class BrightForeground(nn.Module):
    """FG = query pixels brighter than the support's mean foreground intensity minus 0.5 (exact on the phantom)."""

    def forward(self, sup_img: torch.Tensor, sup_msk: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        v = sup_img[:, 0][sup_msk[:, 0] > 0.5].mean()
        fg = (query[:, 0] > v - 0.5).float()
        return torch.stack([1 - fg, fg], dim=1)


def _volume_with_blank_slices(z: int = 8, hw: int = 16, seed: int = 0) -> np.ndarray:
    vol = np.random.default_rng(seed).uniform(50, 100, (z, hw, hw)).astype(np.float32)
    vol[0] = 0.0  # zero-filled
    vol[z - 1] = 37.0  # constant
    return vol


def _save(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 4.0)) -> Path:
    nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.diag([*spacing, 1.0])), str(path))
    return path


# ---------------------------------------------------------------------------------------------------- empty slices
def test_empty_slices_zero_constant_and_bodyless():
    vol = _volume_with_blank_slices()
    vol[3] = np.random.default_rng(1).uniform(0, 1, vol[3].shape)  # faint noise below the body threshold
    np.testing.assert_array_equal(np.nonzero(empty_slices(vol))[0], [0, 3, 7])
    # invariant to the normalisation (z-score) and a constant volume is empty everywhere
    np.testing.assert_array_equal(empty_slices((vol - vol.mean()) / vol.std()), empty_slices(vol))
    assert empty_slices(np.full((4, 8, 8), 3.0)).all()


@pytest.mark.parametrize("options", [OFF, {}])
def test_segment_volume_never_predicts_on_empty_slices(options):
    vol = _volume_with_blank_slices()
    sup = [(vol[2:3], np.ones((1, 16, 16), np.uint8))]
    pred = segment_volume(vol, sup, [0] * 8, AllForeground())
    assert not pred[0].any() and not pred[7].any() and pred[1:7].all()
    support = prepare_gt_free_support(vol, np.ones_like(vol, dtype=bool) & ~empty_slices(vol)[:, None, None],
                                      AllForeground(), options, n_chunks=1)  # fmt: skip
    res = segment_volume_gt_free(vol, support, AllForeground())
    assert not res.prediction[0].any() and not res.prediction[7].any()


def test_inference_runner_gives_no_foreground_on_blank_slices(tmp_path):
    sup = np.random.default_rng(2).uniform(50, 100, (6, 16, 16)).astype(np.float32)
    lab = np.zeros_like(sup)
    lab[1:5, 4:12, 4:12] = 1
    (tmp_path / "support").mkdir()
    _save(tmp_path / "support/sup.nii.gz", sup)
    _save(tmp_path / "support/sup_label.nii.gz", lab)
    qdir = tmp_path / "queries"
    qdir.mkdir()
    _save(qdir / "q.nii.gz", _volume_with_blank_slices())
    for opts in (OFF, {}):
        out = tmp_path / "out" / str(len(opts))
        runner = FewShotVolumeInferenceRunner(AllForeground(), tmp_path / "support/sup.nii.gz",
                                              tmp_path / "support/sup_label.nii.gz", 1, qdir, out, image_size=None,
                                              n_overlays=0, **opts)  # fmt: skip
        (mask_file,) = runner.run()
        mask = np.asarray(nib.load(str(mask_file)).dataobj).transpose(2, 1, 0)
        assert mask.shape == (8, 16, 16)
        assert not mask[0].any() and not mask[7].any()
        assert mask[1:7].any()


# -------------------------------------------------------------------------------------------- GT-free evaluation
def _prepared(root: Path, blank_query: bool = True) -> Path:
    """6 scans (fold 0 of 5: tests 1, 2, support 3) with a bright box (class 1) on slices 2..5; scan 1 has a
    zero-filled and a constant slice."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for pid in ("1", "2", "3", "4", "5", "6"):
        img = rng.uniform(40, 60, (10, 24, 24)).astype(np.float32)
        lab = np.zeros(img.shape)
        img[2:6, 6:14, 6:14] = 200
        lab[2:6, 6:14, 6:14] = 1
        if pid == "1" and blank_query:
            img[8], img[9] = 0.0, 55.0
        _save(root / f"image_{pid}.nii.gz", img)
        _save(root / f"label_{pid}.nii.gz", lab)
    return root


def test_gt_free_evaluation_path_blank_slices_and_switches(tmp_path):
    ds = PreparedVolumeDataset(_prepared(tmp_path / "data"), "chaos")
    kw = {"classes": [1], "mode": "gt_free", "output_dir": tmp_path / "ev", "save_predictions": True, "n_overlays": 0}
    res = evaluate_fold(ds, 0, AllForeground(), gt_free_options=OFF, **kw)
    pred = np.asarray(nib.load(str(tmp_path / "ev/predictions/gt_free" / prediction_filename("1", "LIVER"))).dataobj)
    pred = pred.transpose(2, 1, 0)
    assert not pred[8].any() and not pred[9].any() and pred[:8].all()
    assert res.settings["gt_free"]["presence"] == "none"
    # the exact predictor: presence and clean-up keep the box, so the Dice is 1 whatever the switches
    ds = PreparedVolumeDataset(_prepared(tmp_path / "data2", blank_query=False), "chaos")
    for opts in ({}, {"cleanup": "fraction"}, {"presence": "soft_area", "presence_rule": "youden"},
                 {"presence": "area", "foreground_threshold": "argmax", "predict_outside_extent": True}):  # fmt: skip
        r = evaluate_fold(ds, 0, BrightForeground(), classes=[1], mode="gt_free", n_overlays=0, gt_free_options=opts)
        assert [round(s.dice, 6) for s in r.scans] == [1.0, 1.0], opts
    # an empty prediction on the support (no presence information): presence threshold 0, nothing else changes
    with pytest.raises(DataError, match="absent"):
        prepare_gt_free_support(np.ones((3, 8, 8)), np.zeros((3, 8, 8)), AllForeground())


# ---------------------------------------------------------------------------------------------------- each switch
def test_body_extent_and_extent_reference():
    vol = np.zeros((20, 16, 16), np.float32)
    vol[4:16] = np.random.default_rng(0).uniform(50, 100, (12, 16, 16))  # body on slices 4..15
    assert body_extent(vol) == (4, 15)
    assert body_extent(np.zeros((3, 4, 4))) is None
    # support: 10 slices, body everywhere, class on 2..7; query: body on 4..15 of 20
    vol_est = estimated_extent(20, 10, (2, 7), GTFreeOptions(extent_reference="volume"))
    body_est = estimated_extent(20, 10, (2, 7), GTFreeOptions(extent_reference="body"), (4, 15), (0, 9))
    assert vol_est.chunks == support_relative_chunks(20, 10, (2, 7))  # the §6.5 rule
    assert vol_est.a_hat == pytest.approx(2 / 9 * 19) and body_est.a_hat == pytest.approx(4 + 2 / 9 * 11)
    assert body_est.b_hat == pytest.approx(4 + 7 / 9 * 11)
    margin0 = estimated_extent(20, 10, (2, 7), GTFreeOptions(extent_reference="body", extent_margin=0), (4, 15), (0, 9))
    assert margin0.keep == list(range(7, 13))


def test_foreground_threshold_calibrated_on_the_support():
    truth = np.zeros((4, 8, 8), bool)
    truth[:, 2:6, 2:6] = True
    logits = np.where(truth, 3.0, -3.0).astype(np.float32)
    logits[:, 0, :] = 1.2  # a false-positive band with a weak margin: a threshold above 1.2 removes it
    t = calibrate_foreground_threshold(logits, truth, exclude=[0])
    assert 1.2 <= t < 3.0
    assert calibrate_foreground_threshold(np.where(truth, 3.0, -3.0), truth) == 0.0  # ties go to the argmax rule
    assert calibrate_foreground_threshold(logits, truth, exclude=range(4)) == 0.0
    only_background_left = truth.copy()
    only_background_left[1:] = False
    assert calibrate_foreground_threshold(logits, only_background_left, exclude=[0]) == 0.0
    # segment_volume applies it: FG where the logit margin exceeds the threshold
    vol = np.random.default_rng(0).uniform(1, 2, (2, 8, 8)).astype(np.float32)
    margin_is_intensity = lambda s, m, q: torch.stack([torch.zeros_like(q[:, 0]), q[:, 0]], 1)  # noqa: E731
    pred = segment_volume(vol, [(vol[:1], truth[:1].astype(np.uint8))], [0, 0], margin_is_intensity, threshold=1.5)
    np.testing.assert_array_equal(pred, (vol > 1.5).astype(np.uint8))


def test_predict_outside_extent_false_clears_slices():
    pred = np.ones((6, 4, 4), np.uint8)
    out = postprocess_volume(pred, GTFreeOptions(predict_outside_extent=False, cleanup="none"), keep_slices=[2, 3])
    assert out[2:4].all() and not out[:2].any() and not out[4:].any()
    out = postprocess_volume(pred, GTFreeOptions(predict_outside_extent=True, cleanup="none"), keep_slices=[2, 3])
    assert out.all()


def test_presence_scores_calibration_and_removal():
    d = torch.full((3, 4, 4), -5.0)
    d[1, :2] = 5.0  # half the slice foreground
    d[2, 0, 0] = 5.0
    np.testing.assert_allclose(slice_scores(d, "area"), [0, 0.5, 1 / 16])
    assert slice_scores(d, "max_prob")[1] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    assert slice_scores(d, "soft_area")[0] < slice_scores(d, "soft_area")[2] < slice_scores(d, "soft_area")[1]
    # support: slices 0-3 hold the class (scores 0.2-0.5), 4-7 do not (false positives, scores 0.01-0.05)
    scores = np.array([0.2, 0.3, 0.5, 0.4, 0.01, 0.05, 0.02, 0.03])
    present = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    t = calibrate_presence(scores, present, exclude=[2], rule="youden")
    assert 0.05 < t < 0.2
    truth = np.zeros((8, 4, 4), bool)
    truth[:4] = True
    pred = np.zeros_like(truth)
    pred[:4], pred[4:, 0, 0] = True, True
    assert 0.05 < calibrate_presence(scores, present, exclude=[2], rule="dice", prediction=pred, truth=truth) < 0.2
    assert calibrate_presence(scores, np.ones(8, bool)) == 0.0  # nothing to separate: no effect
    out = postprocess_volume(pred, GTFreeOptions(presence="area", cleanup="none"), scores=scores, presence_threshold=t)
    assert out[:4].all() and not out[4:].any()


def test_cleanup_components():
    m = np.zeros((5, 10, 10), np.uint8)
    m[0:3, 0:4, 0:4] = 1  # 48 voxels
    m[4, 8:10, 8:10] = 1  # 4 voxels, not connected
    m[3, 4, 4] = 1  # diagonal neighbour of the big blob: 26-connected
    largest = cleanup_components(m, "largest")
    assert largest.sum() == 49 and not largest[4].any()
    assert cleanup_components(m, "fraction", 0.05).sum() == 53
    assert cleanup_components(m, "fraction", 0.5).sum() == 49
    assert cleanup_components(m, "none").sum() == 53
    # "extent": the component with the most voxels on the estimated extent wins, kept whole
    assert cleanup_components(m, "extent", keep_slices=[4]).sum() == 4
    assert cleanup_components(m, "extent", keep_slices=[3, 4]).sum() == 4  # 4 voxels on slice 4 vs 1 on slice 3
    assert cleanup_components(m, "extent", keep_slices=[2, 3]).sum() == 49
    assert cleanup_components(m, "extent").sum() == 49  # no extent given: the largest
    # the extent cut comes after the clean-up, so predict_outside_extent=false only ever removes foreground
    opts = GTFreeOptions(cleanup="extent", predict_outside_extent=False, extent_margin=0)
    cut = postprocess_volume(m, opts, keep_slices=[2, 3])
    full = postprocess_volume(m, GTFreeOptions(cleanup="extent", extent_margin=0), keep_slices=[2, 3])
    assert not (cut & ~full).any() and cut.sum() == 17 and full.sum() == 49


# ---------------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "kwargs, name",
    [({"presence": "maybe"}, "presence"), ({"cleanup": "all"}, "cleanup"),
     ({"extent_reference": "z"}, "extent_reference"), ({"presence_rule": "best"}, "presence_rule"),
     ({"cleanup_fraction": 2}, "cleanup_fraction"), ({"foreground_threshold": "otsu"}, "foreground_threshold"),
     ({"extent_margin": -1}, "extent_margin"), ({"predict_outside_extent": "perhaps"}, "predict_outside_extent"),
     ({"body_fraction": 1.0}, "body_fraction")],
)  # fmt: skip
def test_option_validation(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        GTFreeOptions(**kwargs)


def test_options_from_strings_and_unknown_names(tmp_path):
    o = GTFreeOptions.from_options({"presence": "AREA", "cleanup": None, "extent_margin": "3"},
                                   predict_outside_extent="false")  # fmt: skip
    assert (o.presence, o.cleanup, o.extent_margin, o.predict_outside_extent) == ("area", "extent", 3, False)
    with pytest.raises(ConfigError, match="unknown GT-free option"):
        GTFreeOptions.from_options({"presense": "area"})
    with pytest.raises(ConfigError, match="cleanup"):  # the runner refuses it when built, before any work
        FewShotVolumeInferenceRunner(AllForeground(), tmp_path, tmp_path, 1, tmp_path, tmp_path / "o", cleanup="x")


def test_cli_evaluate_gt_free_options_and_preset_alias(tmp_path):
    from labelless.cli import LabellessCLI

    data = _prepared(tmp_path / "data")
    cli = LabellessCLI()
    with pytest.raises(ConfigError, match="--presence"):
        cli.evaluate(str(data), str(tmp_path / "bad"), presence="sometimes")
    with pytest.raises(ConfigError, match="disagree"):
        cli.evaluate(str(data), str(tmp_path / "bad"), dataset_preset="chaos", preset="cmr")
    with pytest.warns(FutureWarning, match="--dataset_preset"):
        cli.evaluate(str(data), str(tmp_path / "ev"), preset="chaos", folds=[0], classes=["LIVER"],
                     modes=["gt_free"], n_overlays=0, cleanup="fraction", presence="soft_area")  # fmt: skip
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    settings = metrics["per_fold"]["0"]["settings"]["gt_free"]
    assert (settings["cleanup"], settings["presence"]) == ("fraction", "soft_area")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name does not warn
        cli.evaluate(str(data), str(tmp_path / "ev2"), dataset_preset="chaos", folds=[0], classes=["LIVER"],
                     modes=["protocol"], n_overlays=0)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- one vocabulary
def test_label_error_names_the_fitting_preset(tmp_path):
    root = tmp_path / "cmr"
    root.mkdir()
    img = np.random.default_rng(0).uniform(0, 100, (4, 8, 8)).astype(np.float32)
    lab = np.zeros(img.shape)
    lab[1, 2:4, 2:4], lab[2, 2:4, 2:4], lab[2, 5:7, 5:7] = 200, 500, 600
    for pid in ("1", "2"):
        _save(root / f"image_{pid}.nii.gz", img)
        _save(root / f"label_{pid}.nii.gz", lab)
    ds = PreparedVolumeDataset(root, "chaos")
    with pytest.raises(DataError, match=r"label values \[200, 500, 600\].*'cmr' preset.*dataset_preset"):
        ds.load_label("1")


def test_comparable_with_published_only_for_all_folds():
    from labelless.evaluation.reports import result_to_dict
    from labelless.evaluation.results import FoldResult, ModeResult

    def mode(folds):
        frs = {f: FoldResult(fold=f, mode="protocol", dataset="chaos", n_folds=5, classes=[1], class_names={1: "L"},
                             test_pids=[str(f)], support_pid="9") for f in folds}  # fmt: skip
        return ModeResult("protocol", "chaos", 5, [1], {1: "L"}, frs, [])

    assert result_to_dict(mode(range(5)))["comparable_with_published"] is True
    assert result_to_dict(mode([0]))["comparable_with_published"] is False


def test_no_random_init_warning_when_weights_are_loaded():
    from labelless.fewshot.volume.workflow import weights_will_be_loaded
    from labelless.networks.encoders import build_encoder

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        build_encoder("resnet18", base_width=8)
    assert any("randomly initialised" in str(w.message) for w in rec)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert weights_will_be_loaded("true") is True
        build_encoder("resnet18", base_width=8)
        warnings.warn("another warning still shows", stacklevel=1)
    assert [str(w.message) for w in rec] == ["another warning still shows"]


def test_fsms_folder_says_how_many_images_it_scores(tmp_path, caplog):
    from labelless.fewshot.image.synthetic import write_skin_phantoms
    from labelless.fewshot.image.workflow import target_pools

    folder = write_skin_phantoms(tmp_path / "skin", n_images=10, size=32, seed=0)
    with caplog.at_level("WARNING", logger="labelless.fewshot.image"):
        pools = target_pools(folder, image_size=32)
    assert len(next(iter(pools["test"].values())).image_ids) == 6
    assert "10 images" in caplog.text and "first 4" in caplog.text and "other 6" in caplog.text
    assert "unlabeled_fraction=0" in caplog.text
    everything = target_pools(folder, image_size=32, unlabeled_fraction=0.0)  # all of them as a test set, by choice
    assert len(next(iter(everything["test"].values())).image_ids) == 10 and everything["unlabeled"] is None


def test_fsms_folder_val_subfolder_is_the_validation_pool(tmp_path):
    from labelless.fewshot.image.synthetic import write_skin_phantoms
    from labelless.fewshot.image.workflow import target_pools

    folder = write_skin_phantoms(tmp_path / "skin", n_images=10, size=32, seed=0)
    assert target_pools(folder, image_size=32)["val"] is None  # none given: no validation pool
    write_skin_phantoms(Path(folder) / "val", n_images=4, size=32, seed=1)
    pools = target_pools(folder, image_size=32)
    assert pools["val"] is not None and len(pools["val"].image_ids) == 4
    assert len(next(iter(pools["test"].values())).image_ids) == 6  # the test pool is unchanged
