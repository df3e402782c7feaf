# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.losses (ssl_alpnet.md §4)."""

from __future__ import annotations

import math
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

from labelless.errors import DataError
from labelless.losses import (
    ALPNetLoss,
    prototype_alignment_loss,
    query_soft_dice,
    support_target,
    weighted_query_ce,
)
from labelless.networks.fewshot import FewShotOutput

# (batch, H, W, weights, ignore fraction)
CE_CASES = [
    (1, 16, 16, (0.05, 1.0), 0.0),
    (2, 8, 12, (0.05, 1.0), 0.3),
    (1, 16, 16, (1.0, 1.0), 0.2),
    (3, 8, 8, (0.5, 2.0), 0.0),
]
BAD_TARGETS = [
    (torch.full((1, 8, 8), 2, dtype=torch.long), "label values"),
    (torch.full((1, 8, 8), 255, dtype=torch.long), "ignore index"),
    (torch.zeros(1, 4, 4, dtype=torch.long), "expected [B, H, W]"),
]
H = W = 8  # feature grid of the PAR cases
UP = 8  # label size = 8 × feature grid


def _manual_weighted_ce(logits, target, weights, ignore_index=255):
    logp = torch.log_softmax(logits.double(), dim=1)
    num, den = 0.0, 0.0
    for b in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                y = int(target[b, i, j])
                if y == ignore_index:
                    continue
                num += -weights[y] * float(logp[b, y, i, j])
                den += weights[y]
    return num / den


