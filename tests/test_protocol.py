# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the few-shot evaluation protocol (fewshot_protocol.md §6): slice rules, inference, scoring, folds."""

from __future__ import annotations

import json
import math
import unittest
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from parameterized import parameterized

from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError, DataError
from labelless.fewshot.volume.protocol import (
    chunk_of_slice,
    evaluate,
    evaluate_fold,
    protocol_chunks,
    score_predictions,
    score_scan,
    scored_range,
    segment_volume,
    support_relative_chunks,
    support_relative_extent,
    support_relative_slices,
    support_shot_slices,
    support_slices,
)

# ---------------------------------------------------------------------------------------------------- synthetic data
PIDS = ["1", "2", "3", "5", "8", "10"]  # 6 scans, 5 folds: fold 0 tests 1, 2 with support 3
SPACING = (1.5, 1.5, 4.0)  # (x, y, z)
Z, H, W = 8, 24, 24
# per class: (z0, nz, h, w) per scan; nz*h*w is constant per class so every volume has the same intensity histogram
# (the per-volume z-score then maps each class value identically and a thresholding predictor is exact)
BOXES = {
    1: [(0, 2, 4, 4), (1, 1, 4, 8), (2, 4, 2, 4), (3, 2, 4, 4), (4, 1, 4, 8), (0, 4, 2, 4)],
    2: [(3, 1, 4, 4), (2, 2, 2, 4), (1, 4, 2, 2), (5, 1, 4, 4), (0, 2, 2, 4), (4, 4, 2, 2)],
    3: [(1, 3, 2, 4), (4, 2, 3, 4), (6, 1, 4, 6), (2, 3, 2, 4), (3, 2, 3, 4), (0, 1, 4, 6)],
    4: [(2, 2, 3, 3), (5, 1, 3, 6), (3, 3, 2, 3), (1, 2, 3, 3), (0, 1, 3, 6), (5, 3, 2, 3)],
}
QUADRANT = {1: (2, 2), 2: (2, 14), 3: (14, 2), 4: (14, 14)}


def write_synthetic(root: Path, missing: dict[str, int] | None = None) -> Path:
    """Write a prepared dataset; ``missing`` = {pid: class} removes the class from that scan's label (the image
    keeps the value, a decoy, so the intensity histogram stays the same)."""
    root.mkdir(parents=True, exist_ok=True)
    missing = missing or {}
    affine = np.diag([*SPACING, 1.0])
    for i, pid in enumerate(PIDS):
        lab = np.zeros((Z, H, W), np.float64)
        img = np.zeros((Z, H, W), np.float32)
        for c, boxes in BOXES.items():
            z0, nz, h, w = boxes[i]
            r, q = QUADRANT[c]
            img[z0 : z0 + nz, r : r + h, q : q + w] = c
            if missing.get(pid) != c:
                lab[z0 : z0 + nz, r : r + h, q : q + w] = c
        nib.save(nib.Nifti1Image(img.transpose(2, 1, 0), affine), str(root / f"image_{pid}.nii.gz"))
        nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), affine), str(root / f"label_{pid}.nii.gz"))
    return root


