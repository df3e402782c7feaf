# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the synthetic phantoms (labelless.data.phantoms)."""

from __future__ import annotations

import json
import os
import time
import unittest

import numpy as np
import pytest
from parameterized import parameterized

from labelless.data import phantoms
from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.phantoms import default_dataset_dir, make_phantom, phantom_affine, write_phantom_dataset
from labelless.errors import ConfigError
from labelless.io.readers import read_volume
from labelless.paths import cache_root

SMALL = (64, 64, 8)

# kind, modality, expected raw label values, spacing
TESTS_KINDS = [
    ("abdomen", "mr", {0, 1, 2, 3, 4}, (1.25, 1.25, 7.7)),
    ("abdomen", "ct", {0, 1, 2, 3, 4}, (1.25, 1.25, 7.7)),
    ("cardiac", "mr", {0, 200, 500, 600}, (1.25, 1.25, 7.99)),
]

# kind, modality, raw label values from brightest to darkest (mean intensity), seeds
TESTS_RANKING = [
    ("abdomen", "mr", [(2, 3), (4,), (1,), (0,)]),
    ("abdomen", "ct", [(2, 3), (4,), (1,), (0,)]),
    ("cardiac", "mr", [(500, 600), (0,), (200,)]),
]

TESTS_BAD = [
    ({"kind": "brain"},),
    ({"kind": "cardiac", "modality": "ct"},),
    ({"kind": "abdomen", "modality": "pet"},),
    ({"kind": "abdomen", "shape": (8, 8, 4)},),
    ({"kind": "abdomen", "shape": (64, 64)},),
]


class TestMakePhantom(unittest.TestCase):
    @parameterized.expand(TESTS_KINDS)
    def test_layout_and_determinism(self, kind, modality, values, _spacing):
        im1, lab1 = make_phantom(kind, seed=5, shape=(64, 48, 7), modality=modality)
        im2, lab2 = make_phantom(kind, seed=5, shape=(64, 48, 7), modality=modality)
        im3, _ = make_phantom(kind, seed=6, shape=(64, 48, 7), modality=modality)
        self.assertEqual(im1.shape, (7, 64, 48))  # (Z, H, W) from shape (H, W, Z)
        self.assertEqual(lab1.shape, (7, 64, 48))
        self.assertEqual(im1.dtype, np.float32)
        self.assertTrue(np.issubdtype(lab1.dtype, np.integer))
        np.testing.assert_array_equal(im1, im2)
        np.testing.assert_array_equal(lab1, lab2)
        self.assertFalse(np.array_equal(im1, im3))
        self.assertEqual(set(np.unique(lab1).tolist()), values)
        self.assertTrue(np.all(np.isfinite(im1)))

    @parameterized.expand(TESTS_KINDS)
    def test_full_size_time_budget(self, kind, modality, values, _spacing):
        t0 = time.perf_counter()
        im, lab = make_phantom(kind, seed=1, shape=(256, 256, 32), modality=modality)
        self.assertLess(time.perf_counter() - t0, 3.0)  # target < 1 s; generous on a shared CPU
        self.assertEqual(im.shape, (32, 256, 256))
        self.assertEqual(set(np.unique(lab).tolist()), values)

    def test_intensity_ranges(self):
        mr, lab = make_phantom("abdomen", seed=2, shape=(128, 128, 16), modality="mr")
        self.assertEqual(float(mr.min()), 0.0)
        self.assertLess(float(mr.max()), 1500.0)
        self.assertTrue(np.array_equal(mr, np.rint(mr)))  # integer valued like the CHAOS DICOM source
        # CHAOS body threshold 50: air is 0, every organ voxel is above it.
        self.assertGreater(float((mr == 0).mean()), 0.1)
        self.assertGreater(float(mr[lab > 0].min()), 50.0)
        ct, _ = make_phantom("abdomen", seed=2, shape=(128, 128, 16), modality="ct")
        self.assertGreaterEqual(float(ct.min()), 0.0)
        self.assertLessEqual(float(ct.max()), 255.0)
        self.assertGreater(float((ct == 0).mean()), 0.1)  # air below the HU window
        # Same anatomy whatever the modality.
        _, lab_ct = make_phantom("abdomen", seed=2, shape=(128, 128, 16), modality="ct")
        np.testing.assert_array_equal(lab, lab_ct)

    @parameterized.expand(TESTS_RANKING)
    def test_structures_alike_across_cases(self, kind, modality, ranking):
        """Same intensity ranking in every case, and organs distinct from the body background."""
        for seed in range(3):
            im, lab = make_phantom(kind, seed=seed, shape=(128, 128, 16), modality=modality)
            body = im > 0
            means = []
            for group in ranking:
                sel = np.isin(lab, group) & body
                self.assertGreater(int(sel.sum()), 20, f"{kind} seed {seed}: structure {group} too small")
                means.append(float(im[sel].mean()))
            self.assertEqual(means, sorted(means, reverse=True), f"{kind}/{modality} seed {seed}: {means}")
            if kind == "abdomen":
                bg = float(im[(lab == 0) & body].mean())
                for organ in (1, 2, 3, 4):
                    vals = im[lab == organ]
                    self.assertGreater(abs(float(vals.mean()) - bg), 2.0 * float(vals.std()))

    def test_anatomical_sides(self):
        """CHAOS orientation: liver on the low-column side, spleen high, kidneys posterior (low rows) of the liver."""
        _, lab = make_phantom("abdomen", seed=3, shape=(128, 128, 16))
        cols = {c: np.nonzero(lab == c)[2].mean() for c in (1, 2, 3, 4)}
        rows = {c: np.nonzero(lab == c)[1].mean() for c in (1, 2, 3, 4)}
        self.assertLess(cols[1], 64)
        self.assertGreater(cols[4], 64)
        self.assertLess(cols[2], 64)
        self.assertGreater(cols[3], 64)
        self.assertLess(rows[2], rows[1])

    def test_cardiac_geometry(self):
        _, lab = make_phantom("cardiac", seed=0, shape=(128, 128, 12))
        z = 3
        bp = lab[z] == 500
        myo = lab[z] == 200
        # The myocardium surrounds the blood pool: dilating the pool by a few pixels lands in the ring.
        from scipy import ndimage

        ring = ndimage.binary_dilation(bp, iterations=2) & ~bp
        self.assertGreater(float(myo[ring].mean()), 0.8)
        self.assertTrue(ndimage.binary_fill_holes(myo)[bp].all())  # the ring closes around the pool
        # RV present at the base, shrinking towards the apex.
        rv_area = (lab == 600).reshape(lab.shape[0], -1).sum(1)
        self.assertGreater(rv_area[0], rv_area[-1])

    @parameterized.expand(TESTS_BAD)
    def test_bad_arguments(self, kwargs):
        with self.assertRaises(ConfigError):
            make_phantom(**kwargs)


