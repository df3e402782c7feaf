# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.evaluation.reports: metrics.json layout, CSV, Markdown and PIL overlays."""

from __future__ import annotations

import csv
import json
import math
import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from parameterized import parameterized
from PIL import Image

from labelless.evaluation.overlays import TITLE_HEIGHT, render_overlay, to_uint8
from labelless.evaluation.reports import GT_FREE_NOTE, result_to_dict, write_reports
from labelless.evaluation.results import EvaluationResult, FoldResult, ModeResult, OverlaySample, ScanScore

NAMES = {1: "LIVER", 4: "SPLEEN"}
H, W = 40, 48


def _scan(fold, pid, cid, dice, hd=1.0, mode="protocol"):
    return ScanScore(fold, pid, cid, NAMES[cid], tp=10, fp=1, fn=2, dice=dice, hd95=hd, asd=hd / 2,
                     n_scored_slices=5, z_range=(3, 7), mode=mode)  # fmt: skip


def _overlay(mode, pid):
    q = np.linspace(-2, 3, H * W, dtype=np.float32).reshape(H, W)
    m = np.zeros((H, W), bool)
    m[10:20, 12:30] = True
    return OverlaySample(mode, 0, 1, "LIVER", pid, 4, to_uint8(q), np.roll(m, 2, 1), m, "8", 6, to_uint8(q), m, 0.8)


def _fold(fold, mode, scans, skipped=(), overlays=()):
    return FoldResult(fold, mode, "chaos", 5, [1, 4], dict(NAMES), test_pids=sorted({s.pid for s in scans}),
                      support_pid="8", scans=list(scans), skipped=list(skipped), support_slices={1: [[8], [18], [27]]},
                      overlays=list(overlays))  # fmt: skip


def make_result() -> EvaluationResult:
    """Folds 0 and 1 evaluated, 2-4 missing. Protocol: LIVER fold 0 = mean(0.8, 0.6) = 0.7, fold 1 = 0.9 -> 0.8;
    SPLEEN fold 0 = 0.5, fold 1 = mean(0.7, 0.9) = 0.8 -> 0.65; mean = 0.725. One SPLEEN HD95 is NaN."""
    res = {}
    for mode in ("protocol", "gt_free"):
        off = 0.0 if mode == "protocol" else -0.1
        f0 = _fold(0, mode, [_scan(0, "1", 1, 0.8 + off, mode=mode), _scan(0, "2", 1, 0.6 + off, mode=mode),
                             _scan(0, "1", 4, 0.5 + off, hd=math.nan, mode=mode)],
                   skipped=[("2", 4)], overlays=[_overlay(mode, "1")])  # fmt: skip
        f1 = _fold(1, mode, [_scan(1, "8", 1, 0.9 + off, mode=mode), _scan(1, "8", 4, 0.7 + off, mode=mode),
                             _scan(1, "10", 4, 0.9 + off, hd=3.0, mode=mode)])  # fmt: skip
        res[mode] = ModeResult(mode, "chaos", 5, [1, 4], dict(NAMES), {0: f0, 1: f1}, [2, 3, 4])
    return EvaluationResult(res, [2, 3, 4])


