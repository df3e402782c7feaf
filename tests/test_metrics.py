# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.evaluation.metrics: counts, Dice from summed counts, HD95/ASD in mm with anisotropic spacing."""

from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from parameterized import parameterized

from labelless.errors import DataError
from labelless.evaluation.metrics import (
    ConfusionCounts,
    average_surface_distance,
    confusion_counts,
    dice_from_counts,
    dice_per_image,
    dice_score,
    hd95,
    nanmean_with_count,
    spacing_zyx,
    surface_distances,
)


def _three_slices() -> tuple[np.ndarray, np.ndarray]:
    """3 slices of 2x3; counts per slice computed by hand below."""
    pred = np.zeros((3, 2, 3), dtype=np.uint8)
    gt = np.zeros((3, 2, 3), dtype=np.uint8)
    # slice 0: gt 4 px, pred 4 px, 3 shared -> TP 3, FP 1, FN 1 (slice Dice 6/8 = 0.75)
    gt[0] = [[1, 1, 0], [1, 1, 0]]
    pred[0] = [[1, 1, 1], [1, 0, 0]]
    # slice 1: gt 1 px, nothing predicted -> TP 0, FP 0, FN 1 (slice Dice 0)
    gt[1] = [[0, 0, 0], [0, 0, 1]]
    # slice 2: gt 2 px, pred 4 px covering them -> TP 2, FP 2, FN 0 (slice Dice 4/6)
    gt[2] = [[1, 1, 0], [0, 0, 0]]
    pred[2] = [[1, 1, 1], [1, 0, 0]]
    return pred, gt


class TestCounts(unittest.TestCase):
    def test_hand_computed_counts_and_sum_vs_mean(self):
        pred, gt = _three_slices()
        per_slice = [confusion_counts(pred[z], gt[z]) for z in range(3)]
        self.assertEqual([(c.tp, c.fp, c.fn) for c in per_slice], [(3, 1, 1), (0, 0, 1), (2, 2, 0)])
        total = confusion_counts(pred, gt)
        self.assertEqual((total.tp, total.fp, total.fn, total.tn), (5, 3, 2, 8))
        self.assertEqual(per_slice[0] + per_slice[1] + per_slice[2], total)
        # summed counts: 2*5 / (2*5 + 3 + 2) = 10/15
        self.assertAlmostEqual(total.dice, 10.0 / 15.0, delta=1e-9)
        self.assertAlmostEqual(dice_score(pred, gt), 10.0 / 15.0, delta=1e-9)
        mean_slice = (0.75 + 0.0 + 4.0 / 6.0) / 3.0
        self.assertAlmostEqual(float(np.mean([c.dice for c in per_slice])), mean_slice, delta=1e-9)
        self.assertGreater(abs(total.dice - mean_slice), 0.15)

    def test_tensor_and_bool_inputs_agree(self):
        pred, gt = _three_slices()
        a = confusion_counts(pred, gt)
        b = confusion_counts(torch.from_numpy(pred).float(), torch.from_numpy(gt.astype(bool)))
        self.assertEqual(a, b)

    @parameterized.expand([
        ("both_empty", 0, 0, 0, 1.0),
        ("gt_empty_pred_not", 0, 5, 0, 0.0),
        ("pred_empty_gt_not", 0, 0, 5, 0.0),
        ("half", 1, 1, 1, 0.5),
    ])  # fmt: skip
    def test_dice_from_counts(self, _, tp, fp, fn, expected):
        self.assertAlmostEqual(dice_from_counts(tp, fp, fn), expected, delta=1e-12)

    def test_bad_masks(self):
        with self.assertRaises(DataError):
            confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))
        with self.assertRaises(DataError):
            confusion_counts(np.full((2, 2), 2), np.zeros((2, 2)))
        with self.assertRaises(DataError):
            confusion_counts(np.full((2, 2), np.nan), np.zeros((2, 2)))

    def test_dice_per_image(self):
        pred, gt = _three_slices()
        pred = np.concatenate([pred, np.zeros((1, 2, 3), np.uint8)])
        gt = np.concatenate([gt, np.zeros((1, 2, 3), np.uint8)])
        d = dice_per_image(pred[:, None], gt[:, None])
        np.testing.assert_allclose(d, [0.75, 0.0, 4.0 / 6.0, 1.0], atol=1e-12)

    def test_counts_dataclass_add(self):
        self.assertEqual(ConfusionCounts(1, 2, 3, 4) + ConfusionCounts(1, 1, 1, 1), ConfusionCounts(2, 3, 4, 5))


