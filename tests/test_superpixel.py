# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of superpixels and body masks (labelless.transforms.superpixel) and their precomputation."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from parameterized import parameterized
from skimage.segmentation import felzenszwalb

from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.phantoms import make_phantom, write_phantom_dataset
from labelless.errors import ConfigError, DataError
from labelless.fewshot.volume.superpixels import (
    BODYMASK_NAME,
    RAW_NAME,
    SUPERPIX_NAME,
    default_derived_dir,
    precompute_superpixels,
)
from labelless.transforms.superpixel import (
    BodyMask,
    BodyMaskd,
    BodyMaskDict,
    Superpixels,
    SuperpixelsD,
    Superpixelsd,
    body_mask_slice,
    body_threshold,
    compute_superpixels,
    mask_superpixels,
    preset_body_threshold,
    relabel_within_body,
)

# superpixel slice, body slice, expected labels, expected R
TESTS_RELABEL = [
    (  # Felzenszwalb region 0 inside the body is kept (the reference drops it)
        [[0, 0, 1], [2, 2, 1]],
        [[1, 1, 1], [1, 1, 1]],
        [[1, 1, 2], [3, 3, 2]],
        3,
    ),
    (  # gaps in the input ids are closed; outside the body -> 0
        [[5, 5, 9], [7, 7, 9], [0, 0, 0]],
        [[1, 1, 1], [1, 1, 1], [0, 0, 0]],
        [[1, 1, 3], [2, 2, 3], [0, 0, 0]],
        3,
    ),
    (  # a superpixel partly inside keeps its inside part; one entirely outside disappears
        [[0, 1, 1], [0, 2, 2], [3, 3, 3]],
        [[0, 1, 1], [0, 1, 0], [0, 0, 0]],
        [[0, 1, 1], [0, 2, 0], [0, 0, 0]],
        2,
    ),
    (  # empty body
        [[0, 1], [2, 3]],
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
        0,
    ),
]


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


# slice (as '#' above threshold), expected body mask
TESTS_BODY = [
    (  # largest component kept
        ["##....", "##....", "......", "...###", "...###", "...###"],
        ["......", "......", "......", "...###", "...###", "...###"],
    ),
    (  # diagonal neighbours are connected (8-connectivity)
        ["##....", "##....", "..#...", "...##.", "...##.", "......"],
        ["##....", "##....", "..#...", "...##.", "...##.", "......"],
    ),
    (  # holes are filled
        ["......", ".####.", ".#..#.", ".#..#.", ".####.", "......"],
        ["......", ".####.", ".####.", ".####.", ".####.", "......"],
    ),
    (  # nothing above the threshold: the raw (empty) map
        ["......", "......", "......"],
        ["......", "......", "......"],
    ),
]


class TestRelabel(unittest.TestCase):
    @parameterized.expand(TESTS_RELABEL)
    def test_relabel(self, sp, body, expected, r):
        labels, n = relabel_within_body(np.array(sp), np.array(body))
        np.testing.assert_array_equal(labels, np.array(expected))
        self.assertEqual(n, r)
        self.assertEqual(labels.dtype, np.int32)
        self.assertEqual(set(np.unique(labels[labels > 0]).tolist()), set(range(1, r + 1)))

    def test_relabel_on_felzenszwalb(self):
        """Real Felzenszwalb maps: ids 1..R without gap, bijective with the original regions inside the body."""
        im, _ = make_phantom("abdomen", seed=0, shape=(96, 96, 4))
        raw = felzenszwalb(im[2].astype(np.float64), scale=1, sigma=1, min_size=50)
        self.assertIn(0, raw)
        body = body_mask_slice(im[2], 50.0001)
        labels, r = relabel_within_body(raw, body)
        inside = np.unique(raw[body])
        self.assertEqual(r, inside.size)
        self.assertIn(0, inside)  # region 0 is inside the body here and must survive
        self.assertEqual(set(np.unique(labels[body]).tolist()), set(range(1, r + 1)))
        self.assertTrue(np.all(labels[~body] == 0))
        pairs = set(zip(raw[body].tolist(), labels[body].tolist()))
        self.assertEqual(len(pairs), r)  # one new id per old id

    def test_bad_input(self):
        with self.assertRaises(DataError):
            relabel_within_body(np.zeros((3, 3), int), np.zeros((3, 4)))
        with self.assertRaises(DataError):
            relabel_within_body(np.full((2, 2), 0.5), np.ones((2, 2)))


