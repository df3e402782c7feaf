# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the SSL-ALPNet parity augmentation (fewshot_protocol §7) and its MONAI variant."""

from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from parameterized import parameterized

from labelless.errors import ConfigError, DataError
from labelless.transforms.augment import (
    RandFewShotAugment,
    RandFewShotAugmentD,
    RandFewShotAugmentd,
    RandFewShotAugmentDict,
    fewshot_affine_matrix,
    gamma_transform,
    monai_fewshot_augment,
    strong_fewshot_augment,
)

NEUTRAL = dict(
    rotate_range=0.0,
    translate_range=0.0,
    shear_range=0.0,
    scale_range=(1.0, 1.0),
    elastic_alpha=0.0,
    gamma_range=(1.0, 1.0),
)


def _square(size: int = 128, half: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(3)
    lab = np.zeros((size, size), np.uint8)
    c = size // 2
    lab[c - half : c + half, c - half : c + half] = 1
    img = (lab * 2.0 + 0.1 * rng.randn(size, size)).astype(np.float32)
    return img, lab


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.array(np.nonzero(mask)).mean(axis=1)


TESTS_SQUARE = [(seed,) for seed in (0, 1, 2, 3)]
TESTS_INPUT_TYPES = [(np.asarray,), (torch.as_tensor,)]


class TestRandFewShotAugment(unittest.TestCase):
    @parameterized.expand(TESTS_SQUARE)
    def test_square_stays_roughly_in_place(self, seed):
        img, lab = _square()
        aug = RandFewShotAugment()
        aug.set_random_state(seed)
        out_img, out_lab = aug(img[None], lab)
        self.assertEqual(out_img.shape, (1, 128, 128))
        self.assertEqual(out_lab.shape, (128, 128))
        self.assertEqual(out_lab.dtype, lab.dtype)
        self.assertTrue(set(np.unique(out_lab)) <= {0, 1})
        # shift bounded by translation 5 px + origin shear of the centre (64 * sin 5° ≈ 5.6 px), times zoom <= 1.2
        self.assertLess(np.abs(_centroid(out_lab) - _centroid(lab)).max(), 14.0)
        ratio = out_lab.sum() / lab.sum()
        self.assertTrue(0.7 < ratio < 1.6, ratio)
        # image and label moved together
        inside, outside = out_img[0][out_lab == 1].mean(), out_img[0][out_lab == 0].mean()
        self.assertGreater(inside - outside, 1.0)
        # something did change
        self.assertGreater(np.abs(out_img[0] - img).max(), 0.1)

    @parameterized.expand(TESTS_INPUT_TYPES)
    def test_neutral_ranges_give_identity(self, to_type):
        img, lab = _square(64, 10)
        aug = RandFewShotAugment(**NEUTRAL)
        aug.set_random_state(0)
        out_img, out_lab = aug(to_type(img[None]), to_type(lab))
        self.assertIsInstance(out_img, type(to_type(img)))
        np.testing.assert_allclose(np.asarray(out_img)[0], img, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(out_lab), lab)

    def test_translation_direction(self):
        # the output pixel at M·p takes the input value at p: a dot at (x, y) moves to (x + tx, y + ty)
        img = np.zeros((1, 40, 40), np.float32)
        img[0, 10, 12] = 1.0
        lab = (img[0] > 0).astype(np.uint8)
        aug = RandFewShotAugment(**{**NEUTRAL, "translate_range": ((3.0, 3.0), (-2.0, -2.0))})
        aug.set_random_state(0)
        out_img, out_lab = aug(img, lab)
        self.assertEqual(np.unravel_index(np.argmax(out_img[0]), (40, 40)), (8, 15))
        self.assertEqual(out_lab[8, 15], 1)
        self.assertEqual(out_lab.sum(), 1)

    def test_shear_about_origin(self):
        size, theta = 128, 5.0
        img = np.zeros((1, size, size), np.float32)
        img[0, :, 80:88] = 1.0
        aug = RandFewShotAugment(**{**NEUTRAL, "shear_range": (theta, theta)})
        aug.set_random_state(0)
        out = aug(img)[0]
        rows = np.arange(4, 120)
        cols = np.arange(size)
        cent = np.array([(out[r] * cols).sum() / out[r].sum() for r in rows])
        x0 = 83.5
        shift = cent - x0
        self.assertLess(abs(shift[0]), 1.0)  # the top rows hardly move
        self.assertLess(shift[-1], -8.0)  # lower rows move more (to the left for a positive angle)
        self.assertTrue(np.all(np.diff(shift) <= 1e-3))  # monotone in the row index
        # exact geometry: x' = x − sin θ·y, y' = cos θ·y  ->  x' = x − tan θ·y'
        np.testing.assert_allclose(shift, -math.tan(math.radians(theta)) * rows, atol=0.3)

    def test_affine_matrix_composition(self):
        m = fewshot_affine_matrix((100, 80), rotation=0.0, translation=(0.0, 0.0), shear=0.0, scale=1.1)
        np.testing.assert_allclose(m @ [40.0, 50.0, 1.0], [40.0, 50.0, 1.0])  # zoom about the centre (W/2, H/2)
        m = fewshot_affine_matrix((100, 80), rotation=90.0, translation=(0.0, 0.0), shear=0.0, scale=1.0)
        np.testing.assert_allclose(m @ [40.0, 50.0, 1.0], [40.0, 50.0, 1.0], atol=1e-9)  # rotation about the centre
        np.testing.assert_allclose(m @ [50.0, 50.0, 1.0], [40.0, 40.0, 1.0], atol=1e-9)  # OpenCV sign convention
        m = fewshot_affine_matrix((100, 80), rotation=0.0, translation=(0.0, 0.0), shear=30.0, scale=1.0)
        np.testing.assert_allclose(m @ [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], atol=1e-12)  # shear about the origin
        # M = Z · Sh · T · R
        args = ((64, 64), 3.0, (2.0, -1.0), 4.0, 1.05)
        z = fewshot_affine_matrix(args[0], 0.0, (0.0, 0.0), 0.0, args[4])
        sh = fewshot_affine_matrix(args[0], 0.0, (0.0, 0.0), args[3], 1.0)
        t = fewshot_affine_matrix(args[0], 0.0, args[2], 0.0, 1.0)
        r = fewshot_affine_matrix(args[0], args[1], (0.0, 0.0), 0.0, 1.0)
        np.testing.assert_allclose(fewshot_affine_matrix(*args), z @ sh @ t @ r)

    def test_gamma_formula(self):
        x = np.array([[-1.0, 0.0], [2.0, 3.0]], np.float32)
        m, r = -1.0, 4.0
        for g in (0.5, 1.0, 1.5):
            np.testing.assert_allclose(gamma_transform(x, g), r * ((x - m + 1e-5) / r) ** g + m, rtol=1e-6)
        const = np.full((3, 3), 2.5, np.float32)
        np.testing.assert_array_equal(gamma_transform(const, 0.7), const)
        # inside the transform, with all geometric steps neutral
        img, lab = _square(32, 6)
        aug = RandFewShotAugment(**{**NEUTRAL, "gamma_range": (0.7, 0.7)})
        aug.set_random_state(0)
        out_img, out_lab = aug(img[None], lab)
        m, r = img.min(), img.max() - img.min()
        np.testing.assert_allclose(out_img[0], r * ((img - m + 1e-5) / r) ** 0.7 + m, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out_lab, lab)  # gamma does not touch the label

    def test_draw_order_and_ranges(self):
        # prob, rotation, tx, ty, shear, zoom, dx noise, dy noise, gamma (reference order) from self.R only
        aug = RandFewShotAugment()
        aug.set_random_state(42)
        np.random.seed(0)
        aug.randomize((16, 20))
        rs = np.random.RandomState(42)
        rs.rand()
        self.assertEqual(aug.rotation, rs.uniform(-5, 5))
        self.assertEqual(aug.translation, (rs.uniform(-5, 5), rs.uniform(-5, 5)))
        self.assertEqual(aug.shear, rs.uniform(-5, 5))
        self.assertEqual(aug.scale, rs.uniform(0.9, 1.2))
        rs.rand(2, 16, 20)
        self.assertEqual(aug.gamma, rs.uniform(0.5, 1.5))
        self.assertEqual(aug.dx.shape, (16, 20))
        self.assertGreater(np.abs(aug.dx).max(), 0.0)
        self.assertLess(np.abs(aug.dy).max(), 10.0)

    def test_determinism_by_seed(self):
        img, lab = _square(64, 12)
        outs = []
        for seed in (5, 5, 6):
            aug = RandFewShotAugment()
            aug.set_random_state(seed)
            outs.append(aug(img[None], lab))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
        self.assertGreater(np.abs(outs[0][0] - outs[2][0]).max(), 1e-3)

    def test_dict_matches_array(self):
        img, lab = _square(64, 12)
        arr = RandFewShotAugment()
        arr.set_random_state(11)
        dct = RandFewShotAugmentd(keys=("image", "label"))
        dct.set_random_state(11)
        for _ in range(2):
            a_img, a_lab = arr(img[None], lab)
            d = dct({"image": img[None], "label": lab, "other": 1})
            np.testing.assert_array_equal(a_img, d["image"])
            np.testing.assert_array_equal(a_lab, d["label"])
            self.assertEqual(d["other"], 1)
        self.assertIs(RandFewShotAugmentD, RandFewShotAugmentd)
        self.assertIs(RandFewShotAugmentDict, RandFewShotAugmentd)

    def test_prob_and_missing_keys(self):
        img, lab = _square(32, 6)
        d = RandFewShotAugmentd(keys=("image", "label"), prob=0.0)
        d.set_random_state(0)
        out = d({"image": img[None], "label": lab})
        np.testing.assert_array_equal(out["image"], img[None])
        np.testing.assert_array_equal(out["label"], lab)
        a = RandFewShotAugment(prob=0.0)
        out_img, out_lab = a(img[None], lab)
        np.testing.assert_array_equal(out_img, img[None])
        with self.assertRaises(DataError):
            RandFewShotAugmentd(keys=("image", "label"))({"image": img[None]})
        out = RandFewShotAugmentd(keys=("image", "label"), allow_missing_keys=True)({"image": img[None]})
        self.assertEqual(out["image"].shape, (1, 32, 32))
        self.assertNotIn("label", out)

    def test_multichannel_and_channel_first_label(self):
        img, lab = _square(48, 8)
        aug = RandFewShotAugment()
        aug.set_random_state(2)
        out_img, out_lab = aug(np.stack([img, img]), torch.as_tensor(lab[None], dtype=torch.int64))
        self.assertEqual(out_img.shape, (2, 48, 48))
        np.testing.assert_allclose(out_img[0], out_img[1])
        self.assertIsInstance(out_lab, torch.Tensor)
        self.assertEqual(tuple(out_lab.shape), (1, 48, 48))
        self.assertEqual(out_lab.dtype, torch.int64)

    def test_bad_inputs(self):
        img, lab = _square(32, 6)
        aug = RandFewShotAugment()
        with self.assertRaisesRegex(DataError, "binary"):
            aug(img[None], lab * 2)
        with self.assertRaisesRegex(DataError, "does not match"):
            aug(img[None], lab[:16])
        bad = img.copy()
        bad[0, 0] = np.nan
        with self.assertRaisesRegex(DataError, "NaN"):
            aug(bad[None], lab)
        with self.assertRaises(ConfigError):
            RandFewShotAugment(scale_range=(1.2, 0.9))
        with self.assertRaises(ConfigError):
            RandFewShotAugmentd(keys=("a", "b", "c"))


class TestMonaiVariant(unittest.TestCase):
    def test_monai_variant_runs_and_is_seeded(self):
        img, lab = _square(64, 12)
        outs = []
        for _ in range(2):
            t = monai_fewshot_augment(keys=("image", "label"))
            t.set_random_state(3)
            outs.append(t({"image": img[None], "label": lab[None].astype(np.float32)}))
        o = outs[0]
        self.assertEqual(tuple(o["image"].shape), (1, 64, 64))
        self.assertEqual(tuple(o["label"].shape), (1, 64, 64))
        self.assertTrue(set(np.unique(np.asarray(o["label"]))) <= {0.0, 1.0})
        self.assertLess(np.abs(_centroid(np.asarray(o["label"])[0]) - _centroid(lab)).max(), 12.0)
        np.testing.assert_array_equal(np.asarray(outs[0]["image"]), np.asarray(outs[1]["image"]))
        self.assertGreater(np.abs(np.asarray(o["image"])[0] - img).max(), 0.1)


class TestStrongVariant(unittest.TestCase):
    def test_strong_variant_moves_the_region_and_is_seeded(self):
        # an off-centre square: the published ranges keep it within a few pixels, the strong ones move it (flip,
        # wide translation and rotation) by far more in some draws; label stays binary, draws are reproducible
        size = 128
        lab = np.zeros((size, size), np.uint8)
        lab[20:44, 20:44] = 1
        img = (lab * 2.0).astype(np.float32)
        shifts = {"parity": [], "strong": []}
        for seed in range(12):
            for name, t in (("parity", RandFewShotAugmentd(keys=("image", "label"))),
                            ("strong", strong_fewshot_augment(image_size=size))):  # fmt: skip
                t.set_random_state(seed)
                o = t({"image": img[None], "label": lab[None].astype(np.float32)})
                out = np.asarray(o["label"])[0]
                self.assertTrue(set(np.unique(out)) <= {0.0, 1.0})
                if out.sum() > 0:
                    shifts[name].append(np.abs(_centroid(out) - _centroid(lab)).max())
        self.assertLess(max(shifts["parity"]), 16.0)
        self.assertGreater(max(shifts["strong"]), 40.0)
        a, b = strong_fewshot_augment(), strong_fewshot_augment()
        a.set_random_state(5)
        b.set_random_state(5)
        noise = np.random.RandomState(0).rand(1, 64, 64).astype(np.float32)
        data = {"image": noise, "label": lab[None, :64, :64].astype(np.float32)}
        np.testing.assert_array_equal(np.asarray(a(dict(data))["image"]), np.asarray(b(dict(data))["image"]))

    def test_strong_variant_bad_options(self):
        with self.assertRaises(ConfigError):
            strong_fewshot_augment(flip_prob=1.5)
        with self.assertRaises(ConfigError):
            strong_fewshot_augment(translate_fraction=-0.1)


if __name__ == "__main__":
    unittest.main()