SPACING_XYZ = (0.5, 0.8, 3.0)  # Volume.spacing order (x, y, z); arrays are (z, y, x)


def _planes(axis: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((10, 20, 30), dtype=bool)
    b = np.zeros_like(a)
    if axis == 0:
        a[2, 5:15, 5:25] = b[2 + gap, 5:15, 5:25] = True
    elif axis == 1:
        a[2:8, 3, 5:25] = b[2:8, 3 + gap, 5:25] = True
    else:
        a[2:8, 5:15, 4] = b[2:8, 5:15, 4 + gap] = True
    return a, b


# (axis of the array along which the planes are separated, gap in voxels, expected distance in mm)
PLANE_CASES = [
    ("z", 0, 3, 3 * 3.0),
    ("y", 1, 5, 5 * 0.8),
    ("x", 2, 4, 4 * 0.5),
]


class TestSurfaceDistances(unittest.TestCase):
    def test_spacing_order(self):
        self.assertEqual(spacing_zyx(SPACING_XYZ), (3.0, 0.8, 0.5))

    @parameterized.expand(PLANE_CASES)
    def test_parallel_planes_anisotropic(self, _, axis, gap, expected_mm):
        a, b = _planes(axis, gap)
        hd, asd = surface_distances(a, b, spacing_zyx(SPACING_XYZ))
        self.assertAlmostEqual(hd, expected_mm, places=4)
        self.assertAlmostEqual(asd, expected_mm, places=4)
        self.assertAlmostEqual(hd95(b, a, spacing_zyx(SPACING_XYZ)), expected_mm, places=4)
        self.assertAlmostEqual(average_surface_distance(a, b, spacing_zyx(SPACING_XYZ)), expected_mm, places=4)
        if axis != 1:  # the y spacing sits in the middle: reversing the order only moves z and x
            # passing the spacing in the file's (x, y, z) order gives a different (wrong) value
            wrong = surface_distances(a, b, SPACING_XYZ)[0]
            self.assertNotAlmostEqual(wrong, expected_mm, places=3)

    @parameterized.expand([
        ("random_3d", (12, 30, 30), spacing_zyx(SPACING_XYZ), 0),
        ("random_2d", (40, 30), (0.7, 1.9), 1),
        ("blobs_3d", (30, 60, 60), (7.7, 1.25, 1.25), 2),
    ])  # fmt: skip
    def test_matches_monai(self, _, shape, sp, seed):
        rng = np.random.default_rng(seed)
        if seed == 2:  # smooth boxes (KD-tree path) with a hole, an outlier voxel and an array-border contact
            p = np.zeros(shape, bool)
            t = np.zeros(shape, bool)
            p[2:25, 5:50, 8:55] = True
            p[8:15, 10:30, 12:30] = False
            t[0:22, 8:56, 4:50] = True
            p[29, 58, 58] = True
        else:
            p = rng.random(shape) > 0.7
            t = rng.random(shape) > 0.6
        hd, asd = surface_distances(p, t, sp)
        pt, tt = torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None]
        ref_hd = float(compute_hausdorff_distance(pt, tt, include_background=True, percentile=95, spacing=sp))
        ref_asd = float(
            compute_average_surface_distance(pt, tt, include_background=True, symmetric=True, spacing=sp)
        )
        self.assertAlmostEqual(hd, ref_hd, places=4)
        self.assertAlmostEqual(asd, ref_asd, places=4)
        self.assertGreater(hd, 0.0)

    def test_empty_gives_nan(self):
        a, _ = _planes(0, 1)
        empty = np.zeros_like(a)
        for p, t in ((empty, a), (a, empty), (empty, empty)):
            hd, asd = surface_distances(p, t, 1.0)
            self.assertTrue(math.isnan(hd) and math.isnan(asd))
        self.assertEqual(surface_distances(a, a, spacing_zyx(SPACING_XYZ)), (0.0, 0.0))

    def test_spacing_length_checked(self):
        a, b = _planes(0, 1)
        with self.assertRaises(DataError):
            surface_distances(a, b, (1.0, 1.0))

    def test_nanmean_with_count(self):
        m, n = nanmean_with_count([1.0, float("nan"), 3.0])
        self.assertEqual((m, n), (2.0, 1))
        m, n = nanmean_with_count([float("nan")])
        self.assertTrue(math.isnan(m))
        self.assertEqual(n, 1)


if __name__ == "__main__":
    unittest.main()
