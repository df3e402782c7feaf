# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the few-shot episode machinery (fewshot_protocol §3, §4, §5): slice pool, SSL and labelled episodes."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from parameterized import parameterized

from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError, DataError
from labelless.fewshot.volume.episodes import (
    SelfSupervisedEpisodeDataset,
    build_slice_pool,
    is_degenerate_mask,
)
from labelless.io.writers import write_volume
from labelless.networks.prototypes import downsample_mask
from labelless.transforms.augment import RandFewShotAugment, RandFewShotAugmentd
from labelless.transforms.intensity import fold_statistics

Z, H, W = 6, 64, 64


def _quadrants(z: int = Z, n: int = 4) -> np.ndarray:
    """(Z, H, W) superpixel map: ids 1..n on image quadrants/halves (gap-free)."""
    sp = np.zeros((z, H, W), np.int32)
    if n == 2:
        sp[:, :, : W // 2], sp[:, :, W // 2 :] = 1, 2
    else:
        for k in range(4):
            sp[:, (k // 2) * H // 2 : (k // 2 + 1) * H // 2, (k % 2) * W // 2 : (k % 2 + 1) * W // 2] = k + 1
    return sp


# scan -> {class id: slices}; chaos ids: 1 liver, 2 RK, 3 LK, 4 spleen
ORGANS = {"1": {2: [1, 2], 1: [3]}, "2": {3: [4], 1: [0], 4: [2]}, "10": {4: [1]}}
EMPTY_SP_SLICE = 5  # R = 0 on that slice of every scan


def _write_prepared(root: Path, preset: str = "chaos", with_superpixels: bool = True) -> Path:
    """A tiny prepared dataset (image_, label_, superpix_ files) in ``root``; returns the derived dir."""
    derived = root / "derived"
    rng = np.random.RandomState(0)
    for i, (pid, organs) in enumerate(ORGANS.items()):
        img = (rng.rand(Z, H, W) * 100 + 20 * i).astype(np.float32)
        lab = np.zeros((Z, H, W), np.int16)
        for c, zs in organs.items():
            for z in zs:
                lab[z, 8 + 8 * c : 16 + 8 * c, 20:40] = c
        write_volume(img, root / f"image_{pid}.nii.gz")
        write_volume(lab, root / f"label_{pid}.nii.gz")
        if with_superpixels:
            sp = _quadrants()
            sp[EMPTY_SP_SLICE] = 0
            write_volume(sp, derived / f"superpix_{pid}.nii.gz", dtype=np.int32)
    return derived


def _ssl(n_shots: int = 1, transform=None, seed: int = 0, n: int = 4, z: int = 3) -> SelfSupervisedEpisodeDataset:
    rng = np.random.RandomState(1)
    images = {"1": rng.randn(z, H, W).astype(np.float32)}
    sps = {"1": _quadrants(z, n)}
    pool = [("1", k) for k in range(z)]
    return SelfSupervisedEpisodeDataset(images, sps, pool, n_shots, n_episodes=8, transform=transform, seed=seed)


def _same(a: dict, b: dict) -> bool:
    return a["meta"] == b["meta"] and all(
        torch.equal(a[k], b[k]) for k in ("support_image", "support_label", "query_image", "query_label")
    )


# (setting, label_set, exclude_classes, removed (pid, z) besides the R = 0 slices)
TESTS_POOL = [
    (1, 0, None, set()),
    (2, 0, None, {("1", 1), ("1", 2), ("2", 4)}),  # kidneys RK 2 / LK 3
    (2, 1, None, {("1", 3), ("2", 0), ("2", 2), ("10", 1)}),  # liver 1 / spleen 4
    (1, 0, [4], {("2", 2), ("10", 1)}),  # explicit override
]
TESTS_SHOTS = [(1,), (3,)]


class TestSlicePool(unittest.TestCase):
    @parameterized.expand(TESTS_POOL)
    def test_pool_exact(self, setting, label_set, exclude, removed):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            derived = _write_prepared(root)
            ds = PreparedVolumeDataset(root, "chaos", derived_dir=derived)
            pids = ["10", "2", "1"]
            pool = build_slice_pool(ds, pids, setting=setting, label_set=label_set, exclude_classes=exclude)
            expected = [(p, z) for p in ("1", "2", "10") for z in range(Z) if z != EMPTY_SP_SLICE]
            expected = [s for s in expected if s not in removed]
            self.assertEqual(pool, expected)  # exact, integer-sorted pids, z ascending
            # the same with the superpixels passed in memory
            sps = {p: ds.load_superpixels(p).array for p in pids}
            self.assertEqual(build_slice_pool(ds, pids, sps, setting, label_set, exclude), expected)

    def test_pool_errors(self):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            derived = _write_prepared(root)
            ds = PreparedVolumeDataset(root, "chaos", derived_dir=derived)
            with self.assertRaises(ConfigError):
                build_slice_pool(ds, ["1"], setting=3)
            with self.assertRaises(ConfigError):
                build_slice_pool(ds, ["1"], setting=2, label_set=5)
            with self.assertRaisesRegex(DataError, "not in the dataset"):
                build_slice_pool(ds, ["1", "99"])
            with self.assertRaisesRegex(DataError, "superpixel"):
                build_slice_pool(PreparedVolumeDataset(root, "chaos"), ["1"])  # no maps in root
            # Setting 2 with a class-slice index that lacks a training scan: an error, not a silent pool that keeps
            # that scan's test-class slices
            cm = PreparedVolumeDataset(root, "chaos").compute_classmap()
            for per_scan in cm.values():
                del per_scan["2"]
            (root / "classmap_1.json").write_text(json.dumps(cm))
            stale = PreparedVolumeDataset(root, "chaos", derived_dir=derived)
            self.assertEqual(len(build_slice_pool(stale, ["1", "10"], setting=2, label_set=0)), 2 * (Z - 1) - 2)
            with self.assertRaisesRegex(DataError, r"classmap_1\.json.*scan 2 is missing"):
                build_slice_pool(stale, ["1", "2"], setting=2, label_set=0)
            (root / "classmap_1.json").unlink()
            cmr = PreparedVolumeDataset(root, "cmr", derived_dir=derived)
            with self.assertRaisesRegex(ConfigError, "Setting 2"):
                build_slice_pool(cmr, ["1"], setting=2)
            with self.assertRaisesRegex(ConfigError, "Setting 2"):
                SelfSupervisedEpisodeDataset.from_dataset(cmr, ["1"], setting=2)


class TestDegenerateMask(unittest.TestCase):
    def test_feature_grid_check(self):
        m = np.zeros((64, 64), np.uint8)
        self.assertTrue(is_degenerate_mask(m))
        m[0, 0] = 1  # between the bilinear sample points (rows/cols 8i+3, 8i+4)
        self.assertTrue(is_degenerate_mask(m))
        m[3, 3] = 1  # on a sample point
        self.assertFalse(is_degenerate_mask(m))
        self.assertFalse(is_degenerate_mask(torch.ones(10, 10)))

    def test_same_rule_as_the_head(self):
        # the episode check must reject exactly the masks that the ALP head sees as empty on the feature grid
        rng = np.random.RandomState(0)
        for _ in range(40):
            m = np.zeros((64, 64), np.float32)
            y, x, h, w = rng.randint(0, 60), rng.randint(0, 60), rng.randint(1, 5), rng.randint(1, 5)
            m[y : y + h, x : x + w] = 1
            seen = downsample_mask(torch.from_numpy(m)[None, None], (8, 8))
            self.assertEqual(is_degenerate_mask(m), not bool(seen.sum() > 0))


class TestSelfSupervisedEpisodes(unittest.TestCase):
    def test_inclusive_upper_bound(self):
        ds = _ssl(n=2)
        ids = {ds[0]["meta"]["superpixel"] for _ in range(40)}
        self.assertEqual(ids, {1, 2})

    def test_pseudo_label_is_the_superpixel(self):
        ds = _ssl(n=4)
        for _ in range(5):
            item = ds[0]
            meta = item["meta"]
            expected = ds.superpixels[meta["pid"]][meta["z"]] == meta["superpixel"]
            np.testing.assert_array_equal(item["query_label"].numpy(), expected.astype(np.int64))
            np.testing.assert_array_equal(item["support_label"][0, 0].numpy(), expected.astype(np.float32))
            img = ds.images[meta["pid"]][meta["z"]]
            for c in range(3):
                np.testing.assert_array_equal(item["query_image"][c].numpy(), img)
            self.assertEqual(set(meta), {"pid", "z", "superpixel"})
            self.assertIsInstance(meta["pid"], str)
            self.assertIsInstance(meta["z"], int)

    def test_redraw_then_clear_error(self):
        rng = np.random.RandomState(0)
        sp = np.zeros((2, H, W), np.int32)
        sp[:, 0, 0] = 1  # the only superpixel: one pixel that vanishes at the 8x8 feature grid
        ds = SelfSupervisedEpisodeDataset(
            {"7": rng.randn(2, H, W).astype(np.float32)}, {"7": sp}, [("7", 0), ("7", 1)], seed=0
        )
        with self.assertRaisesRegex(DataError, "100 tries"):
            ds[0]
        self.assertEqual(ds.n_redraws, 100)

    def test_degenerate_and_gap_ids_are_redrawn(self):
        rng = np.random.RandomState(0)
        sp = np.zeros((1, H, W), np.int32)
        sp[0, :, :32] = 1
        sp[0, 0, 63] = 3  # id 2 missing (gap), id 3 is a one-pixel superpixel
        ds = SelfSupervisedEpisodeDataset({"1": rng.randn(1, H, W).astype(np.float32)}, {"1": sp}, [("1", 0)], seed=0)
        ids = {ds[0]["meta"]["superpixel"] for _ in range(20)}
        self.assertEqual(ids, {1})
        self.assertGreater(ds.n_redraws, 0)

    @parameterized.expand(TESTS_SHOTS)
    def test_k_shot_shapes_and_augmented_masks(self, k):
        ds = _ssl(n_shots=k, transform=RandFewShotAugmentd(keys=("image", "label")))
        item = ds[0]
        self.assertEqual(tuple(item["support_image"].shape), (k, 3, H, W))
        self.assertEqual(tuple(item["support_label"].shape), (k, 1, H, W))
        self.assertEqual(tuple(item["query_image"].shape), (3, H, W))
        self.assertEqual(tuple(item["query_label"].shape), (H, W))
        self.assertEqual(item["support_image"].dtype, torch.float32)
        self.assertEqual(item["support_label"].dtype, torch.float32)
        self.assertEqual(item["query_label"].dtype, torch.int64)
        self.assertTrue(set(item["query_label"].unique().tolist()) <= {0, 1})
        self.assertTrue(set(item["support_label"].unique().tolist()) <= {0.0, 1.0})
        for s in range(k):
            self.assertFalse(is_degenerate_mask(item["support_label"][s, 0]))
        self.assertFalse(is_degenerate_mask(item["query_label"]))
        if k > 1:  # independent augmentations of the same slice
            self.assertFalse(torch.equal(item["support_image"][0], item["support_image"][1]))

    def test_array_transform_accepted(self):
        item = _ssl(transform=RandFewShotAugment())[0]
        self.assertEqual(tuple(item["support_image"].shape), (1, 3, H, W))

    def test_reproducible_by_seed(self):
        a = _ssl(n_shots=2, transform=RandFewShotAugmentd(), seed=7)
        b = _ssl(n_shots=2, transform=RandFewShotAugmentd(), seed=99)
        b.set_random_state(7)
        items_a = [a[i] for i in range(3)]
        items_b = [b[i] for i in range(3)]
        self.assertTrue(all(_same(x, y) for x, y in zip(items_a, items_b)))
        c = _ssl(n_shots=2, transform=RandFewShotAugmentd(), seed=8)
        self.assertFalse(all(_same(x, c[i]) for i, x in enumerate(items_a)))

    def test_dataloader_reproducible(self):
        def run(seed):
            torch.manual_seed(seed)
            ds = _ssl(transform=RandFewShotAugmentd(), seed=0)
            loader = DataLoader(ds, batch_size=1, num_workers=0)
            return list(loader)

        r1, r2, r3 = run(3), run(3), run(4)
        self.assertEqual(len(r1), 8)
        batch = r1[0]
        self.assertEqual(tuple(batch["support_image"].shape), (1, 1, 3, H, W))
        self.assertEqual(tuple(batch["query_image"].shape), (1, 3, H, W))
        self.assertEqual(tuple(batch["query_label"].shape), (1, H, W))
        for x, y in zip(r1, r2):
            self.assertTrue(torch.equal(x["query_image"], y["query_image"]))
            self.assertTrue(torch.equal(x["support_label"], y["support_label"]))
        self.assertFalse(all(torch.equal(x["query_image"], y["query_image"]) for x, y in zip(r1, r3)))

    def test_bad_construction(self):
        img = {"1": np.zeros((2, H, W), np.float32)}
        sp = {"1": _quadrants(2)}
        with self.assertRaisesRegex(DataError, "empty"):
            SelfSupervisedEpisodeDataset(img, sp, [])
        with self.assertRaisesRegex(DataError, "missing"):
            SelfSupervisedEpisodeDataset(img, sp, [("2", 0)])
        sp0 = {"1": np.zeros((2, H, W), np.int32)}
        with self.assertRaisesRegex(DataError, "R = 0"):
            SelfSupervisedEpisodeDataset(img, sp0, [("1", 0)])
        with self.assertRaises(ConfigError):
            SelfSupervisedEpisodeDataset(img, sp, [("1", 0)], n_shots=0)


class TestFromDataset(unittest.TestCase):
    def test_volume_zscore_setting2(self):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            ds = PreparedVolumeDataset(root, "chaos", derived_dir=_write_prepared(root))
            ep = SelfSupervisedEpisodeDataset.from_dataset(
                ds, ["1", "2"], setting=2, label_set=0, n_shots=2, n_episodes=5, transform=RandFewShotAugmentd()
            )
            self.assertIsNone(ep.norm_mean)
            self.assertIsNone(ep.norm_std)
            for pid in ("1", "2"):
                self.assertAlmostEqual(float(ep.images[pid].mean()), 0.0, places=4)
                self.assertAlmostEqual(float(ep.images[pid].std()), 1.0, places=4)
            self.assertNotIn(("1", 1), ep.pool)
            self.assertEqual(len(ep.pool), 2 * (Z - 1) - 3)
            item = ep[0]
            self.assertEqual(tuple(item["support_image"].shape), (2, 3, H, W))
            self.assertNotIn((item["meta"]["pid"], item["meta"]["z"]), {("1", 1), ("1", 2), ("2", 4)})

    def test_fold_zscore(self):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            ds = PreparedVolumeDataset(root, "synapse", derived_dir=_write_prepared(root))
            ep = SelfSupervisedEpisodeDataset.from_dataset(ds, ["1", "10"], setting=1, n_episodes=2)
            mean, std = fold_statistics([ds.load_image("1").array, ds.load_image("10").array])
            self.assertAlmostEqual(ep.norm_mean, mean, places=4)
            self.assertAlmostEqual(ep.norm_std, std, places=4)
            raw = ds.load_image("10").array
            np.testing.assert_allclose(ep.images["10"], (raw - mean) / std, rtol=1e-5, atol=1e-5)
            self.assertNotAlmostEqual(float(ep.images["10"].mean()), 0.0, places=2)  # not per-volume


if __name__ == "__main__":
    unittest.main()