class TestBodyMask(unittest.TestCase):
    @parameterized.expand(TESTS_BODY)
    def test_rules(self, rows, expected):
        img = np.where(_mask(rows), 100.0, 10.0)
        np.testing.assert_array_equal(body_mask_slice(img, 50.0001), _mask(expected))

    def test_threshold_is_strict(self):
        img = np.full((4, 4), 50.0)
        self.assertFalse(body_mask_slice(img, 50.0).any())
        self.assertTrue(body_mask_slice(img, 49.9).all())

    def test_thresholds(self):
        vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
        self.assertAlmostEqual(preset_body_threshold(vol, "chaos"), 50.0001, places=6)
        self.assertAlmostEqual(preset_body_threshold(vol, "synapse"), 1e-4, places=8)
        self.assertAlmostEqual(preset_body_threshold(vol, "cmr"), 1e-4 + 0.05 * np.percentile(vol, 99.5), places=4)
        self.assertAlmostEqual(body_threshold(vol, None, 0.1), 1e-4 + 0.1 * np.percentile(vol, 99.5), places=4)
        self.assertEqual(body_threshold(vol, 3.0), 3.0)

    def test_transform_per_slice_and_types(self):
        im, _ = make_phantom("abdomen", seed=1, shape=(64, 64, 5))
        out = BodyMask(threshold=50.0001)(im)
        self.assertEqual(out.shape, im.shape)
        self.assertEqual(out.dtype, np.uint8)
        for z in range(im.shape[0]):
            np.testing.assert_array_equal(out[z], body_mask_slice(im[z], 50.0001))
        t = BodyMask.from_preset("chaos")(torch.as_tensor(im))
        self.assertIsInstance(t, torch.Tensor)
        np.testing.assert_array_equal(t.numpy(), out)
        np.testing.assert_array_equal(BodyMask(50.0001)(im[2]), out[2])  # single (H, W) slice
        d = BodyMaskd("image", threshold=50.0001, output_keys="body")({"image": im})
        np.testing.assert_array_equal(d["body"], out)
        self.assertIs(d["image"], im)
        np.testing.assert_array_equal(BodyMaskDict("image", threshold=50.0001)({"image": im})["image"], out)

    def test_relative_threshold_on_cardiac(self):
        im, lab = make_phantom("cardiac", seed=0, shape=(64, 64, 6))
        body = BodyMask.from_preset("phantom_cardiac")(im).astype(bool)
        self.assertTrue(body[lab > 0].all())  # heart and lungs inside the filled thorax
        self.assertFalse(body[:, 0, 0].any())  # corners are air
        self.assertTrue(body[:, 32, 32].all())

    @parameterized.expand([(np.zeros((1, 3, 8, 8)),), (np.zeros(8),), (np.full((2, 4, 4), np.nan),)])
    def test_bad_arrays(self, arr):
        with self.assertRaises(DataError):
            BodyMask(1.0)(arr)
        with self.assertRaises(DataError):
            Superpixels()(arr)


