# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the FSMS 2D data: class folders, target pools, synthetic data and the real-data export."""

from __future__ import annotations

import json
import os
import tempfile
import unittest
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from parameterized import parameterized
from PIL import Image

from conftest import shared_data_dir
from labelless.data.images import ImageFolderPool, binarize_mask, load_mask, load_rgb, mask_on_grid, split_pool
from labelless.errors import ConfigError, DataError
from labelless.fewshot.image import (
    SHAPE_FAMILIES,
    ClassFolderDataset,
    default_fsms_data,
    export_classes,
    make_shape_class,
    skin_pools,
    write_shape_classes,
    write_skin_phantoms,
)


def _save(path: Path, arr: np.ndarray, quality: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(arr))
    if quality is None:
        img.save(path)
    else:
        img.save(path, quality=quality)
    return path


def _image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int = 48, w: int = 64, fg: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = fg
    return m


def _layout_a(root: Path, name: str, ids: list[str], fg: int = 255) -> Path:
    for i, pid in enumerate(ids):
        _save(root / name / f"{pid}.jpg", _image(seed=i), quality=95)
        _save(root / name / f"{pid}.png", _mask(fg=fg))
    return root / name


def _layout_b(root: Path, name: str, ids: list[str], fg: int = 1) -> Path:
    for i, pid in enumerate(ids):
        _save(root / name / "images" / f"{pid}.png", _image(seed=10 + i))
        _save(root / name / "masks" / f"{pid}.png", _mask(fg=fg))
    return root / name


# stored mask, expected binary mask (None: DataError)
TESTS_MASK_RULE = [
    (np.array([[0, 1], [1, 0]], np.uint8), [[0, 1], [1, 0]]),  # 0/1
    (np.array([[0, 255], [255, 0]], np.uint8), [[0, 1], [1, 0]]),  # 0/255
    (np.array([[0, 127], [128, 255]], np.uint8), [[0, 0], [1, 1]]),  # interpolated 0/255: value / 255 > 0.5
    (np.array([[0.0, 0.4], [0.6, 1.0]], np.float32), [[0, 0], [1, 1]]),  # soft 0..1
    (np.array([[0, 1], [2, 0]], np.uint8), None),  # class ids: the 0/255 rule would give an empty mask
    (np.array([[0, -1], [1, 0]], np.int16), None),
]

# what to break, file expected in the error message
TESTS_BAD_PAIR = [("corrupt_image", "2.jpg"), ("missing_mask", "2.jpg"), ("size_mismatch", "2.png")]


