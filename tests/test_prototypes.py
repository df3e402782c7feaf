# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.prototypes (ssl_alpnet.md §2, §3, §8)."""

from __future__ import annotations

import unittest
import warnings

import torch
import torch.nn.functional as F
from parameterized import parameterized

from labelless.errors import DataError
from labelless.networks.prototypes import (
    ALPHead,
    bg_prototypes,
    downsample_mask,
    fg_prototypes,
    fg_uses_local,
    local_prototypes,
    masked_average_pooling,
    prototype_scores,
    safe_normalize,
)

F95 = torch.tensor(0.95).item()  # 0.95 as float32


def _window_mask() -> torch.Tensor:
    """[1, 1, 32, 32] FG mask on the feature grid, built window by window (4×4 grid of 8×8 windows).

    - 5 fully covered 4×4 windows at window positions (0, 0), (0, 1), (2, 3), (5, 5), (7, 7);
    - one window with mean exactly 0.95 (float32) at (3, 0): 15 ones and 0.2;
    - one window with 15/16 = 0.9375 at (6, 2);
    - one aligned 2×2 block (mean 0.25) in window (1, 6).
    """
    m = torch.zeros(1, 1, 32, 32)
    for i, j in [(0, 0), (0, 1), (2, 3), (5, 5), (7, 7)]:
        m[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = 1.0
    m[..., 12:16, 0:4] = 1.0
    m[..., 15, 3] = 0.2
    m[..., 24:28, 8:12] = 1.0
    m[..., 24, 8] = 0.0
    m[..., 4:6, 24:26] = 1.0
    return m


def _only(window_rows: slice, window_cols: slice) -> torch.Tensor:
    """The part of ``_window_mask`` inside the given rows/columns, zero elsewhere."""
    full, m = _window_mask(), torch.zeros(1, 1, 32, 32)
    m[..., window_rows, window_cols] = full[..., window_rows, window_cols]
    return m


def _reference_logits(fs: torch.Tensor, fg_full: torch.Tensor, fq: torch.Tensor, window: int) -> torch.Tensor:
    """Literal, loop-based transcription of ssl_alpnet.md §3 (independent of the vectorised implementation)."""
    s, c, h, w = fs.shape
    m_fg = F.interpolate(fg_full, size=(h, w), mode="bilinear", align_corners=False)
    m_bg = F.interpolate(1.0 - fg_full, size=(h, w), mode="bilinear", align_corners=False)

    def local(mask):
        protos = []
        for k in range(s):
            for i in range(h // window):
                for j in range(w // window):
                    rows, cols = slice(i * window, (i + 1) * window), slice(j * window, (j + 1) * window)
                    if mask[k, 0, rows, cols].mean() > 0.95:
                        protos.append(fs[k, :, rows, cols].mean(dim=(1, 2)))
        return protos

    def maps(mask):
        return [(fs[k] * mask[k]).sum(dim=(1, 2)) / (mask[k].sum() + 1e-5) for k in range(s)]

    def score(protos):
        a = torch.stack([20.0 * F.cosine_similarity(fq, p[None, :, None, None], dim=1, eps=1e-4) for p in protos], 1)
        return (torch.softmax(a, dim=1) * a).sum(dim=1, keepdim=True)

    bg = local(m_bg) or [torch.stack(maps(m_bg)).mean(0)]
    mode_local = any(
        m_fg[k, 0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean() >= 0.95
        for k in range(s)
        for i in range(h // 4)
        for j in range(w // 4)
    )
    if mode_local:
        fg_score = score(local(m_fg) + maps(m_fg))
    else:
        g = torch.stack(maps(m_fg)).mean(0)
        fg_score = 20.0 * F.cosine_similarity(fq, g[None, :, None, None], dim=1, eps=1e-4)[:, None]
    return torch.cat([score(bg), fg_score], dim=1)


def _blob_masks(shots: int, size: int, seed: int, big: bool = False) -> torch.Tensor:
    """One random rectangle per shot; ``big`` ones (3/8 to 3/4 of the side) nearly always pass the FG mode test."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(shots, 1, size, size)
    lo, hi = (3 * size // 8, 3 * size // 4) if big else (size // 4, size // 2)
    for k in range(shots):
        hh, ww = torch.randint(lo, hi, (2,), generator=g).tolist()
        r0 = int(torch.randint(0, size - hh, (1,), generator=g))
        c0 = int(torch.randint(0, size - ww, (1,), generator=g))
        masks[k, 0, r0 : r0 + hh, c0 : c0 + ww] = 1.0
    return masks


# (shots, queries, window, feature hw, image hw / output size)
SHAPE_CASES = [
    (1, 1, 4, (32, 32), (256, 256)),
    (1, 1, 2, (32, 32), (256, 256)),
    (3, 1, 4, (32, 32), (256, 256)),
    (3, 1, 2, (32, 32), (256, 256)),
    (3, 5, 2, (16, 16), (128, 128)),
    (2, 3, 4, (12, 20), (96, 160)),
]
# (shots, window, fg mask seed, big blobs, expected FG mode is local)
REFERENCE_CASES = [
    (1, 4, 0, True, True),
    (1, 2, 1, True, True),
    (3, 4, 2, True, True),
    (3, 2, 3, True, True),
    (2, 2, 4, False, True),
    (1, 4, 0, False, False),
]


class TestBasics(unittest.TestCase):
    def test_safe_normalize(self):
        x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [3e-5, 4e-5]])
        y = safe_normalize(x, dim=1)
        torch.testing.assert_close(y[0], torch.tensor([0.6, 0.8]))
        self.assertTrue(torch.equal(y[1], torch.zeros(2)))  # zero vector stays zero
        torch.testing.assert_close(y[2], x[2] / 1e-4)  # norm 5e-5 < eps: divided by eps

    def test_masked_average_pooling(self):
        feats = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
        mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
        out = masked_average_pooling(feats, mask)
        expected0 = (feats[0, :, 0, 0] + feats[0, :, 1, 1]) / (2 + 1e-5)
        torch.testing.assert_close(out[0], expected0)
        self.assertTrue(torch.equal(out[1], torch.zeros(3)))  # empty mask: zero prototype
        with self.assertRaises(ValueError):
            masked_average_pooling(feats, mask[:1])

    def test_downsample_mask_is_point_sampling(self):
        mask = torch.zeros(1, 1, 256, 256)
        mask[..., 0, 0] = 1.0  # area pooling would give 1/64 in cell (0, 0)
        self.assertEqual(float(downsample_mask(mask, 32).abs().sum()), 0.0)
        g = torch.Generator().manual_seed(0)
        mask = (torch.rand(2, 1, 256, 256, generator=g) > 0.5).float()
        low = downsample_mask(mask, (32, 32))
        i, j = 5, 17
        expected = mask[:, 0, 8 * i + 3 : 8 * i + 5, 8 * j + 3 : 8 * j + 5].mean(dim=(1, 2))
        torch.testing.assert_close(low[:, 0, i, j], expected)
        same = downsample_mask(low, (32, 32))
        self.assertTrue(torch.equal(same, low))
        self.assertEqual(downsample_mask(mask.bool(), 32).dtype, torch.float32)


class TestLocalPrototypes(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.feats = torch.randn(1, 8, 32, 32)
        self.mask = _window_mask()
        pooled = F.avg_pool2d(self.mask, 4)
        # preconditions of the hand-built mask
        self.assertEqual(pooled[0, 0, 3, 0].item(), F95)
        self.assertEqual(pooled[0, 0, 6, 2].item(), 0.9375)

    def test_fg_count_window4_strict(self):
        protos = local_prototypes(self.feats, self.mask, 4)
        self.assertEqual(tuple(protos.shape), (5, 8))  # the 0.95 window is excluded
        pooled = F.avg_pool2d(self.feats, 4)
        expected = torch.stack([pooled[0, :, i, j] for i, j in [(0, 0), (0, 1), (2, 3), (5, 5), (7, 7)]])
        torch.testing.assert_close(protos, expected)  # raster order

    def test_bg_count(self):
        self.assertEqual(local_prototypes(self.feats, 1.0 - self.mask, 4).shape[0], 64 - 8)
        self.assertEqual(local_prototypes(self.feats, 1.0 - self.mask, 2).shape[0], 256 - 29)

    def test_fg_count_window2(self):
        # 5 full windows × 4 + 3 (0.95 window) + 3 (15/16 window) + 1 (aligned 2×2 block)
        self.assertEqual(local_prototypes(self.feats, self.mask, 2).shape[0], 27)

    def test_threshold_is_strict_and_mode_test_is_not(self):
        exact = _only(slice(12, 16), slice(0, 4))
        self.assertEqual(local_prototypes(self.feats, exact, 4).shape[0], 0)
        self.assertTrue(fg_uses_local(exact))
        self.assertFalse(fg_uses_local(_only(slice(24, 28), slice(8, 12))))  # 0.9375
        self.assertTrue(fg_uses_local(self.mask))

    def test_mode_test_always_uses_4x4(self):
        block = _only(slice(4, 6), slice(24, 26))  # one full 2×2 window, 0.25 of a 4×4 window
        self.assertEqual(local_prototypes(self.feats, block, 2).shape[0], 1)
        self.assertFalse(fg_uses_local(block))
        protos, use_local = fg_prototypes(self.feats, block, window=2)
        self.assertFalse(use_local)
        torch.testing.assert_close(protos, masked_average_pooling(self.feats, block))

    def test_shots_pooled_together(self):
        feats = torch.randn(2, 8, 32, 32)
        masks = torch.cat([_only(slice(0, 4), slice(0, 8)), _only(slice(28, 32), slice(28, 32))])
        protos = local_prototypes(feats, masks, 4)
        pooled = F.avg_pool2d(feats, 4)
        expected = torch.stack([pooled[0, :, 0, 0], pooled[0, :, 0, 1], pooled[1, :, 7, 7]])
        torch.testing.assert_close(protos, expected)  # shot-major order
        protos_fg, use_local = fg_prototypes(feats, masks, 4)
        self.assertTrue(use_local)
        self.assertEqual(protos_fg.shape[0], 3 + 2)  # local + one global per shot

    def test_grid_smaller_than_window(self):
        self.assertEqual(tuple(local_prototypes(torch.randn(1, 8, 3, 3), torch.ones(1, 1, 3, 3), 4).shape), (0, 8))
        self.assertFalse(fg_uses_local(torch.ones(1, 1, 3, 3)))

    def test_bg_fallback(self):
        protos, fallback = bg_prototypes(self.feats, torch.zeros(1, 1, 32, 32), 4)
        self.assertTrue(fallback)
        self.assertTrue(torch.equal(protos, torch.zeros(1, 8)))
        protos, fallback = bg_prototypes(self.feats, 1.0 - self.mask, 4)
        self.assertFalse(fallback)


class TestPrototypeScores(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(1)
        self.query = torch.randn(2, 16, 6, 5)
        self.protos = torch.randn(4, 16)

    def test_single_is_scaled_cosine(self):
        p = self.protos[:1]
        expected = 20.0 * F.cosine_similarity(self.query, p[:, :, None, None], dim=1, eps=1e-4)[:, None]
        torch.testing.assert_close(prototype_scores(self.query, p), expected)

    def test_identical_prototypes_equal_single(self):
        p = self.protos[:1]
        torch.testing.assert_close(prototype_scores(self.query, p.repeat(7, 1)), prototype_scores(self.query, p))

    def test_softmax_weighted_sum(self):
        a = torch.stack(
            [20.0 * F.cosine_similarity(self.query, p[None, :, None, None], dim=1) for p in self.protos], dim=1
        )
        expected = (torch.softmax(a, dim=1) * a).sum(1, keepdim=True)
        out = prototype_scores(self.query, self.protos)
        torch.testing.assert_close(out, expected)
        self.assertTrue(bool((out <= a.max(1, keepdim=True).values + 1e-5).all()))

    def test_positive_scaling_invariance(self):
        ref = prototype_scores(self.query, self.protos)
        scale = torch.tensor([[3.7], [0.01], [1.0], [250.0]])
        torch.testing.assert_close(prototype_scores(self.query * 0.2, self.protos * scale), ref)

    def test_zero_prototype_scores_zero(self):
        out = prototype_scores(self.query, torch.zeros(1, 16))
        self.assertTrue(torch.equal(out, torch.zeros(2, 1, 6, 5)))

    def test_bad_shapes(self):
        with self.assertRaises(ValueError):
            prototype_scores(self.query, torch.zeros(0, 16))
        with self.assertRaises(ValueError):
            prototype_scores(self.query, torch.zeros(2, 8))
        with self.assertRaises(ValueError):
            prototype_scores(self.query[0], self.protos)


class TestALPHead(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(2)

    def test_no_parameters(self):
        head = ALPHead()
        self.assertEqual(len(list(head.parameters())), 0)
        self.assertEqual(len(list(head.buffers())), 0)

    @parameterized.expand(SHAPE_CASES)
    def test_shapes(self, shots, queries, window, feat_hw, image_hw):
        head = ALPHead()
        fs, fq = torch.randn(shots, 32, *feat_hw), torch.randn(queries, 32, *feat_hw)
        masks = torch.zeros(shots, 1, *image_hw)
        masks[..., image_hw[0] // 4 : 3 * image_hw[0] // 4, image_hw[1] // 4 : 3 * image_hw[1] // 4] = 1.0
        out = head(fs, masks, fq, window=window)
        self.assertEqual(tuple(out.shape), (queries, 2, *feat_hw))
        up = head(fs, masks, fq, window=window, output_size=image_hw)
        self.assertEqual(tuple(up.shape), (queries, 2, *image_hw))
        torch.testing.assert_close(up, F.interpolate(out, size=image_hw, mode="bilinear", align_corners=False))
        self.assertTrue(head.last_info["fg_local"])
        self.assertEqual(head.last_info["n_fg_prototypes"], head.last_info["n_fg_local"] + shots)
        self.assertGreater(head.last_info["n_fg_local"], 0)
        self.assertEqual(head.calls, 2)

    @parameterized.expand(REFERENCE_CASES)
    def test_matches_literal_spec(self, shots, window, seed, big, fg_local):
        fs, fq = torch.randn(shots, 8, 16, 16), torch.randn(2, 8, 16, 16)
        masks = _blob_masks(shots, 128, seed, big)
        head = ALPHead()
        out = head(fs, masks, fq, window=window)
        self.assertEqual(head.last_info["fg_local"], fg_local)
        torch.testing.assert_close(out, _reference_logits(fs, masks, fq, window), rtol=1e-5, atol=1e-5)

    def test_global_only_mode_matches_literal_spec(self):
        fs, fq = torch.randn(2, 8, 16, 16), torch.randn(1, 8, 16, 16)
        masks = torch.zeros(2, 1, 128, 128)
        masks[0, 0, 40:60, 40:60] = 1.0  # 20 px: under 32 px (4 cells) so no 4×4 window is full
        masks[1, 0, 8:30, 90:100] = 1.0
        head = ALPHead()
        out = head(fs, masks, fq, window=2)
        self.assertFalse(head.last_info["fg_local"])
        self.assertEqual(head.last_info["n_fg_prototypes"], 1)
        self.assertEqual(head.fg_global_count, 1)
        torch.testing.assert_close(out, _reference_logits(fs, masks, fq, 2), rtol=1e-5, atol=1e-5)

    def test_exact_threshold_through_head(self):
        fs, fq = torch.randn(1, 8, 32, 32), torch.randn(1, 8, 32, 32)
        head = ALPHead()
        mask = _only(slice(12, 16), slice(0, 4))  # on the feature grid: used as it is
        out = head(fs, mask, fq, window=4)
        self.assertTrue(head.last_info["fg_local"])  # mode test: 0.95 >= 0.95
        self.assertEqual(head.last_info["n_fg_local"], 0)  # local: 0.95 > 0.95 is false
        glb = masked_average_pooling(fs, mask)
        expected = 20.0 * F.cosine_similarity(fq, glb[:, :, None, None], dim=1, eps=1e-4)
        torch.testing.assert_close(out[:, 1], expected)

    def test_window_counts_through_head(self):
        fs, fq = torch.randn(1, 8, 32, 32), torch.randn(1, 8, 32, 32)
        head = ALPHead()
        head(fs, _window_mask(), fq, window=4)
        self.assertEqual((head.last_info["n_fg_local"], head.last_info["n_bg_prototypes"]), (5, 56))
        head(fs, _window_mask(), fq, window=2)
        self.assertEqual((head.last_info["n_fg_local"], head.last_info["n_bg_prototypes"]), (27, 227))

    def test_batch_equals_single_queries(self):
        fs, fq = torch.randn(3, 32, 16, 16), torch.randn(5, 32, 16, 16)
        masks = _blob_masks(3, 128, 7)
        head = ALPHead()
        for window in (4, 2):
            batched = head(fs, masks, fq, window=window, output_size=(128, 128))
            single = torch.cat(
                [head(fs, masks, fq[b : b + 1], window=window, output_size=(128, 128)) for b in range(5)]
            )
            torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)

    def test_all_fg_support_uses_bg_fallback(self):
        fs, fq = torch.randn(1, 8, 32, 32), torch.randn(2, 8, 32, 32)
        head = ALPHead()
        out = head(fs, torch.ones(1, 1, 256, 256), fq, window=4)
        self.assertTrue(bool(torch.isfinite(out).all()))
        self.assertTrue(head.last_info["bg_fallback"])
        self.assertEqual(head.bg_fallback_count, 1)
        self.assertTrue(torch.equal(out[:, 0], torch.zeros(2, 32, 32)))  # zero BG prototype: score 0
        head(fs, torch.ones(1, 1, 256, 256), fq, window=2)
        self.assertEqual(head.bg_fallback_count, 2)
        head.reset_counters()
        self.assertEqual((head.bg_fallback_count, head.calls), (0, 0))

    def test_gradients_flow_to_features(self):
        for masks in (_blob_masks(2, 128, 3), torch.ones(2, 1, 128, 128)):
            fs = torch.randn(2, 8, 16, 16, requires_grad=True)
            fq = torch.randn(3, 8, 16, 16, requires_grad=True)
            ALPHead()(fs, masks, fq, window=2, output_size=128).square().mean().backward()
            for t in (fs, fq):
                self.assertTrue(bool(torch.isfinite(t.grad).all()))
                self.assertGreater(float(t.grad.abs().sum()), 0.0)

    def test_empty_support_mask(self):
        fs, fq = torch.randn(3, 8, 16, 16), torch.randn(1, 8, 16, 16)
        masks = _blob_masks(3, 128, 5)
        masks[1] = 0.0
        with self.assertRaisesRegex(DataError, r"empty support mask.*\[1\]"):
            ALPHead()(fs, masks, fq)
        out = ALPHead()(fs[1:2], masks[1:2], fq, allow_empty_fg=True)  # PAR parity: FG score 0
        self.assertTrue(torch.equal(out[:, 1], torch.zeros(1, 16, 16)))
        self.assertTrue(bool(torch.isfinite(out).all()))
        head = ALPHead(allow_empty_fg=True)
        head(fs, masks, fq)
        self.assertEqual(head.last_info["empty_fg_shots"], [1])

    def test_vanishing_support_mask_warns(self):
        masks = torch.zeros(1, 1, 128, 128)
        masks[..., 0, 0] = 1.0
        with self.assertWarnsRegex(UserWarning, "vanishes"):
            ALPHead()(torch.randn(1, 8, 16, 16), masks, torch.randn(1, 8, 16, 16))

    def test_explicit_bg_mask(self):
        fs, fq = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
        fg = _blob_masks(1, 128, 1)
        head = ALPHead()
        torch.testing.assert_close(head(fs, fg, fq, support_bg_mask=1.0 - fg), head(fs, fg, fq))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = head(fs, fg, fq, support_bg_mask=torch.zeros_like(fg))
        self.assertTrue(head.last_info["bg_fallback"])
        self.assertTrue(torch.equal(out[:, 0], torch.zeros(1, 16, 16)))

    def test_follows_dtype_and_accepts_3d_masks(self):
        fs, fq = torch.randn(1, 8, 16, 16, dtype=torch.float64), torch.randn(2, 8, 16, 16, dtype=torch.float64)
        masks = _blob_masks(1, 128, 2)
        out = ALPHead()(fs, masks[:, 0].bool(), fq)
        self.assertEqual(out.dtype, torch.float64)
        self.assertEqual(tuple(out.shape), (2, 2, 16, 16))

    def test_bad_inputs(self):
        fs, fq, masks = torch.randn(2, 8, 16, 16), torch.randn(1, 8, 16, 16), _blob_masks(2, 128, 0)
        head = ALPHead()
        with self.assertRaisesRegex(ValueError, "channel mismatch"):
            head(fs, masks, torch.randn(1, 4, 16, 16))
        with self.assertRaisesRegex(ValueError, "one mask per shot"):
            head(fs, masks[:1], fq)
        with self.assertRaisesRegex(ValueError, "one mask per shot"):
            head(fs, masks.repeat(1, 2, 1, 1), fq)
        with self.assertRaises(ValueError):
            head(fs[0], masks, fq)
        with self.assertRaisesRegex(DataError, "within"):
            head(fs, masks * 2.0, fq)
        nan = masks.clone()
        nan[0, 0, 0, 0] = float("nan")
        with self.assertRaisesRegex(DataError, "finite"):
            head(fs, nan, fq)
        with self.assertRaises(ValueError):
            head(fs, masks, fq, window=0)


if __name__ == "__main__":
    unittest.main()