class TestSuperpixels(unittest.TestCase):
    def setUp(self):
        self.im, _ = make_phantom("abdomen", seed=2, shape=(64, 64, 4))

    def test_unmasked_equals_felzenszwalb(self):
        sp = Superpixels(min_size=40)(self.im)
        self.assertEqual(sp.dtype, np.int32)
        for z in range(self.im.shape[0]):
            ref = felzenszwalb(self.im[z].astype(np.float64), scale=1, sigma=1, min_size=40)
            np.testing.assert_array_equal(sp[z], ref)
        # default parameters are the protocol's (scale 1, sigma 1, min_size 400)
        ref = felzenszwalb(self.im[1].astype(np.float64), scale=1, sigma=1, min_size=400)
        np.testing.assert_array_equal(Superpixels()(self.im)[1], ref)

    def test_masked_dict_and_array_agree(self):
        body = BodyMask(50.0001)(self.im)
        sp = Superpixels(min_size=40)(self.im, body_mask=body)
        for z in range(self.im.shape[0]):
            ids = np.unique(sp[z][sp[z] > 0])
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
            self.assertTrue(np.all(sp[z][body[z] == 0] == 0))
            self.assertTrue(np.all(sp[z][body[z] == 1] > 0))
        chain = [
            BodyMaskd("image", threshold=50.0001, output_keys="body"),
            Superpixelsd("image", mask_keys="body", output_keys="sp", min_size=40),
        ]
        d = {"image": torch.as_tensor(self.im)}
        for t in chain:
            d = t(d)
        self.assertIsInstance(d["sp"], torch.Tensor)
        self.assertEqual(d["sp"].dtype, torch.int32)
        np.testing.assert_array_equal(d["sp"].numpy(), sp)
        np.testing.assert_array_equal(SuperpixelsD("image", min_size=40)({"image": self.im})["image"],
                                      Superpixels(min_size=40)(self.im))  # fmt: skip
        with self.assertRaises(DataError):
            Superpixelsd("image", mask_keys="missing")({"image": self.im})

    def test_single_slice(self):
        sp2d = Superpixels(min_size=40)(self.im[1])
        self.assertEqual(sp2d.shape, self.im.shape[1:])
        np.testing.assert_array_equal(sp2d, Superpixels(min_size=40)(self.im)[1])

    @parameterized.expand([("slic", {"n_segments": 20, "compactness": 20.0}), ("slic3d", {"n_segments": 40})])
    def test_slic_methods(self, method, kwargs):
        sp = Superpixels(method, **kwargs)(self.im)
        self.assertEqual(sp.shape, self.im.shape)
        n_per_slice = [np.unique(s).size for s in sp]
        self.assertTrue(all(n > 3 for n in n_per_slice), n_per_slice)
        body = BodyMask(50.0001)(self.im)
        masked, counts = mask_superpixels(sp, body)
        for z in range(sp.shape[0]):
            np.testing.assert_array_equal(np.unique(masked[z][masked[z] > 0]), np.arange(1, counts[z] + 1))
        if method == "slic3d":
            # supervoxels span several slices
            self.assertTrue(any(np.intersect1d(sp[z], sp[z + 1]).size > 0 for z in range(sp.shape[0] - 1)))
            whole = Superpixels(method, per_slice_ids=False, **kwargs)(self.im, body_mask=body)
            ids = np.unique(whole[whole > 0])
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))

    def test_bad_method(self):
        with self.assertRaises(ConfigError):
            Superpixels("watershed")
        with self.assertRaises(ConfigError):
            compute_superpixels(self.im, "watershed")