class TestClassFolderDataset(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = Path(self._tmp.name) / "classes"

    def tearDown(self):
        self._tmp.cleanup()

    def test_layouts_a_and_b(self):
        _layout_a(self.root, "zebra", ["10", "2", "1"])
        _layout_b(self.root, "apple", ["b", "a", "c"], fg=1)
        (self.root / "zebra" / "notes.txt").write_text("ignored")
        ds = ClassFolderDataset(self.root, min_pairs=3, size=32, grid=8)
        self.assertEqual(ds.classes, ["apple", "zebra"])
        self.assertEqual(ds.layouts, {"apple": "B", "zebra": "A"})
        self.assertEqual(ds.ids["zebra"], ["1", "2", "10"])  # natural order
        self.assertEqual(ds.ids["apple"], ["a", "b", "c"])
        self.assertEqual(ds.num_pairs(0), 3)
        for cls in ds.classes:
            image, mask = ds.load_pair(cls, 1)
            self.assertEqual(tuple(image.shape), (3, 32, 32))
            self.assertEqual(tuple(mask.shape), (1, 32, 32))
            self.assertEqual((image.dtype, mask.dtype), (torch.float32, torch.float32))
            self.assertTrue(0.0 <= float(image.min()) and float(image.max()) <= 1.0)
            self.assertEqual(set(mask.unique().tolist()), {0.0, 1.0})
            self.assertAlmostEqual(float(mask.mean()), 0.25, delta=0.03)  # central half × half square
        # fresh copies: editing a returned tensor does not change the next load
        image, _ = ds.load_pair("apple", 0)
        image.zero_()
        self.assertGreater(float(ds.load_pair("apple", 0)[0].sum()), 0)

    def test_too_few_pairs(self):
        _layout_a(self.root, "big", ["1", "2", "3"])
        _layout_a(self.root, "small", ["1", "2"])
        with self.assertRaisesRegex(DataError, r"small.*2 valid image/mask pair\(s\), fewer than the 3"):
            ClassFolderDataset(self.root, min_pairs=3, size=32, grid=8)
        with self.assertWarnsRegex(UserWarning, "small"):
            ds = ClassFolderDataset(self.root, min_pairs=3, size=32, grid=8, drop_small_classes="true")
        self.assertEqual((ds.classes, ds.dropped), (["big"], {"small": 2}))
        self.assertEqual(ClassFolderDataset(self.root, min_pairs=2, size=32, grid=8).classes, ["big", "small"])

    def test_exclude_list(self):
        _layout_a(self.root, "keep", ["1", "2"])
        _layout_a(self.root, "skin", ["1", "2"])
        excl = Path(self._tmp.name) / "exclude.txt"
        excl.write_text("# target domain\nskin  # lesions\n\nnot_there\n")
        self.assertEqual(ClassFolderDataset(self.root, 2, exclude=excl, size=32, grid=8).classes, ["keep"])
        self.assertEqual(ClassFolderDataset(self.root, 2, exclude=["keep"], size=32, grid=8).classes, ["skin"])
        with self.assertRaisesRegex(DataError, "missing.txt"):
            ClassFolderDataset(self.root, 2, exclude=Path(self._tmp.name) / "missing.txt")

    def test_empty_masks_listed_and_skipped(self):
        _layout_a(self.root, "c", ["1", "2", "3", "4"])
        _save(self.root / "c" / "3.png", np.zeros((48, 64), np.uint8))  # empty
        tiny = np.zeros((48, 64), np.uint8)
        tiny[10, 10] = 255  # one pixel: empty once resized to the 8×8 grid
        _save(self.root / "c" / "4.png", tiny)
        ds = ClassFolderDataset(self.root, min_pairs=2, size=32, grid=8)
        self.assertEqual(ds.ids["c"], ["1", "2"])
        self.assertEqual(sorted(Path(f).name for f, _ in ds.skipped), ["3.png", "4.png"])
        self.assertTrue(all("empty" in why for _, why in ds.skipped))

    @parameterized.expand(TESTS_BAD_PAIR)
    def test_bad_pair_named(self, kind, bad_file):
        _layout_a(self.root, "c", ["1", "2", "3"])
        if kind == "corrupt_image":
            (self.root / "c" / "2.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
        elif kind == "missing_mask":
            (self.root / "c" / "2.png").unlink()
        else:
            _save(self.root / "c" / "2.png", _mask(40, 64))
        with self.assertRaisesRegex(DataError, rf"c[/\\]{bad_file}"):
            ClassFolderDataset(self.root, min_pairs=2, size=32, grid=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = ClassFolderDataset(self.root, min_pairs=2, size=32, grid=8, skip_bad_pairs=True)
        self.assertEqual(ds.ids["c"], ["1", "3"])
        self.assertTrue(any(bad_file in str(w.message) for w in caught))
        self.assertEqual([Path(f).name for f, _ in ds.skipped], [bad_file])

    def test_bad_config(self):
        _layout_a(self.root, "c", ["1", "2"])
        with self.assertRaises(ConfigError):
            ClassFolderDataset(self.root, min_pairs=0)
        with self.assertRaises(ConfigError):
            ClassFolderDataset(self.root, min_pairs=2, skip_bad_pairs="maybe")
        with self.assertRaisesRegex(DataError, "nowhere"):
            ClassFolderDataset(Path(self._tmp.name) / "nowhere", min_pairs=2)


class TestPixelRules(unittest.TestCase):
    @parameterized.expand([(i, *case) for i, case in enumerate(TESTS_MASK_RULE)])
    def test_mask_rule(self, _i, stored, expected):
        if expected is None:
            with self.assertRaisesRegex(DataError, "m.png"):
                binarize_mask(stored, "m.png")
        else:
            np.testing.assert_array_equal(binarize_mask(stored), np.asarray(expected, bool))

    def test_mask_files_and_resizing(self):
        with tempfile.TemporaryDirectory() as d:
            m = np.zeros((40, 40), np.uint8)
            m[:, :20] = 200  # > 127.5: foreground
            p = _save(Path(d) / "m.png", m)
            out = load_mask(p, 20)
            self.assertEqual(tuple(out.shape), (1, 20, 20))
            self.assertEqual(float(out[0, :, :10].min()), 1.0)
            self.assertEqual(float(out[0, :, 10:].max()), 0.0)

    def test_channel_order_grey_and_alpha(self):
        with tempfile.TemporaryDirectory() as d:
            red = np.zeros((16, 16, 3), np.uint8)
            red[..., 0] = 255
            t = load_rgb(_save(Path(d) / "red.png", red), 8)
            self.assertEqual(tuple(t.shape), (3, 8, 8))
            np.testing.assert_allclose(t[0].numpy(), 1.0)
            np.testing.assert_allclose(t[1:].numpy(), 0.0)
            grey = load_rgb(_save(Path(d) / "grey.png", np.full((16, 16), 128, np.uint8)), 16)
            np.testing.assert_allclose(grey.numpy(), 128 / 255, atol=1e-6)
            rgba = np.zeros((16, 16, 4), np.uint8)
            rgba[..., 2], rgba[..., 3] = 255, 40
            blue = load_rgb(_save(Path(d) / "rgba.png", rgba), None)
            self.assertEqual(tuple(blue.shape), (3, 16, 16))
            np.testing.assert_allclose(blue[2].numpy(), 1.0)
            # a JPEG class image keeps RGB order through ClassFolderDataset
            root = Path(d) / "classes"
            for pid in ("1", "2"):
                _save(root / "red" / f"{pid}.jpg", np.broadcast_to(np.array([255, 0, 0], np.uint8), (48, 64, 3)), 95)
                _save(root / "red" / f"{pid}.png", _mask())
            image, _ = ClassFolderDataset(root, 2, size=32, grid=8).load_pair("red", 0)
            self.assertGreater(float(image[0].min()), 0.9)
            self.assertLess(float(image[1:].max()), 0.1)

    def test_mask_on_grid(self):
        m = torch.zeros(2, 1, 224, 224)
        m[0, 0, 100:104, 100:104] = 1  # 4×4 at 224: lost at 56 with plain bilinear + 0.5
        m[1, 0, 50:150, 50:150] = 1
        g = mask_on_grid(m, 56)
        self.assertEqual(tuple(g.shape), (2, 1, 56, 56))
        # output pixel i samples input 4i + 1.5: inside [50, 149] for i = 13..36 (i = 12 gives 0.5, not > 0.5)
        self.assertEqual(float(g[1].sum()), 24.0**2)
        self.assertLessEqual(float(g[0].sum()), 1.0)


class TestSynthetic(unittest.TestCase):
    def test_shape_classes_deterministic_and_valid(self):
        with tempfile.TemporaryDirectory() as d:
            a = write_shape_classes(Path(d) / "a", n_classes=4, n_instances=3, size=224, seed=3)
            b = write_shape_classes(Path(d) / "b", n_classes=4, n_instances=3, size=224, seed=3)
            c = write_shape_classes(Path(d) / "c", n_classes=1, n_instances=1, size=224, seed=4)
            for f in ("shape_000/1.jpg", "shape_003/3.png", "shape_002/2.jpg"):
                self.assertEqual((a / f).read_bytes(), (b / f).read_bytes())
            self.assertNotEqual((a / "shape_000/1.jpg").read_bytes(), (c / "shape_000/1.jpg").read_bytes())
            ds = ClassFolderDataset(a, min_pairs=3, size=224, grid=56)
            self.assertEqual(len(ds), 4)
            self.assertEqual(ds.skipped, [])  # every mask non-empty at 56×56
            for cls in ds.classes:
                for i in range(3):
                    image, mask = ds.load_pair(cls, i)
                    self.assertTrue(bool(mask_on_grid(mask, 56).any()))
                    frac = float(mask.mean())
                    self.assertTrue(0.03 <= frac <= 0.52, frac)  # area U(0.05, 0.5), boundary wobble
                    border = torch.cat([mask[0, :2].flatten(), mask[0, -2:].flatten(), mask[0, :, :2].flatten()])
                    self.assertEqual(float(border.sum()), 0.0)  # object fully inside the image
                    raw = np.asarray(Image.open(ds.pair_paths(cls, i)[1]))
                    self.assertEqual(set(np.unique(raw).tolist()), {0, 255})
            manifest = json.loads((a / "manifest.json").read_text())
            self.assertEqual(len(manifest["files"]), 24)
            # a complete output is reused, not rewritten
            before = os.stat(a / "shape_000/1.jpg").st_mtime_ns
            write_shape_classes(a, n_classes=4, n_instances=3, size=224, seed=3)
            self.assertEqual(os.stat(a / "shape_000/1.jpg").st_mtime_ns, before)

    def test_class_definitions(self):
        defs = [make_shape_class((0, c)) for c in range(60)]
        self.assertEqual({d["shape"]["family"] for d in defs}, set(SHAPE_FAMILIES))
        for d in defs:
            self.assertGreaterEqual(np.linalg.norm(d["foreground"]["colour"] - d["background"]["colour"]), 0.25)
            self.assertLessEqual(len(d["distractors"]), 2)
            self.assertTrue(all(x["family"] != d["shape"]["family"] for x in d["distractors"]))
            self.assertTrue(0.3 <= d["shape"]["aspect"] <= 1.0)

    def test_skin_phantoms_pool(self):
        with tempfile.TemporaryDirectory() as d:
            root = write_skin_phantoms(Path(d) / "skin", n_images=4, size=96, seed=1)
            again = write_skin_phantoms(Path(d) / "skin2", n_images=4, size=96, seed=1)
            self.assertEqual(
                (root / "images/SKIN_0002.jpg").read_bytes(), (again / "images/SKIN_0002.jpg").read_bytes()
            )
            pool = ImageFolderPool(root / "images", size=64, masks=root / "masks", grid=16)
            self.assertEqual(pool.image_ids, [f"SKIN_{i:04d}" for i in range(4)])
            self.assertEqual(pool.support_ids, pool.image_ids)
            image, mask = pool.load("SKIN_0001")
            self.assertEqual((tuple(image.shape), tuple(mask.shape)), ((3, 64, 64), (1, 64, 64)))
            self.assertGreater(float(mask.mean()), 0.02)
            # the lesion is darker than the skin around it
            self.assertLess(float(image[:, mask[0] > 0].mean()), float(image[:, mask[0] == 0].mean()))

    def test_default_data(self):
        with tempfile.TemporaryDirectory() as d:
            out = default_fsms_data(d, n_classes=2, n_instances=2, n_skin=2, size=64)
            self.assertEqual(set(out), {"classes", "skin"})
            self.assertEqual(
                ClassFolderDataset(out["classes"], 2, size=64, grid=16).classes, ["shape_000", "shape_001"]
            )
            self.assertEqual(len(ImageFolderPool(out["skin"] / "images", masks=out["skin"] / "masks", size=64)), 2)
            self.assertEqual(default_fsms_data(d, n_classes=2, n_instances=2, n_skin=2, size=64), out)
            self.assertEqual([p.name for p in Path(d).iterdir() if p.name.startswith(".")], [])


class TestPools(unittest.TestCase):
    def test_split_pool(self):
        ids = [f"ISIC_{i:07d}" for i in (5, 1, 9, 3, 7, 2, 8, 4, 6, 10)]
        unl, test = split_pool(ids)
        self.assertEqual(unl, [f"ISIC_{i:07d}" for i in (1, 2, 3, 4)])
        self.assertEqual(test, [f"ISIC_{i:07d}" for i in range(5, 11)])
        self.assertEqual(split_pool(list(reversed(ids))), (unl, test))
        self.assertEqual(split_pool(["10", "9", "1"], 0.5), (["1"], ["9", "10"]))
        with self.assertRaises(ConfigError):
            split_pool(ids, 1.5)
        with self.assertRaisesRegex(DataError, "duplicate"):
            split_pool(["a", "a"])

    def test_isic_like_folder(self):
        with tempfile.TemporaryDirectory() as d:
            img_dir, msk_dir = Path(d) / "images", Path(d) / "labels"
            for i in (3, 1, 2):
                _save(img_dir / f"ISIC_{i}.png", _image(32, 32, i))
                interp = np.repeat((_mask(32, 32) * (0.6 if i == 2 else 1.0)).astype(np.uint8)[..., None], 3, -1)
                _save(msk_dir / f"ISIC_{i}_segmentation.png", interp if i != 3 else np.zeros((32, 32), np.uint8))
            (img_dir / "LICENSE.md").write_text("not an image")
            pool = ImageFolderPool(img_dir, size=32, masks=msk_dir, grid=8)
            self.assertEqual(pool.image_ids, ["ISIC_1", "ISIC_2", "ISIC_3"])
            self.assertEqual(pool.support_ids, ["ISIC_1", "ISIC_2"])  # ISIC_3 empty: query only
            self.assertEqual(float(pool.load_mask("ISIC_2").max()), 1.0)  # 153 > 127.5
            unl = pool.subset(["ISIC_3", "ISIC_1"], with_masks=False)
            self.assertEqual((unl.image_ids, unl.has_masks), (["ISIC_1", "ISIC_3"], False))
            self.assertIsNone(unl.load("ISIC_1")[1])
            (msk_dir / "ISIC_2_segmentation.png").unlink()
            with self.assertRaisesRegex(DataError, "ISIC_2.png"):
                ImageFolderPool(img_dir, size=32, masks=msk_dir)
            with self.assertWarns(UserWarning):
                self.assertEqual(len(ImageFolderPool(img_dir, 32, masks=msk_dir, skip_bad_pairs=True)), 2)


@pytest.mark.realdata
def test_real_skin_pools():
    root = shared_data_dir()
    shared_data_dir("isic2016")
    pools = skin_pools(root)
    assert {"isic2016_unlabeled", "isic2016_test", "ham10000_test"} <= set(pools)
    unl, test = pools["isic2016_unlabeled"], pools["isic2016_test"]
    assert len(unl) + len(test) == 127 and len(unl) == 50
    assert not unl.has_masks and test.has_masks
    assert max(unl.image_ids) < min(test.image_ids)  # sorted split: unlabelled ids first
    image, mask = test.load(test.support_ids[0])
    assert tuple(image.shape) == (3, 224, 224) and tuple(mask.shape) == (1, 224, 224)
    if "isic_samples_test" in pools:
        assert len(pools["isic_samples_test"]) == 8 and len(pools["isic_samples_val"]) == 8


@pytest.mark.realdata
def test_real_export(tmp_path):
    root = shared_data_dir()
    shared_data_dir("chaos_t2spir")
    shared_data_dir("hc18")
    summary = export_classes(root, tmp_path / "out", sources=("chaos", "hc18"), max_instances=2, seed=0)
    expected = ["chaos_liver", "chaos_right_kidney", "chaos_left_kidney", "chaos_spleen", "hc18_fetal_head"]
    assert summary == {name: 2 for name in expected}
    ds = ClassFolderDataset(tmp_path / "out", min_pairs=2)
    assert ds.classes == sorted(expected) and ds.skipped == []
    assert set(ds.layouts.values()) == {"A"}
    for cls in ds.classes:
        img_path, msk_path = ds.pair_paths(cls, 0)
        raw = Image.open(img_path)
        assert raw.mode == "RGB" and raw.size == (224, 224)
        arr = np.asarray(raw)
        assert arr.max() >= 250  # min–max scaled to [0, 255]
        image, mask = ds.load_pair(cls, 1)
        assert float(mask.mean()) >= 0.005
    manifest = json.loads((tmp_path / "out" / "export_manifest.json").read_text())
    assert manifest["classes"] == summary
    # seeded: the same choice again
    again = export_classes(root, tmp_path / "again", sources=("hc18",), max_instances=2, seed=0)
    assert again == {"hc18_fetal_head": 2}
    assert sorted(p.name for p in (tmp_path / "again" / "hc18_fetal_head").iterdir()) == sorted(
        p.name for p in (tmp_path / "out" / "hc18_fetal_head").iterdir()
    )
    with pytest.raises(DataError, match="brats2015"):
        export_classes(tmp_path / "out", tmp_path / "x", sources=("brats",))
    with pytest.raises(ConfigError):
        export_classes(root, tmp_path / "x", sources=("fss1000",))