class TestReports(unittest.TestCase):
    def test_metrics_json(self):
        d = result_to_dict(make_result())
        for key in ("per_class", "mean_dice", "per_scan", "per_fold", "mode", "folds_evaluated", "folds_missing",
                    "label", "gt_free", "modes"):  # fmt: skip
            self.assertIn(key, d)
        self.assertEqual(d["modes"], ["protocol", "gt_free"])
        self.assertEqual(d["mode"], "protocol")
        self.assertEqual(d["label"], "folds 0, 1 (2 of 5)")
        self.assertEqual((d["folds_evaluated"], d["folds_missing"]), ([0, 1], [2, 3, 4]))
        self.assertAlmostEqual(d["per_class"]["LIVER"]["dice"], 0.8, places=12)
        self.assertAlmostEqual(d["per_class"]["SPLEEN"]["dice"], 0.65, places=12)
        self.assertAlmostEqual(d["mean_dice"], 0.725, places=12)
        self.assertEqual(d["per_class"]["LIVER"]["n_scans"], 3)
        self.assertEqual(d["per_class"]["SPLEEN"]["n_skipped"], 1)
        # SPLEEN HD95: fold 0 has only a NaN scan (left out, counted); fold 1 mean (1 + 3) / 2 = 2
        self.assertAlmostEqual(d["per_class"]["SPLEEN"]["hd95"], 2.0)
        self.assertEqual(d["per_class"]["SPLEEN"]["hd95_n_nan"], 1)
        self.assertIsNone(d["per_fold"]["0"]["per_class"]["SPLEEN"]["hd95"])
        self.assertEqual(len(d["per_scan"]), 6)
        self.assertEqual(set(d["per_scan"][0]), {"fold", "pid", "class", "class_id", "dice", "tp", "fp", "fn",
                                                 "hd95", "asd", "n_scored_slices", "z_range"})  # fmt: skip
        self.assertEqual(d["gt_free"]["mode"], "gt_free")
        self.assertFalse(d["gt_free"]["comparable_with_published"])
        self.assertAlmostEqual(d["gt_free"]["per_class"]["LIVER"]["dice"], 0.7, places=12)

    def test_five_fold_label(self):
        folds = {f: _fold(f, "protocol", [_scan(f, str(f), 1, 1.0), _scan(f, str(f), 4, 1.0)]) for f in range(5)}
        d = result_to_dict(ModeResult("protocol", "chaos", 5, [1, 4], dict(NAMES), folds, []))
        self.assertEqual(d["label"], "5-fold")
        self.assertNotIn("gt_free", d)
        single = result_to_dict(folds[0])
        self.assertEqual((single["label"], single["folds_missing"]), ("fold 0", []))

    def test_write_reports(self):
        with TemporaryDirectory() as tmp:
            paths = write_reports(make_result(), Path(tmp) / "out")
            out = Path(tmp) / "out"
            d = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN literal
            self.assertNotIn("NaN", (out / "metrics.json").read_text())
            self.assertAlmostEqual(d["mean_dice"], 0.725)
            with open(out / "metrics.csv") as f:
                rows = list(csv.DictReader(f))
            self.assertEqual(len(rows), 12)
            self.assertEqual({r["mode"] for r in rows}, {"protocol", "gt_free"})
            self.assertEqual(float(rows[0]["dice"]), 0.8)
            md = (out / "metrics.md").read_text()
            self.assertLess(md.index("## Protocol mode"), md.index("## GT-free mode"))
            self.assertIn(GT_FREE_NOTE, md)
            self.assertIn("| LIVER | 80.00 | 70.00 | 90.00 |", md)
            self.assertIn("**72.50**", md)
            png = out / "overlays" / "LIVER_1_z4.png"
            self.assertTrue(png.exists())
            self.assertTrue((out / "overlays" / "gt_free" / "LIVER_1_z4.png").exists())
            self.assertEqual(sorted(paths["overlays"]), sorted([png, out / "overlays" / "gt_free" / "LIVER_1_z4.png"]))
            with Image.open(png) as im:
                self.assertEqual(im.size, (4 * W, H + TITLE_HEIGHT))
                self.assertEqual(im.mode, "RGB")
                a = np.asarray(im)
            # prediction panel (3rd) is red on the predicted region; truth panel (4th) green on the truth
            self.assertGreater(int(a[TITLE_HEIGHT + 15, 2 * W + 20, 0]), int(a[TITLE_HEIGHT + 15, 2 * W + 20, 1]))
            self.assertGreater(int(a[TITLE_HEIGHT + 15, 3 * W + 20, 1]), int(a[TITLE_HEIGHT + 15, 3 * W + 20, 0]))
            # the title bar has text drawn on it
            self.assertGreater(int(a[:TITLE_HEIGHT].max()), 0)
            self.assertEqual([p.name for p in out.rglob("*.tmp*")], [])

    def test_render_without_support(self):
        s = _overlay("protocol", "1")
        s.support_image = None
        im = render_overlay(s)
        self.assertEqual(im.size, (4 * W, H + TITLE_HEIGHT))
        self.assertEqual(int(np.asarray(im)[TITLE_HEIGHT + 5, 5].max()), 0)

    @parameterized.expand([
        ("float", np.array([[0.0, 0.5], [1.0, 2.0]]), [[0, 64], [128, 255]]),
        ("constant", np.ones((2, 2)), [[0, 0], [0, 0]]),
        ("uint8", np.array([[3, 7]], np.uint8), [[3, 7]]),
    ])  # fmt: skip
    def test_to_uint8(self, _, arr, expected):
        np.testing.assert_array_equal(to_uint8(arr), np.asarray(expected, np.uint8))


if __name__ == "__main__":
    unittest.main()