def _block_mask(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(1, 1, H, W)
    m[..., r0:r1, c0:c1] = 1.0
    return m


def _two_direction_features(mask: torch.Tensor, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """[1, 4, H, W] features: direction e0 inside the mask, e1 outside, plus small noise."""
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(1, 4, H, W)
    f[:, 0] = mask[:, 0]
    f[:, 1] = 1.0 - mask[:, 0]
    return f + noise * torch.randn(f.shape, generator=g)


def _logits_for(mask: torch.Tensor) -> torch.Tensor:
    """Low-resolution logits whose argmax is ``mask`` (FG where mask == 1)."""
    return torch.cat([1.0 - mask, mask], dim=1) * 3.0 - 1.0


def _label_from(mask: torch.Tensor) -> torch.Tensor:
    return F.interpolate(mask, scale_factor=UP, mode="nearest")


class TestWeightedCE(unittest.TestCase):
    @parameterized.expand(CE_CASES)
    def test_equals_manual(self, b, h, w, weights, ignore_frac):
        g = torch.Generator().manual_seed(b * 100 + h)
        logits = torch.randn(b, 2, h, w, generator=g) * 3
        target = torch.randint(0, 2, (b, h, w), generator=g)
        target[torch.rand(b, h, w, generator=g) < ignore_frac] = 255
        got = weighted_query_ce(logits, target, weights)
        self.assertAlmostEqual(float(got), _manual_weighted_ce(logits, target, weights), places=5)

    def test_default_weights_and_channel_dim(self):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(1, 2, 8, 8, generator=g)
        target = torch.randint(0, 2, (1, 8, 8), generator=g)
        expected = F.cross_entropy(logits, target, weight=torch.tensor([0.05, 1.0]))
        torch.testing.assert_close(weighted_query_ce(logits, target[:, None].float()), expected)

    @parameterized.expand(BAD_TARGETS)
    def test_bad_targets(self, target, fragment):
        with self.assertRaises(DataError) as ctx:
            weighted_query_ce(torch.zeros(1, 2, 8, 8), target)
        self.assertIn(fragment, str(ctx.exception))


class TestPAR(unittest.TestCase):
    def test_identity_case_is_low(self):
        """Query == support features and predicted mask == support mask: near-zero PAR; a wrong mask is high."""
        mask = _block_mask(0, 4, 0, 4)  # one full 4×4 FG window (local mode), three full BG windows
        feats = _two_direction_features(mask)
        label = _label_from(mask)
        good, info = prototype_alignment_loss(_logits_for(mask), feats, feats.clone(), label, return_info=True)
        wrong = prototype_alignment_loss(_logits_for(_block_mask(4, 8, 4, 8)), feats, feats.clone(), label)
        self.assertTrue(info["fg_local"])
        self.assertFalse(info["bg_fallback"])
        self.assertLess(float(good), 0.05)
        self.assertGreater(float(wrong), 1.0)

    def test_gradient_flows_through_both_feature_maps_not_the_mask(self):
        mask = _block_mask(2, 6, 1, 7)
        fq = _two_direction_features(mask, noise=0.3, seed=1).requires_grad_(True)
        fs = _two_direction_features(mask, noise=0.3, seed=2).requires_grad_(True)
        low = _logits_for(mask).requires_grad_(True)
        prototype_alignment_loss(low, fq, fs, _label_from(mask)).backward()
        self.assertGreater(float(fq.grad.abs().sum()), 0.0)
        self.assertGreater(float(fs.grad.abs().sum()), 0.0)
        self.assertIsNone(low.grad)  # argmax mask: no gradient

    def test_multi_shot_is_mean_over_shots_and_ignores_other_labels(self):
        mask = _block_mask(0, 4, 4, 8)
        fq = _two_direction_features(mask, noise=0.2, seed=3)
        fs = torch.cat([_two_direction_features(mask, noise=0.5, seed=s) for s in (4, 5)])
        label = torch.cat([_label_from(mask), _label_from(_block_mask(1, 5, 3, 7))])
        label[1, :, :10, :] = 7.0  # not FG, not BG: ignored
        low = _logits_for(mask)
        both = prototype_alignment_loss(low, fq, fs, label)
        one = [prototype_alignment_loss(low, fq, fs[k : k + 1], label[k : k + 1]) for k in (0, 1)]
        torch.testing.assert_close(both, (one[0] + one[1]) / 2)
        target = support_target(label[1:2])
        self.assertEqual(int((target == 255).sum()), 10 * W * UP)
        self.assertTrue(bool(((target == 0) | (target == 1) | (target == 255)).all()))

    def test_empty_predicted_fg_is_finite_zero_prototype(self):
        mask = _block_mask(2, 6, 2, 6)
        feats = _two_direction_features(mask, seed=6).requires_grad_(True)
        all_bg = _logits_for(torch.zeros(1, 1, H, W))
        loss, info = prototype_alignment_loss(all_bg, feats, feats, _label_from(mask), return_info=True)
        self.assertTrue(math.isfinite(loss.item()))
        self.assertTrue(info["empty_fg"])
        self.assertFalse(info["fg_local"])
        self.assertFalse(info["skipped"])
        # FG score 0 everywhere, BG score 20 · cos: the loss is the CE of logits (bg, 0)
        self.assertGreater(loss.item(), 1.0)  # support FG pixels are predicted BG with a large margin
        loss.backward()
        self.assertTrue(torch.isfinite(feats.grad).all())

    def test_skip_empty_fg(self):
        mask = _block_mask(2, 6, 2, 6)
        feats = _two_direction_features(mask, seed=7).requires_grad_(True)
        loss, info = prototype_alignment_loss(
            _logits_for(torch.zeros(1, 1, H, W)), feats, feats, _label_from(mask), skip_empty_fg=True, return_info=True
        )
        self.assertEqual(loss.item(), 0.0)
        self.assertTrue(info["skipped"])
        loss.backward()  # still part of a graph

    def test_empty_predicted_bg_uses_fallback(self):
        mask = _block_mask(0, 8, 0, 8)
        feats = _two_direction_features(_block_mask(2, 6, 2, 6), seed=8)
        loss, info = prototype_alignment_loss(
            _logits_for(mask), feats, feats, _label_from(_block_mask(2, 6, 2, 6)), return_info=True
        )
        self.assertTrue(info["bg_fallback"])
        self.assertTrue(math.isfinite(loss.item()))

    @parameterized.expand([((1, 4, 0, 4), False), ((0, 4, 0, 4), True), ((0, 4, 1, 5), False)])
    def test_fg_mode_test_uses_4x4_windows(self, block, local):
        """Local mode only when a whole aligned 4×4 window is predicted FG (window 4 even with window=2)."""
        mask = _block_mask(*block)
        feats = _two_direction_features(mask, seed=9)
        _, info = prototype_alignment_loss(
            _logits_for(mask), feats, feats, _label_from(mask), window=2, return_info=True
        )
        self.assertEqual(info["fg_local"], local)

    def test_shape_errors(self):
        f = torch.randn(1, 4, H, W)
        with self.assertRaises(DataError):
            prototype_alignment_loss(torch.zeros(2, 2, H, W), f, f, torch.zeros(1, 1, 64, 64))
        with self.assertRaises(DataError):
            prototype_alignment_loss(torch.zeros(1, 2, 4, 4), f, f, torch.zeros(1, 1, 64, 64))
        with self.assertRaises(DataError):
            prototype_alignment_loss(torch.zeros(1, 2, H, W), f, f, torch.zeros(2, 1, 64, 64))


class TestALPNetLoss(unittest.TestCase):
    def _output(self, seed: int = 0) -> tuple[FewShotOutput, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        mask = _block_mask(0, 4, 0, 4)
        fq = torch.randn(1, 4, H, W, generator=g, requires_grad=True)
        fs = torch.randn(1, 4, H, W, generator=g, requires_grad=True)
        low = torch.randn(1, 2, H, W, generator=g, requires_grad=True)
        logits = F.interpolate(low, size=(H * UP, W * UP), mode="bilinear", align_corners=False)
        q_label = torch.randint(0, 2, (1, H * UP, W * UP), generator=g)
        return FewShotOutput(logits, low, fs, fq, 4, False), q_label, _label_from(mask)

    @parameterized.expand([(1.0,), (0.5,)])
    def test_total_is_weighted_sum(self, par_weight):
        out, q_label, s_label = self._output()
        total, parts = ALPNetLoss(par_weight=par_weight)(out, q_label, s_label)
        expected_q = weighted_query_ce(out.logits, q_label)
        expected_p = prototype_alignment_loss(out.low_res_logits, out.query_features, out.support_features, s_label)
        torch.testing.assert_close(parts["query_loss"], expected_q.detach())
        torch.testing.assert_close(parts["par_loss"], expected_p.detach())
        torch.testing.assert_close(total, expected_q + par_weight * expected_p)
        total.backward()
        self.assertIsNotNone(out.query_features.grad)
        self.assertIsNotNone(out.support_features.grad)

    def test_without_par(self):
        out, q_label, _ = self._output(1)
        total, parts = ALPNetLoss(par_weight=0.0)(out.logits, q_label)
        torch.testing.assert_close(total, weighted_query_ce(out.logits, q_label))
        self.assertEqual(float(parts["par_loss"]), 0.0)
        with self.assertRaises(DataError):
            ALPNetLoss()(out.logits, q_label)


if __name__ == "__main__":
    unittest.main()


class TestSoftDice(unittest.TestCase):
    def test_hand_computed_value_with_ignored_pixels(self):
        # FG probabilities 0.5 everywhere (zero logits); label: 2 FG, 1 BG, 1 ignored pixel
        logits = torch.zeros(1, 2, 2, 2)
        label = torch.tensor([[[1, 1], [0, 255]]])
        # p over valid pixels = 0.5 × 3 = 1.5; Σ p·t = 1.0; Σ t = 2 -> 1 - 2/3.5
        self.assertAlmostEqual(float(query_soft_dice(logits, label, eps=0.0)), 1 - 2.0 / 3.5, places=6)

    def test_perfect_prediction_is_near_zero_and_gradients_flow(self):
        label = torch.zeros(1, 8, 8, dtype=torch.long)
        label[:, 2:6, 2:6] = 1
        logits = torch.stack([(label == 0).float(), (label == 1).float()], dim=1) * 30.0
        logits.requires_grad_(True)
        loss = query_soft_dice(logits, label)
        self.assertLess(float(loss), 1e-4)
        loss.backward()
        self.assertTrue(torch.isfinite(logits.grad).all())

    def test_alpnet_loss_adds_the_weighted_dice_term(self):
        logits = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
        label = (torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).long()
        plain, parts0 = ALPNetLoss(par_weight=0.0)(logits, label)
        total, parts = ALPNetLoss(par_weight=0.0, dice_weight=0.5)(logits, label)
        self.assertNotIn("dice_loss", parts0)
        self.assertAlmostEqual(float(total), float(plain) + 0.5 * float(parts["dice_loss"]), places=5)

    def test_bad_label_is_a_data_error(self):
        with self.assertRaisesRegex(DataError, "label values"):
            query_soft_dice(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 3))