def threshold_predictor(sup_img: torch.Tensor, sup_msk: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Exact on the synthetic data: FG = query pixels with the support's class intensity."""
    assert not torch.is_grad_enabled()
    assert sup_img.ndim == 4 and sup_img.shape[1] == 3 and sup_msk.shape[1] == 1 and query.shape[1] == 3
    assert set(torch.unique(sup_msk).tolist()) <= {0.0, 1.0}
    v = sup_img[:, 0][sup_msk[:, 0] > 0.5].mean()
    fg = ((query[:, 0] - v).abs() < 1e-3).float()
    return torch.stack([1 - fg, fg], dim=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> PreparedVolumeDataset:
    root = write_synthetic(tmp_path_factory.mktemp("synth"), missing={"2": 4})
    return PreparedVolumeDataset(root, "phantom_abdomen")


# ---------------------------------------------------------------------------------------------------- slice rules
SUPPORT_CASES = [
    ("chaos_liver_scan8", list(range(4, 32)), 3, [8, 18, 27]),
    ("single", [5], 3, [5, 5, 5]),
    ("two", [2, 3], 3, [2, 3, 3]),
    ("unsorted", [9, 7, 8, 10, 6, 11], 3, [7, 9, 11]),
    ("five_chunks", list(range(10)), 5, [1, 3, 5, 7, 9]),
]


class TestSliceRules(unittest.TestCase):
    @parameterized.expand(SUPPORT_CASES)
    def test_support_slices(self, _, zs, n_chunks, expected):
        self.assertEqual(support_slices(zs, n_chunks), expected)

    def test_support_slices_equal_reference_float_rule(self):
        pcts = [1 / 6, 1 / 2, 5 / 6]
        for n in range(1, 120):
            zs = list(range(100, 100 + n))
            self.assertEqual(support_slices(zs), [zs[int(p * n)] for p in pcts], msg=f"|Z_s|={n}")

    def test_support_empty(self):
        with self.assertRaisesRegex(DataError, "label_9"):
            support_slices([], source="label_9.nii.gz")

    def test_k_shot(self):
        self.assertEqual(support_shot_slices(list(range(12)), 3, 2), [[1, 3], [5, 7], [9, 11]])
        self.assertEqual(support_shot_slices(list(range(4, 32)), 3, 1), [[8], [18], [27]])

    @parameterized.expand([
        ("start", 10, 10, 19, 0), ("first_end", 12, 10, 19, 0), ("second_start", 13, 10, 19, 1),
        ("second_end", 15, 10, 19, 1), ("third_start", 16, 10, 19, 2), ("last", 19, 10, 19, 2),
        ("below", 5, 10, 19, 0), ("above", 25, 10, 19, 2),
        ("single_slice", 7, 7, 7, 1), ("single_slice_outside", 3, 7, 7, 1),
    ])  # fmt: skip
    def test_chunk_of_slice(self, _, z, z_min, z_max, expected):
        self.assertEqual(chunk_of_slice(z, z_min, z_max), expected)

    def test_chunk_single_slice_other_n(self):
        self.assertEqual(chunk_of_slice(4, 4, 4, n_chunks=5), 2)

    def test_chunk_equals_reference_float_formula(self):
        for z_min in range(0, 4):
            for z_max in range(z_min + 1, z_min + 25):
                for z in range(z_min - 3, z_max + 4):
                    ref = min(max(math.floor((z - z_min) / ((z_max - z_min) / 3)), 0), 2)
                    self.assertEqual(chunk_of_slice(z, z_min, z_max), ref)
        self.assertEqual(protocol_chunks(6, 1, 4), [0, 0, 1, 2, 2, 2])  # extent 1..4: (z - 1) / 1

    def test_chunk_bad_extent(self):
        with self.assertRaises(DataError):
            chunk_of_slice(3, 5, 4)

    def test_support_relative(self):
        # u0 = 2/10, u1 = 8/10 -> a_hat = 4, b_hat = 16 on 21 slices; chunk = floor((z - 4) / 4) clipped
        self.assertEqual(support_relative_extent(21, 11, (2, 8)), (4.0, 16.0))
        self.assertEqual(support_relative_chunks(21, 11, (2, 8)), [0] * 8 + [1] * 4 + [2] * 9)
        # degenerate estimated extent: denominator max(b_hat - a_hat, 1) = 1
        self.assertEqual(support_relative_chunks(5, 11, (5, 5)), [0, 0, 0, 2, 2])
        # single-slice query -> middle chunk; single-slice support -> u = 0.5
        self.assertEqual(support_relative_chunks(1, 11, (2, 8)), [1])
        self.assertEqual(support_relative_extent(9, 1, (0, 0)), (4.0, 4.0))
        with self.assertRaises(DataError):
            support_relative_chunks(5, 11, (3, 12))

    def test_support_relative_slices(self):
        # a_hat = 3/10 * 14 = 4.2, b_hat = 6/10 * 14 = 8.4: slices in [a_hat - m, b_hat + m] only (no rounding
        # outwards: slice 2 lies below 4.2 - 2 = 2.2 and slice 11 above 8.4 + 2 = 10.4)
        self.assertEqual(support_relative_slices(15, 11, (3, 6), margin=0), [5, 6, 7, 8])
        self.assertEqual(support_relative_slices(15, 11, (3, 6), margin=2), [3, 4, 5, 6, 7, 8, 9, 10])
        self.assertEqual(support_relative_slices(21, 11, (2, 8), margin=1), list(range(3, 18)))  # integer extent
        with self.assertRaises(ConfigError):
            support_relative_slices(15, 11, (3, 6), margin=-1)

    @parameterized.expand([
        ("protocol", 10, "protocol", 3, 6, 0, range(3, 7)),
        ("margin", 10, "protocol", 3, 6, 2, range(1, 9)),
        ("clipped", 10, "protocol", 3, 8, 5, range(0, 10)),
        ("gt_free", 10, "gt_free", None, None, 0, range(0, 10)),
    ])  # fmt: skip
    def test_scored_range(self, _, n, mode, z_min, z_max, margin, expected):
        self.assertEqual(scored_range(n, mode, z_min, z_max, margin), expected)

    def test_scored_range_errors(self):
        with self.assertRaises(DataError):
            scored_range(10, "protocol")
        with self.assertRaises(ConfigError):
            scored_range(10, "oracle", 1, 2)


# ---------------------------------------------------------------------------------------------------- inference
class RecordingPredictor:
    def __init__(self):
        self.calls = []

    def __call__(self, sup_img, sup_msk, query):
        self.calls.append((id(sup_img), sup_img.shape[0], query.shape[0], float(sup_img[0, 0, 0, 0])))
        fg = (query[:, 0] > 0).float()
        return torch.stack([1 - fg, fg], dim=1)


class TestSegmentVolume(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(0)
        self.q = rng.standard_normal((7, 8, 8)).astype(np.float32)
        mask = np.zeros((1, 8, 8), np.uint8)
        mask[0, 2:4, 2:4] = 1
        self.supports = [(np.full((1, 8, 8), float(i), np.float32), mask) for i in range(3)]

    def test_grouping_batching_argmax(self):
        pred = RecordingPredictor()
        chunks = [0, 0, 1, 1, 1, 2, 2]
        out = segment_volume(self.q, self.supports, chunks, pred, batch_size=2)
        self.assertEqual(out.dtype, np.uint8)
        np.testing.assert_array_equal(out, (self.q > 0).astype(np.uint8))
        # chunk 0: one call of 2; chunk 1: calls of 2 and 1; chunk 2: one call of 2; support value = chunk index
        self.assertEqual([(c[2], c[3]) for c in pred.calls], [(2, 0.0), (2, 1.0), (1, 1.0), (2, 2.0)])
        self.assertEqual(pred.calls[1][0], pred.calls[2][0])  # the same support tensor for all batches of a chunk

    def test_subset_of_slices(self):
        out = segment_volume(self.q, self.supports, [0] * 7, RecordingPredictor(), slices=[1, 3])
        self.assertEqual(set(np.nonzero(out.reshape(7, -1).any(1))[0]) - {1, 3}, set())
        self.assertFalse(out[0].any() or out[2].any())

    def test_errors(self):
        with self.assertRaisesRegex(DataError, "predictor output"):
            segment_volume(self.q, self.supports, [0] * 7, lambda s, m, q: torch.zeros(q.shape[0], 1, 8, 8))
        empty = [(self.supports[0][0], np.zeros((1, 8, 8), np.uint8))]
        with self.assertRaisesRegex(DataError, "empty"):
            segment_volume(self.q, empty, [0] * 7, RecordingPredictor())
        with self.assertRaises(DataError):
            segment_volume(self.q, self.supports, [0] * 6, RecordingPredictor())
        with self.assertRaises(DataError):
            segment_volume(self.q, self.supports, [3] * 7, RecordingPredictor())


# ---------------------------------------------------------------------------------------------------- scoring
def test_score_scan_sum_not_mean():
    pred = np.zeros((5, 2, 3), np.uint8)
    gt = np.zeros((5, 2, 3), np.uint8)
    gt[1] = [[1, 1, 0], [1, 1, 0]]
    pred[1] = [[1, 1, 1], [1, 0, 0]]
    gt[2] = [[0, 0, 0], [0, 0, 1]]
    gt[3] = [[1, 1, 0], [0, 0, 0]]
    pred[3] = [[1, 1, 1], [1, 0, 0]]
    pred[0] = pred[4] = 1  # outside the scored range [1, 3]: not counted
    s = score_scan(pred, gt, scored_range(5, "protocol", 1, 3), SPACING, fold=0, pid="x", class_id=1,
                   class_name="LIVER", mode="protocol")  # fmt: skip
    assert (s.tp, s.fp, s.fn, s.n_scored_slices, s.z_range) == (5, 3, 2, 3, (1, 3))
    assert abs(s.dice - 10 / 15) < 1e-9
    assert abs(s.dice - (0.75 + 0.0 + 4 / 6) / 3) > 0.15


# ---------------------------------------------------------------------------------------------------- synthetic folds
def test_evaluate_fold_oracle_protocol(synth, tmp_path):
    with pytest.warns(UserWarning, match="scan 2 does not contain class SPLEEN"):
        res = evaluate_fold(synth, 0, threshold_predictor, mode="protocol", batch_size=3, output_dir=tmp_path,
                            save_predictions=True, n_overlays=1)  # fmt: skip
    assert res.test_pids == ["1", "2"] and res.support_pid == "3"
    assert res.skipped == [("2", 4)]
    assert len(res.scans) == 7
    for s in res.scans:
        assert s.dice == 1.0 and s.fp == 0 and s.fn == 0 and s.hd95 == 0.0 and s.asd == 0.0
    # scored range = the class extent of the query (margin 0)
    s = next(s for s in res.scans if s.pid == "2" and s.class_id == 3)
    assert s.z_range == (4, 5) and s.n_scored_slices == 2
    # support slices follow the rule on the support label (scan 3 = index 2 in BOXES)
    for c in (1, 2, 3, 4):
        z0, nz = BOXES[c][2][:2]
        assert res.support_slices[c] == [[z] for z in support_slices(list(range(z0, z0 + nz)))]
    assert res.class_dice() == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    assert len(res.overlays) == 4 and res.overlays[0].query_image.dtype == np.uint8
    # saved predictions: query geometry, all slices, and they score 1.0 again
    f = tmp_path / "predictions" / "protocol" / "pred_1_LIVER.nii.gz"
    img = nib.load(str(f))
    np.testing.assert_allclose(img.affine, synth.load_image("1").affine)
    assert img.shape == (W, H, Z)
    assert not (tmp_path / "predictions" / "protocol" / "pred_2_SPLEEN.nii.gz").exists()
    with pytest.warns(UserWarning):
        again = score_predictions(synth, tmp_path / "predictions" / "protocol", fold=0)
    assert [s.dice for s in again.scans] == [1.0] * 7


def test_evaluate_fold_oracle_gt_free(synth):
    with pytest.warns(UserWarning, match="excluded"):
        res = evaluate_fold(synth, 0, threshold_predictor, mode="gt_free", n_shots=2)
    assert res.skipped == [("2", 4)] and len(res.scans) == 7
    assert all(s.n_scored_slices == Z and s.z_range == (0, Z - 1) and s.dice == 1.0 for s in res.scans)
    assert all(len(shots) == 2 for shots in res.support_slices[1])


def test_gt_free_predict_outside_extent_off(synth):
    # support scan 3 has class 3 on slice 6 only -> a_hat = b_hat = 6 in every query: with margin 0 only slice 6 is
    # predicted; query 1 has class 3 on slices 1..3, so everything is missed (Dice 0, HD95 NaN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_fold(synth, 0, threshold_predictor, classes=[3], mode="gt_free",
                            predict_outside_extent=False, extent_margin=0)  # fmt: skip
    s = next(s for s in res.scans if s.pid == "1")
    assert s.dice == 0.0 and s.tp == 0 and s.fn == 24 and math.isnan(s.hd95)
    full = evaluate_fold(synth, 0, threshold_predictor, classes=[3], mode="gt_free")
    assert all(s.dice == 1.0 for s in full.scans)


def test_support_without_class_is_an_error(tmp_path):
    ds = PreparedVolumeDataset(write_synthetic(tmp_path / "d", missing={"3": 2}), "phantom_abdomen")
    with pytest.raises(DataError, match=r"label_3\.nii\.gz.*RK \(id 2\)"):
        evaluate_fold(ds, 0, threshold_predictor, mode="gt_free")


def test_normalization_options(synth):
    with pytest.raises(ConfigError, match="norm_stats"):
        evaluate_fold(synth, 0, threshold_predictor, classes=[1], normalization="fold_zscore")
    res = evaluate_fold(synth, 0, threshold_predictor, classes=[1], normalization="fold_zscore", norm_stats=(1.0, 2.0))
    assert all(s.dice == 1.0 for s in res.scans)
    with pytest.raises(ConfigError):
        evaluate_fold(synth, 0, threshold_predictor, mode="oracle")


@pytest.mark.parametrize(
    "available, label, missing",
    [((0, 1, 2, 3, 4), "5-fold", []), ((0,), "fold 0", [1, 2, 3, 4]), ((0, 1, 4), "folds 0, 1, 4 (3 of 5)", [2, 3])],
)
def test_evaluate_missing_folds(synth, available, label, missing):
    asked = []

    def predictor_for_fold(f):
        asked.append(f)
        return threshold_predictor if f in available else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(synth, predictor_for_fold, classes=[1, 4], modes=("gt_free", "protocol"), n_overlays=0)
    assert asked == [0, 1, 2, 3, 4]
    assert list(res.modes) == ["protocol", "gt_free"]
    assert res.folds_missing == missing
    for mr in res.modes.values():
        assert mr.label == label and mr.folds_evaluated == list(available) and mr.folds_missing == missing
        pc = mr.per_class()
        assert pc[1]["dice"] == 1.0 and pc[4]["dice"] == 1.0 and mr.mean_dice == 1.0
        assert pc[1]["n_scans"] == sum(len(mr.folds[f].test_pids) for f in available)
        assert pc[4]["n_skipped"] == (1 if 0 in available else 0)


# ---------------------------------------------------------------------------------------------------- real CHAOS
def test_chaos_oracle_predictions_score_one(chaos_dir):
    ds = PreparedVolumeDataset(chaos_dir, "chaos")
    preds = {pid: {c: (ds.load_label(pid).array == c) for c in (1, 2, 3, 4)} for pid in ("1", "2", "3", "5")}
    for mode in ("protocol", "gt_free"):
        res = score_predictions(ds, preds, fold=0, mode=mode)
        assert len(res.scans) == 16 and not res.skipped
        assert all(s.dice == 1.0 and s.fp == 0 and s.fn == 0 and s.hd95 == 0.0 for s in res.scans)
        assert res.mean_dice == 1.0
    # protocol mode scores exactly the class extent from the class-slice index
    cm = json.loads((chaos_dir / "classmap_1.json").read_text())
    s = next(s for s in res.scans if s.pid == "1" and s.class_id == 1)
    assert s.n_scored_slices == ds.load_image("1").shape[0]  # gt_free: all slices
    res = score_predictions(ds, preds, fold=0, mode="protocol")
    s = next(s for s in res.scans if s.pid == "1" and s.class_id == 1)
    assert s.z_range == (min(cm["LIVER"]["1"]), max(cm["LIVER"]["1"]))
    # a wrong prediction is not scored 1.0
    bad = {pid: {c: np.zeros_like(v) for c, v in d.items()} for pid, d in preds.items()}
    assert score_predictions(ds, bad, fold=0, classes=[1]).mean_dice == 0.0


# literal support slices of CHAOS fold 0 (support scan 8), checked by hand from classmap_1.json:
# LIVER 4..31 (28): idx 4, 14, 23 -> 8, 18, 27; RK 2..19 (18): idx 3, 9, 15 -> 5, 11, 17;
# LK 4..20 (17): idx 2, 8, 14 -> 6, 12, 18; SPLEEN 5..25 (21): idx 3, 10, 17 -> 8, 15, 22
CHAOS_SUPPORT = {1: [8, 18, 27], 2: [5, 11, 17], 3: [6, 12, 18], 4: [8, 15, 22]}


def test_chaos_support_slices(chaos_dir):
    ds = PreparedVolumeDataset(chaos_dir, "chaos")
    cm = ds.classmap()
    for c, literal in CHAOS_SUPPORT.items():
        zs = sorted(cm[ds.label_map.name(c)]["8"])
        n = len(zs)
        assert support_slices(zs) == [zs[int(np.floor(p * n))] for p in (1 / 6, 1 / 2, 5 / 6)] == literal

    seen = []

    def recorder(sup_img, sup_msk, query):
        seen.append((float(sup_msk.sum()), tuple(sup_img.shape)))
        return torch.zeros(query.shape[0], 2, *query.shape[2:])  # all background

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_fold(ds, 0, recorder, classes=[1], mode="protocol", batch_size=64)
    assert res.support_pid == "8" and res.support_slices[1] == [[z] for z in CHAOS_SUPPORT[1]]
    lab8 = ds.load_label("8").array == 1
    assert sorted({s[0] for s in seen}) == sorted({float(lab8[z].sum()) for z in CHAOS_SUPPORT[1]})
    assert all(s.dice == 0.0 and math.isnan(s.hd95) for s in res.scans)