def _tree_state(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


class TestPrecompute(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = Path(cls._tmp.name)
        cls.data = write_phantom_dataset(cls.root / "data", "abdomen", n_volumes=3, seed=7, shape=(64, 64, 6))

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_round_trip_parallel_equals_serial(self):
        before = _tree_state(self.data)
        par = precompute_superpixels(self.data, self.root / "par", preset="phantom_abdomen", workers=2,
                                     min_size=40, progress=False, save_raw=True)  # fmt: skip
        ser = precompute_superpixels(self.data, self.root / "ser", preset="phantom_abdomen", workers=1,
                                     min_size=40, progress=False)  # fmt: skip
        self.assertEqual(_tree_state(self.data), before)  # dataset folder untouched
        ds = PreparedVolumeDataset(self.data, preset="phantom_abdomen", derived_dir=par)
        for pid in ds.pids:
            img = ds.load_image(pid)
            sp = ds.load_superpixels(pid)
            self.assertEqual(ds.superpixel_path(pid), par / SUPERPIX_NAME.format(pid=pid))
            self.assertTrue(sp.same_grid(img))
            f_sp = nib.load(str(par / SUPERPIX_NAME.format(pid=pid)))
            f_bm = nib.load(str(par / BODYMASK_NAME.format(pid=pid)))
            self.assertEqual(f_sp.get_data_dtype(), np.int32)
            self.assertEqual(f_bm.get_data_dtype(), np.uint8)
            np.testing.assert_allclose(f_sp.affine, img.affine, atol=1e-4)
            body = np.asarray(f_bm.dataobj).transpose(2, 1, 0)
            raw = np.asarray(nib.load(str(par / RAW_NAME.format(pid=pid))).dataobj).transpose(2, 1, 0)
            for z in range(img.shape[0]):
                ref = felzenszwalb(img.array[z].astype(np.float64), scale=1, sigma=1, min_size=40)
                np.testing.assert_array_equal(raw[z], ref)
                np.testing.assert_array_equal(body[z], body_mask_slice(img.array[z], 50.0001))
                np.testing.assert_array_equal(sp.array[z], relabel_within_body(ref, body[z])[0])
            ser_sp = PreparedVolumeDataset(self.data, "phantom_abdomen", derived_dir=ser).load_superpixels(pid)
            np.testing.assert_array_equal(ser_sp.array, sp.array)  # deterministic whatever the workers
        manifest = json.loads((par / "superpixels.json").read_text())
        self.assertEqual(manifest["params"], {"method": "felzenszwalb", "scale": 1.0, "sigma": 1.0, "min_size": 40})
        self.assertAlmostEqual(manifest["body_threshold"], 50.0001)

    def test_skip_existing_and_overwrite(self):
        out = self.root / "skip"
        precompute_superpixels(self.data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False)
        state = _tree_state(out)
        precompute_superpixels(self.data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False)
        self.assertEqual({k: v for k, v in _tree_state(out).items() if k != "superpixels.json"},
                         {k: v for k, v in state.items() if k != "superpixels.json"})  # fmt: skip
        os.remove(out / SUPERPIX_NAME.format(pid=2))
        precompute_superpixels(self.data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False)
        after = _tree_state(out)
        self.assertEqual(after[SUPERPIX_NAME.format(pid=1)], state[SUPERPIX_NAME.format(pid=1)])
        self.assertIn(SUPERPIX_NAME.format(pid=2), after)
        precompute_superpixels(self.data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False,
                               overwrite=True, pids=[1])  # fmt: skip
        self.assertNotEqual(_tree_state(out)[SUPERPIX_NAME.format(pid=1)][1], state[SUPERPIX_NAME.format(pid=1)][1])
        # Other parameters into the same folder: refused without overwrite.
        with self.assertRaises(ConfigError):
            precompute_superpixels(self.data, out, preset="phantom_abdomen", workers=1, min_size=80, progress=False)
        self.assertFalse(any(n.startswith(".") for n in os.listdir(out)))  # no temporary files left

    def test_maps_of_unknown_origin_are_never_reused(self):
        # an interrupted run still leaves its manifest: a rerun with other parameters cannot reuse its maps
        data = self.root / "broken"
        shutil.copytree(self.data, data)
        (data / "image_3.nii.gz").write_bytes(b"not a nifti")
        out = self.root / "interrupted"
        with self.assertRaisesRegex(DataError, "image_3"):
            precompute_superpixels(data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False)
        self.assertTrue((out / SUPERPIX_NAME.format(pid=1)).exists())
        self.assertEqual(json.loads((out / "superpixels.json").read_text())["params"]["min_size"], 40)
        with self.assertRaisesRegex(ConfigError, "other parameters"):
            precompute_superpixels(data, out, preset="phantom_abdomen", workers=1, min_size=80, progress=False)
        # maps of another data set (same pids, same parameters) are not taken for this one
        with self.assertRaisesRegex(ConfigError, "another data set"):
            precompute_superpixels(self.data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False)
        # maps without any manifest (unknown parameters) are refused too
        (out / "superpixels.json").unlink()
        with self.assertRaisesRegex(ConfigError, "no superpixels.json"):
            precompute_superpixels(data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False)
        (data / "image_3.nii.gz").unlink()
        precompute_superpixels(data, out, preset="phantom_abdomen", workers=1, min_size=40, progress=False,
                               overwrite=True)  # fmt: skip
        self.assertEqual(json.loads((out / "superpixels.json").read_text())["dataset_dir"], str(data.resolve()))

    def test_relative_body_threshold_and_slic3d(self):
        data = write_phantom_dataset(self.root / "heart", "cardiac", n_volumes=1, seed=1, shape=(64, 64, 5))
        out = precompute_superpixels(data, self.root / "heart_sp", preset="phantom_cardiac", method="slic3d",
                                     n_segments=60, workers=1, progress=False)  # fmt: skip
        ds = PreparedVolumeDataset(data, preset="phantom_cardiac", derived_dir=out)
        img = ds.load_image(1).array
        t = 1e-4 + 0.05 * np.percentile(img, 99.5)
        body = np.asarray(nib.load(str(out / BODYMASK_NAME.format(pid=1))).dataobj).transpose(2, 1, 0)
        sp = ds.load_superpixels(1).array
        for z in range(img.shape[0]):
            np.testing.assert_array_equal(body[z], body_mask_slice(img[z], t))
            ids = np.unique(sp[z][sp[z] > 0])
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
            self.assertGreater(ids.size, 1)
        self.assertEqual(json.loads((out / "superpixels.json").read_text())["body_threshold_rel"], 0.05)

    def test_refuses_dataset_folder_and_unknown_pid(self):
        with self.assertRaises(ConfigError):
            precompute_superpixels(self.data, self.data, preset="phantom_abdomen", progress=False)
        with self.assertRaises(DataError):
            precompute_superpixels(self.data, self.root / "x", preset="phantom_abdomen", pids=[99], progress=False)

    def test_default_out_dir_in_cache(self):
        mp = pytest.MonkeyPatch()
        try:
            mp.setenv("LABELLESS_CACHE", str(self.root / "cache"))
            out = precompute_superpixels(self.data, preset="phantom_abdomen", workers=1, pids=[1], progress=False)
            self.assertEqual(out.parent, self.root / "cache" / "derived")
            self.assertTrue(out.name.startswith("data-"))
            self.assertTrue((out / SUPERPIX_NAME.format(pid=1)).exists())
            self.assertEqual(out, default_derived_dir(self.data, "phantom_abdomen"))
            self.assertNotEqual(out, default_derived_dir(self.data, "phantom_abdomen", {"method": "slic"}))
        finally:
            mp.undo()


@pytest.mark.realdata
def test_chaos_superpixels_match_felzenszwalb(chaos_dir, tmp_path):
    """Stored CHAOS superpixels (before masking) equal skimage felzenszwalb(slice, 1, 1, 400) on every slice."""
    pids = ["15", "2"]
    out = precompute_superpixels(chaos_dir, tmp_path / "d", preset="chaos", workers=2, pids=pids, save_raw=True,
                                 progress=False)  # fmt: skip
    ds = PreparedVolumeDataset(chaos_dir, preset="chaos", derived_dir=out)
    for pid in pids:
        # The file's float64 data in the reference's slice orientation [z, row = y, col = x].
        data = np.asarray(nib.load(str(ds.image_path(pid))).dataobj, dtype=np.float64).transpose(2, 1, 0)
        raw = np.asarray(nib.load(str(out / RAW_NAME.format(pid=pid))).dataobj).transpose(2, 1, 0)
        body = np.asarray(nib.load(str(out / BODYMASK_NAME.format(pid=pid))).dataobj).transpose(2, 1, 0)
        sp = ds.load_superpixels(pid).array
        assert sp.shape == data.shape
        for z in range(data.shape[0]):
            ref = felzenszwalb(data[z], scale=1, sigma=1, min_size=400)
            np.testing.assert_array_equal(raw[z], ref, err_msg=f"scan {pid} slice {z}")
            np.testing.assert_array_equal(body[z], body_mask_slice(data[z], 50.0001), err_msg=f"scan {pid} z {z}")
            np.testing.assert_array_equal(sp[z], relabel_within_body(ref, body[z])[0], err_msg=f"scan {pid} z {z}")
        assert int(sp.max()) > 5


if __name__ == "__main__":
    unittest.main()