class TestPhantomDataset(unittest.TestCase):
    @parameterized.expand(TESTS_KINDS)
    def test_write_dataset(self, kind, modality, values, spacing):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out = write_phantom_dataset(os.path.join(tmp, "d"), kind=kind, n_volumes=3, seed=4, shape=SMALL,
                                        modality=modality)  # fmt: skip
            names = sorted(os.listdir(out))
            self.assertEqual(
                names,
                [".labelless_phantoms", "classmap_1.json"]
                + [f"{t}_{i}.nii.gz" for t in ("image", "label") for i in (1, 2, 3)],
            )
            preset = "phantom_abdomen" if kind == "abdomen" else "phantom_cardiac"
            ds = PreparedVolumeDataset(out, preset=preset)
            self.assertEqual(ds.pids, ["1", "2", "3"])
            img = ds.load_image(2)
            self.assertEqual(img.shape, (8, 64, 64))
            np.testing.assert_allclose(img.spacing, spacing, atol=1e-4)
            np.testing.assert_allclose(img.affine, phantom_affine(kind, SMALL), atol=1e-4)
            # Same volume as in memory with the (seed, pid) seed; raw label values on disk.
            im_mem, lab_mem = make_phantom(kind, (4, 2), SMALL, modality)
            np.testing.assert_array_equal(img.array, im_mem)
            raw = read_volume(ds.label_path(2), is_label=True).array
            np.testing.assert_array_equal(raw, lab_mem)
            self.assertEqual(set(np.unique(raw).tolist()), values)
            # Mapped labels (cardiac 200/500/600 -> 1/2/3) and a class-slice index consistent with them.
            self.assertEqual(set(np.unique(ds.load_label(2).array).tolist()), set(range(len(values))))
            written = json.loads((out / "classmap_1.json").read_text())
            self.assertEqual(written, ds.compute_classmap(1))
            self.assertEqual(set(written), {ds.label_map.name(c) for c in ds.label_map.class_ids})

    def test_default_dataset_dir_is_cached(self):
        import tempfile

        mp = pytest.MonkeyPatch()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                mp.setenv("LABELLESS_CACHE", tmp)
                mp.setitem(phantoms._DEFAULT_SHAPE, "abdomen", (32, 32, 4))
                d = default_dataset_dir("abdomen")
                self.assertEqual(d, cache_root() / "phantoms" / f"abdomen-v{phantoms.PHANTOM_VERSION}")
                self.assertTrue(str(d).startswith(tmp))
                self.assertEqual(len(PreparedVolumeDataset(d, preset="phantom_abdomen")), 8)
                stamp = (d / "image_1.nii.gz").stat().st_mtime_ns
                self.assertEqual(default_dataset_dir("abdomen"), d)
                self.assertEqual((d / "image_1.nii.gz").stat().st_mtime_ns, stamp)  # reused, not rewritten
                # No temporary folders left behind.
                self.assertEqual(os.listdir(d.parent), [d.name])
            finally:
                mp.undo()


if __name__ == "__main__":
    unittest.main()
