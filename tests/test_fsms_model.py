# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.fsms (fsms.md §2, §3.1, §6: encoder, prototypes, FSMSNet) and of the surrogate
helpers of labelless.transforms.noise."""

from __future__ import annotations

import os
import random
import tempfile
import unittest

import numpy as np
import torch
from parameterized import parameterized

from labelless.errors import ConfigError, DataError
from labelless.networks.fsms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FSMSNet,
    VGGEncoder,
    load_vgg16_weights,
    masked_pool_k_shots,
    support_masks_to_grid,
)
from labelless.transforms.noise import add_gaussian_noise, draw_sigma, surrogate_target

WIDTH, FC = 8, 16
# (T, K, H, W)
SHAPE_CASES = [(5, 1, 64, 64), (5, 5, 64, 64), (2, 2, 36, 52)]
# torchvision VGG16 ``features`` indices of the convolutions and their (out, in) channels
VGG16_CONVS = [
    (0, 64, 3),
    (2, 64, 64),
    (5, 128, 64),
    (7, 128, 128),
    (10, 256, 128),
    (12, 256, 256),
    (14, 256, 256),
    (17, 512, 256),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
]
_THREADS = torch.get_num_threads()


def setUpModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(1)


def tearDownModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(_THREADS)


def _episode(t: int, k: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s_img = torch.rand(t, k, 3, h, w, generator=g)
    s_msk = torch.zeros(t, k, 1, h, w)
    s_msk[..., h // 4 : h // 2 + 4, w // 4 : w // 2 + 4] = 1.0
    return s_img, s_msk, torch.rand(t, 3, h, w, generator=g)


def _fake_vgg16(n_convs: int, shapes: bool = True, biases: bool = True, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {}
    for idx, cout, cin in VGG16_CONVS[:n_convs]:
        shape = (cout, cin, 3, 3) if shapes else (1, 1, 1, 1)
        state[f"{prefix}features.{idx}.weight"] = torch.randn(shape, generator=g)
        if biases:
            state[f"{prefix}features.{idx}.bias"] = torch.randn(shape[0], generator=g)
    state[f"{prefix}classifier.0.weight"] = torch.zeros(4, 2)
    return state


class TestVGGEncoder(unittest.TestCase):
    def test_stride_4_blocks_4(self):
        enc = VGGEncoder(spatial_dims=2, in_channels=3, blocks=4, width=WIDTH)
        out = enc(torch.rand(2, 3, 64, 48))
        self.assertEqual(tuple(out.shape), (2, 8 * WIDTH, 16, 12))
        self.assertEqual(enc.out_channels, 8 * WIDTH)
        self.assertEqual(len(enc.convs()), 10)
        self.assertEqual([c.dilation[0] for c in enc.convs()], [1] * 6 + [2] + [1] * 3)  # dilated conv3_3

    def test_blocks_5_variant(self):
        enc = VGGEncoder(spatial_dims=2, blocks=5, width=WIDTH)
        out = enc(torch.rand(1, 3, 32, 32))
        self.assertEqual(tuple(out.shape), (1, 8 * WIDTH, 8, 8))  # stride stays 4
        self.assertEqual([c.dilation[0] for c in enc.convs()[10:]], [2, 2, 2])
        self.assertEqual(len(enc.convs()), 13)

    def test_3d_and_bad_config(self):
        enc = VGGEncoder(spatial_dims=3, width=2)
        self.assertEqual(tuple(enc(torch.rand(1, 3, 8, 8, 8)).shape), (1, 16, 2, 2, 2))
        for kwargs in ({"blocks": 3}, {"width": 0}, {"spatial_dims": 1}):
            with self.assertRaises(ConfigError):
                VGGEncoder(**kwargs)

    def test_keras_parity_init(self):
        net = FSMSNet(width=WIDTH, feature_channels=FC)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                self.assertEqual(float(m.bias.detach().abs().sum()), 0.0)
                fan_in, fan_out = m.weight.shape[1] * m.weight[0, 0].numel(), m.weight.shape[0] * m.weight[0, 0].numel()
                self.assertLessEqual(float(m.weight.detach().abs().max()), (6.0 / (fan_in + fan_out)) ** 0.5 + 1e-6)
            if isinstance(m, torch.nn.BatchNorm2d):
                self.assertAlmostEqual(m.momentum, 0.01)
                self.assertAlmostEqual(m.eps, 1e-3)


class TestVGG16Weights(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.good = os.path.join(cls.tmp.name, "vgg16.pth")
        torch.save({"state_dict": _fake_vgg16(10, prefix="module.")}, cls.good)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def _file(self, name: str, obj: object) -> str:
        path = os.path.join(self.tmp.name, name)
        torch.save(obj, path)
        return path

    def test_mapping_by_conv_order_and_normalization(self):
        net = FSMSNet(width=64, feature_channels=FC, pretrained_path=self.good)
        state = _fake_vgg16(10)
        convs = net.encoder.convs()
        for (idx, _, _), conv in zip(VGG16_CONVS[:10], convs, strict=True):
            torch.testing.assert_close(conv.weight.detach(), state[f"features.{idx}.weight"], rtol=0, atol=0)
            torch.testing.assert_close(conv.bias.detach(), state[f"features.{idx}.bias"], rtol=0, atol=0)
        self.assertEqual(net.pretrained_mapping["module.features.17.weight"], "block4.0.weight")
        self.assertEqual(net.pretrained_mapping["module.features.14.bias"], "block3.4.bias")
        self.assertEqual(len(net.pretrained_mapping), 20)
        self.assertTrue(net.normalizes_input)
        # the flag is part of the state dict: a network built without weights restores it from a checkpoint
        plain = FSMSNet(width=64, feature_channels=FC)
        self.assertFalse(plain.normalizes_input)
        plain.load_state_dict(net.state_dict())
        self.assertTrue(plain.normalizes_input)
        # normalisation happens inside: equals the un-normalised network on (x - mean) / std
        plain.input_normalization.fill_(False)
        net.eval(), plain.eval()
        x = torch.rand(1, 3, 8, 8)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(net.denoise(x), plain.denoise((x - mean) / std))
            self.assertFalse(torch.allclose(net.denoise(x), plain.denoise(x)))
        off = FSMSNet(width=64, feature_channels=FC, pretrained_path=self.good, imagenet_normalization="false")
        self.assertFalse(off.normalizes_input)

    def test_errors_name_the_file(self):
        enc = VGGEncoder(width=64)
        garbage = os.path.join(self.tmp.name, "garbage.pth")
        with open(garbage, "wb") as f:
            f.write(b"not a checkpoint")
        cases = [
            (garbage, "cannot read"),
            (os.path.join(self.tmp.name, "absent.pth"), "does not exist"),
            (self._file("short.pth", _fake_vgg16(9, shapes=False)), "missing keys"),
            (self._file("shape.pth", _fake_vgg16(10, shapes=False)), "shape mismatch for 'features.0.weight'"),
            (self._file("nobias.pth", _fake_vgg16(10, shapes=False, biases=False)), "features.0.bias"),
            (self._file("bn.pth", {"features.1.running_mean": torch.zeros(2)}), "vgg16_bn"),
            (self._file("other.pth", {"conv1.weight": torch.zeros(2, 3, 3, 3)}), "features.0.weight"),
        ]
        for path, problem in cases:
            with self.assertRaises(DataError) as ctx:
                load_vgg16_weights(enc, path)
            self.assertIn(path, str(ctx.exception))
            self.assertIn(problem, str(ctx.exception))
        with self.assertRaises(ConfigError):
            load_vgg16_weights(VGGEncoder(width=WIDTH), self.good)


class TestPrototypes(unittest.TestCase):
    def test_masked_pool_equals_hand_mean_over_shots(self):
        g = torch.Generator().manual_seed(3)
        feats = torch.randn(2, 3, 4, 5, 5, generator=g)
        masks = (torch.rand(2, 3, 1, 5, 5, generator=g) > 0.6).float()
        masks[:, :, :, 0, 0] = 1.0
        out = masked_pool_k_shots(feats, masks)
        self.assertEqual(tuple(out.shape), (2, 4))
        for t in range(2):
            vectors = [
                feats[t, k, :, y, x] for k in range(3) for y in range(5) for x in range(5) if masks[t, k, 0, y, x] > 0
            ]
            torch.testing.assert_close(out[t], torch.stack(vectors).mean(0), rtol=1e-4, atol=1e-4)

    def test_masked_pool_shape_errors(self):
        with self.assertRaises(DataError):
            masked_pool_k_shots(torch.zeros(2, 3, 4, 5, 5), torch.zeros(2, 2, 1, 5, 5))
        with self.assertRaises(DataError):
            masked_pool_k_shots(torch.zeros(2, 3, 4, 5, 5), torch.zeros(2, 3, 1, 4, 4))

    def test_grid_binary_and_fallback(self):
        masks = torch.zeros(1, 2, 1, 64, 64)
        masks[0, 0, 0, 8:32, 16:48] = 1.0  # block-aligned: exact binary grid mask
        masks[0, 1, 0, 5, 6] = 1.0  # one pixel: bilinear + threshold empties it
        grid = support_masks_to_grid(masks, 16)
        self.assertEqual(tuple(grid.shape), (1, 2, 1, 16, 16))
        expected = torch.zeros(16, 16)
        expected[2:8, 4:12] = 1.0
        torch.testing.assert_close(grid[0, 0, 0], expected)
        soft = grid[0, 1, 0]
        self.assertEqual(int((soft > 0).sum()), 1)
        self.assertAlmostEqual(float(soft[1, 1]), 1.0 / 16.0, places=6)  # area fraction of the cell
        self.assertFalse(torch.equal(masks, torch.zeros_like(masks)))  # input untouched

    def test_empty_support_mask_raises(self):
        masks = torch.ones(2, 3, 1, 16, 16)
        masks[1, 2] = 0.0
        with self.assertRaises(DataError) as ctx:
            support_masks_to_grid(masks, 4)
        self.assertIn("empty support mask: task 1 shot 2", str(ctx.exception))
        net = FSMSNet(width=WIDTH, feature_channels=FC)
        with self.assertRaises(DataError) as ctx:
            net(torch.rand(2, 3, 3, 16, 16), masks, torch.rand(2, 3, 16, 16))
        self.assertIn("empty support mask: task 1 shot 2", str(ctx.exception))


class TestFSMSNet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.net = FSMSNet(spatial_dims=2, encoder_blocks=4, width=WIDTH, feature_channels=FC)

    @parameterized.expand(SHAPE_CASES)
    def test_shapes(self, t, k, h, w):
        s_img, s_msk, q_img = _episode(t, k, h, w)
        logits = self.net(s_img, s_msk, q_img)
        self.assertEqual(tuple(logits.shape), (t, 1, h, w))
        self.assertTrue(torch.isfinite(logits).all())
        probs = self.net.predict(s_img, s_msk, q_img)
        self.assertTrue(bool(((probs >= 0) & (probs <= 1)).all()))
        recon = self.net.denoise(torch.rand(t + 1, 3, h, w))
        self.assertEqual(tuple(recon.shape), (t + 1, 3, h // 4, w // 4))

    def test_blocks_5_network(self):
        net = FSMSNet(encoder_blocks=5, width=4, feature_channels=8)
        s_img, s_msk, q_img = _episode(2, 1, 32, 32)
        self.assertEqual(tuple(net(s_img, s_msk, q_img).shape), (2, 1, 32, 32))

    def test_shot_order_and_prototype_dependence(self):
        net = self.net.eval()
        s_img, s_msk, q_img = _episode(2, 3, 32, 32, seed=5)
        s_msk[:, 1, :, :, :] = 0.0
        s_msk[:, 1, :, 20:30, 2:12] = 1.0
        with torch.no_grad():
            ref = net(s_img, s_msk, q_img)
            perm = [2, 0, 1]
            torch.testing.assert_close(net(s_img[:, perm], s_msk[:, perm], q_img), ref, rtol=1e-4, atol=1e-5)
            moved = s_msk.roll(shifts=8, dims=-1)
            self.assertFalse(torch.allclose(net(s_img, moved, q_img), ref))  # the prototype follows the masks
        net.train()

    def test_parameter_groups(self):
        seg = {id(p) for p in self.net.segmentation_parameters()}
        sur = {id(p) for p in self.net.surrogate_parameters()}
        enc = {id(p) for p in self.net.encoder.parameters()}
        head = {id(p) for p in self.net.surrogate_head.parameters()}
        dec = {id(p) for p in self.net.decoder.parameters()}
        self.assertTrue(enc <= seg and enc <= sur)
        self.assertTrue(head <= sur and not head & seg)
        self.assertTrue(dec <= seg and not dec & sur)
        self.assertEqual(seg | sur, {id(p) for p in self.net.parameters()})

    def test_bad_inputs(self):
        s_img, s_msk, q_img = _episode(2, 1, 32, 32)
        with self.assertRaises(DataError) as ctx:
            self.net(s_img[:, :, :1], s_msk, q_img)
        self.assertIn("expected 3 channels (RGB); convert greyscale", str(ctx.exception))
        with self.assertRaises(DataError) as ctx:
            self.net(s_img, s_msk, torch.rand(2, 3, 32, 36))
        self.assertIn("(2, 3, 32, 36)", str(ctx.exception))
        self.assertIn("(2, 1, 3, 32, 32)", str(ctx.exception))
        bad = q_img.clone()
        bad[0, 0, 0, 0] = float("nan")
        with self.assertRaises(DataError) as ctx:
            self.net(s_img, s_msk, bad)
        self.assertIn("query_images", str(ctx.exception))
        with self.assertRaises(DataError):
            self.net(s_img, s_msk[:, :, :, :16], q_img)
        with self.assertRaises(DataError):
            self.net.denoise(torch.rand(2, 3, 30, 32))  # not a multiple of 4
        with self.assertRaises(DataError):
            self.net.denoise(torch.rand(2, 1, 32, 32))
        with self.assertRaises(ConfigError):
            FSMSNet(width=WIDTH, imagenet_normalization="maybe")


class TestSurrogateHelpers(unittest.TestCase):
    def test_draw_sigma_range_and_seed(self):
        sig = [draw_sigma(torch.Generator().manual_seed(i)) for i in range(300)]
        self.assertTrue(all(0.1 <= s <= 0.6 for s in sig))
        self.assertTrue(all(round(s, 3) == s for s in sig))
        self.assertGreater(max(sig) - min(sig), 0.4)  # spans the range
        self.assertEqual(sig[7], draw_sigma(torch.Generator().manual_seed(7)))
        self.assertTrue(0.1 <= draw_sigma(np.random.default_rng(0)) <= 0.6)
        self.assertTrue(0.2 <= draw_sigma(random.Random(0), 0.2, 0.3) <= 0.3)
        with self.assertRaises(ConfigError):
            draw_sigma(None, 0.6, 0.1)

    def test_noise_not_clipped_and_seeded(self):
        clean = torch.full((4, 3, 16, 16), 0.5)
        noisy = add_gaussian_noise(clean, 0.6, torch.Generator().manual_seed(0))
        self.assertGreater(float(noisy.max()), 1.0)
        self.assertLess(float(noisy.min()), 0.0)
        self.assertAlmostEqual(float((noisy - clean).std()), 0.6, delta=0.05)
        self.assertTrue(torch.equal(clean, torch.full_like(clean, 0.5)))  # input untouched
        again = add_gaussian_noise(clean, 0.6, torch.Generator().manual_seed(0))
        self.assertTrue(torch.equal(noisy, again))
        torch.testing.assert_close(add_gaussian_noise(clean, 0.0, None), clean)
        with self.assertRaises(ConfigError):
            add_gaussian_noise(clean, -0.1, None)

    def test_surrogate_target(self):
        img = torch.zeros(2, 3, 64, 64)
        img[:, 0] = 0.25
        img[:, :, :32] += 0.5
        tgt = surrogate_target(img, 16)
        self.assertEqual(tuple(tgt.shape), (2, 3, 16, 16))
        torch.testing.assert_close(tgt[:, 0, :8], torch.full((2, 8, 16), 0.75))
        torch.testing.assert_close(tgt[:, 1, 8:], torch.zeros(2, 8, 16))
        self.assertTrue(bool(((tgt >= 0) & (tgt <= 1)).all()))


if __name__ == "__main__":
    unittest.main()
