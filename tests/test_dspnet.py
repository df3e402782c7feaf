# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.dspnet (dspnet.md §2-§5, §9): cross attention, FSPA, BCMA and the DSPNet head."""

from __future__ import annotations

import math
import unittest
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from parameterized import parameterized

from labelless.errors import ConfigError
from labelless.losses import prototype_alignment_loss
from labelless.networks.dspnet import (
    BCMA,
    BCMA_PRESETS,
    FSPA,
    DSPNetHead,
    SupportQueryAttention,
    bcma_hyperparameters,
    build_dspnet_segmentor,
    distance_transform,
    dspnet_param_groups,
    fspa_seeds,
    soft_cluster,
    support_query_attention,
)
from labelless.networks.fewshot import build_fewshot_segmentor
from labelless.networks.prototypes import ALPHead

try:
    from scipy.ndimage import distance_transform_edt

    HAS_SCIPY = True
except ImportError:  # pragma: no cover
    HAS_SCIPY = False


def _rect(size: int, r0: int, r1: int, c0: int, c1: int, shots: int = 1) -> torch.Tensor:
    m = torch.zeros(shots, 1, size, size)
    m[..., r0:r1, c0:c1] = 1.0
    return m


def _disk(size: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).float()


def _never_full_mask(size: int = 256, stride: int = 8) -> torch.Tensor:
    """Large FG block whose bilinear downsampling is 0.75 everywhere inside (never 1.0) while the nearest-neighbour
    samples (8i, 8j) are all 1: bilinear samples pixels 8i+3/8i+4, and every (8i+3, 8j+3) pixel is 0."""
    m = torch.zeros(1, 1, size, size)
    m[..., 32:224, 32:224] = 1.0
    m[..., 3::stride, 3::stride] = 0.0
    return m


# ---------------------------------------------------------------------------------------------------- §2
class TestCrossAttention(unittest.TestCase):
    def test_identical_distinct_features_sharp_temperature(self):
        # one-hot features: every position is distinct (cos 0 to the others); tau -> 0 picks the same position
        fs = torch.eye(16).reshape(16, 4, 4).unsqueeze(0) * 3.0
        out = support_query_attention(fs, fs.clone(), temperature=1e-3)
        torch.testing.assert_close(out[0, 0], 2.0 * fs[0])

    def test_hand_computed_two_positions(self):
        fs = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
        fq = torch.tensor([[2.0, 0.0], [0.0, 5.0]]).t().reshape(1, 2, 1, 2)  # query positions (2, 0) and (0, 5)
        w = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # cosines 1 and 0, tau = 1
        expected = torch.tensor([1.0, 0.0]) + w[0] * torch.tensor([2.0, 0.0]) + w[1] * torch.tensor([0.0, 5.0])
        torch.testing.assert_close(support_query_attention(fs, fq)[0, 0, :, 0, 0], expected)

    def test_weights_sum_to_one(self):
        # a constant query map is reproduced exactly whatever the support: the attention rows sum to 1
        fs = torch.randn(2, 6, 5, 5)
        v = torch.randn(6)
        fq = v[None, :, None, None].expand(3, 6, 4, 7).contiguous()
        out = support_query_attention(fs, fq, temperature=0.3)
        torch.testing.assert_close(out - fs.unsqueeze(0), v[None, None, :, None, None].expand(3, 2, 6, 5, 5))

    def test_different_sizes_equal_per_pair_loop(self):
        g = torch.Generator().manual_seed(0)
        fs, fq = torch.randn(2, 8, 6, 6, generator=g), torch.randn(3, 8, 4, 9, generator=g)
        out = SupportQueryAttention(temperature=0.5)(fs, fq)
        self.assertEqual(tuple(out.shape), (3, 2, 8, 6, 6))
        for b in range(3):
            for s in range(2):
                a = F.cosine_similarity(fs[s].reshape(8, -1, 1), fq[b].reshape(8, 1, -1), dim=0, eps=1e-5)
                ref = fs[s].reshape(8, -1) + fq[b].reshape(8, -1) @ torch.softmax(a / 0.5, dim=1).t()
                torch.testing.assert_close(out[b, s], ref.reshape(8, 6, 6))

    def test_bad_temperature(self):
        with self.assertRaises(ConfigError):
            SupportQueryAttention(temperature=0.0)
        with self.assertRaises(ValueError):
            support_query_attention(torch.randn(1, 4, 2, 2), torch.randn(1, 5, 2, 2))


# ---------------------------------------------------------------------------------------------------- §3.1
class TestSeeding(unittest.TestCase):
    def test_distance_transform_hand(self):
        m = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
        expected = torch.tensor([[0.0, 1, 4, 4], [1, 2, 2, 1], [4, 4, 1, 0]])
        torch.testing.assert_close(distance_transform(m, squared=True), expected)
        # no zero at all: scipy's virtual zero at (row -1, col 0)
        i, j = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
        torch.testing.assert_close(distance_transform(torch.ones(3, 4)), torch.sqrt((i + 1) ** 2 + j**2))

    @unittest.skipUnless(HAS_SCIPY, "scipy not installed")
    def test_distance_transform_matches_scipy(self):
        rng = np.random.default_rng(0)
        for _ in range(10):
            m = rng.random((13, 17)) < 0.8
            np.testing.assert_allclose(distance_transform(torch.from_numpy(m)).numpy(), distance_transform_edt(m), 1e-6)

    # (mask area on the grid, expected number of seeds): round half to even, at most 5
    @parameterized.expand([(149, 0), (150, 2), (249, 2), (250, 2), (251, 3), (350, 4), (900, 5)])
    def test_number_of_seeds(self, area, expected):
        m = torch.zeros(40, 40)
        m.view(-1)[:area] = 1.0  # full rows then a partial row
        seeds = fspa_seeds(m)
        self.assertEqual(tuple(seeds.shape), (expected, 2))

    def test_rectangle_seeds_hand(self):
        # a 10×15 rectangle (area 150 -> 2 seeds) fills its bounding box: first seed at the corner farthest from
        # scipy's virtual zero (bottom right), the second one farthest from it (top left)
        m = _rect(32, 5, 15, 3, 18)[0, 0]
        self.assertEqual(fspa_seeds(m).tolist(), [[14, 17], [5, 3]])

    def test_disk_seeds_distinct_inside(self):
        m = _disk(32, 15.5, 15.5, 10.0)  # area ≈ 314 -> 3 seeds
        seeds = fspa_seeds(m)
        self.assertEqual(seeds.shape[0], round(float(m.sum()) / 100))
        self.assertGreaterEqual(seeds.shape[0], 2)
        self.assertEqual(len({tuple(s) for s in seeds.tolist()}), seeds.shape[0])
        self.assertTrue(bool((m[seeds[:, 0], seeds[:, 1]] == 1).all()))
        # the first seed is the (first) centre-most cell of the disk
        d = distance_transform(m)
        self.assertEqual(float(d[seeds[0, 0], seeds[0, 1]]), float(d.max()))
        self.assertEqual(fspa_seeds(_disk(32, 15.5, 15.5, 6.0)).shape[0], 0)  # area ≈ 113 < 150: fallback

    @unittest.skipUnless(HAS_SCIPY, "scipy not installed")
    def test_seeds_match_reference_loop(self):
        # literal transcription of the reference seeding (scipy EDT, gaussian sigma 0.1 == identity)
        rng = np.random.default_rng(1)
        for t in range(12):
            m = rng.random((32, 32)) < 0.6
            m[: int(rng.integers(0, 12)), :] = False
            area = int(m.sum())
            n = min(round(area / 100), 5)
            expected = []
            if n > 1:
                rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
                roi = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(float)
                for _ in range(n):
                    k = np.unravel_index(np.argmax(distance_transform_edt(roi)), roi.shape)
                    expected.append([int(k[0] + rows[0]), int(k[1] + cols[0])])
                    roi[k] = 0
            self.assertEqual(fspa_seeds(torch.from_numpy(m)).tolist(), expected, f"mask {t}")


# ---------------------------------------------------------------------------------------------------- §3.2
class TestSoftCluster(unittest.TestCase):
    def test_one_iteration_hand(self):
        feats = torch.tensor([[[0.0, 10.0]]])  # C=1, h=1, w=2: cells (0,0) f=0 and (0,1) f=10
        roi = torch.ones(1, 2, dtype=torch.bool)
        seeds = torch.tensor([[0, 0], [0, 1]])
        e = math.exp(-math.sqrt(100 / 100 + 1 / 100))
        out = soft_cluster(feats, roi, seeds, iterations=1)
        torch.testing.assert_close(out, torch.tensor([[10 * e / (1 + e)], [10 / (1 + e)]]))
        torch.testing.assert_close(soft_cluster(feats, roi, seeds, iterations=0), torch.tensor([[0.0], [10.0]]))

    def test_separated_groups_give_group_features(self):
        feats = torch.zeros(3, 8, 8)
        feats[:, :, :4] = torch.tensor([1e4, 0.0, 0.0])[:, None, None]
        feats[:, :, 4:] = torch.tensor([0.0, -1e4, 2.0])[:, None, None]
        out = soft_cluster(feats, torch.ones(8, 8, dtype=torch.bool), torch.tensor([[2, 1], [5, 6]]))
        torch.testing.assert_close(out, torch.tensor([[1e4, 0.0, 0.0], [0.0, -1e4, 2.0]]))

    @parameterized.expand([(1,), (2,), (5,)])
    def test_constant_features_finite(self, n_seeds):
        feats = torch.full((4, 6, 6), 3.0, requires_grad=True)
        roi = torch.zeros(6, 6, dtype=torch.bool)
        roi[1:5, 2:6] = True
        seeds = torch.tensor([[0, 0], [5, 5], [2, 3], [1, 1], [4, 2]])[:n_seeds]
        out = soft_cluster(feats, roi, seeds)
        self.assertFalse(out.requires_grad)  # no gradient through the clustering
        torch.testing.assert_close(out, torch.full((n_seeds, 4), 3.0))

    def test_huge_distances_no_underflow_nan(self):
        # exp(-d) underflows for every cell here; the stable softmax still gives finite centres
        feats = torch.randn(4, 5, 5) * 1e5
        out = soft_cluster(feats, torch.ones(5, 5, dtype=torch.bool), torch.tensor([[0, 0], [4, 4]]))
        self.assertTrue(bool(torch.isfinite(out).all()))

    def test_empty_roi_raises(self):
        with self.assertRaises(ValueError):
            soft_cluster(torch.randn(2, 4, 4), torch.zeros(4, 4, dtype=torch.bool), torch.tensor([[0, 0], [1, 1]]))


# ---------------------------------------------------------------------------------------------------- §3.3-§3.4
def _literal_fspa(fs, fsu, m, ctr):
    """One shot, one query: §3.3 (ctr [J, C]) or §3.4 (ctr None), written with plain loops over positions."""
    c, h, w = fs.shape
    fs2, fsu2, m2 = fs.reshape(c, -1), fsu.reshape(c, -1), m.reshape(-1)
    if ctr is None:
        ctr = ((fsu2 * m2).sum(1) / (m2.sum() + 1e-5))[None]
    r = torch.zeros_like(fs2)
    for j in range(ctr.shape[0]):
        att = torch.softmax(torch.stack([fsu2[:, x] @ ctr[j] for x in range(h * w)]), 0)
        r += ctr[j][:, None] * att[None]
    return ((r + fs2) * m2).sum(1) / (m2.sum() + 1e-5)


class TestFSPA(unittest.TestCase):
    def test_fallback_math(self):
        g = torch.Generator().manual_seed(0)
        fs = torch.randn(1, 3, 4, 4, generator=g)
        fsu = fs + 0.5 * torch.randn(1, 1, 3, 4, 4, generator=g)
        m = torch.rand(1, 1, 4, 4, generator=g)
        fspa = FSPA()
        out = fspa(fs, m, fsu, seed_mask=None)
        torch.testing.assert_close(out[0], _literal_fspa(fs[0], fsu[0, 0], m[0, 0], None))
        self.assertEqual(fspa.last_info["clusters"], [0])

    def test_cluster_math_and_info(self):
        g = torch.Generator().manual_seed(1)
        fs = torch.randn(1, 4, 32, 32, generator=g)
        fsu = fs + torch.randn(2, 1, 4, 32, 32, generator=g)
        full = _rect(256, 40, 216, 24, 200)  # 22×22 cells on the grid -> area 484 -> 5 clusters (capped)
        m = F.interpolate(full, size=(32, 32), mode="bilinear", align_corners=False)
        fspa = FSPA()
        out = fspa(fs, m, fsu, seed_mask=full)
        self.assertEqual(fspa.last_info["clusters"], [5])
        ctr, n = fspa.centres(fs[0], m[0, 0], full[0, 0])
        self.assertEqual((tuple(ctr.shape), n), ((5, 4), 5))
        for b in range(2):
            torch.testing.assert_close(out[b], _literal_fspa(fs[0], fsu[b, 0], m[0, 0], ctr))

    def test_mask_never_full_uses_fallback_without_nan(self):
        full = _never_full_mask()
        m = F.interpolate(full, size=(32, 32), mode="bilinear", align_corners=False)
        self.assertLess(float(m.max()), 1.0)
        fspa = FSPA()
        out = fspa(torch.randn(1, 8, 32, 32), m, seed_mask=full)
        self.assertTrue(bool(torch.isfinite(out).all()))
        self.assertEqual(fspa.last_info, {"clusters": [0], "empty_roi": [0]})

    def test_shots_are_averaged(self):
        g = torch.Generator().manual_seed(2)
        fs = torch.randn(3, 4, 32, 32, generator=g)
        full = torch.cat([_rect(256, 40, 216, 24, 200), _rect(256, 0, 64, 0, 64), _rect(256, 80, 240, 8, 136)])
        m = F.interpolate(full, size=(32, 32), mode="bilinear", align_corners=False)
        fspa = FSPA()
        out = fspa(fs, m, seed_mask=full)
        singles = [fspa(fs[k : k + 1], m[k : k + 1], seed_mask=full[k : k + 1]) for k in range(3)]
        torch.testing.assert_close(out, torch.stack(singles).mean(0))
        fspa(fs, m, seed_mask=full)
        self.assertEqual(fspa.last_info["clusters"], [5, 0, 3])  # 484 cells, 64 cells (fallback), 16×20 = 320


# ---------------------------------------------------------------------------------------------------- §4
class TestBCMA(unittest.TestCase):
    def test_identity(self):
        bcma = BCMA(16, alpha=0.0, weights=(0.0, 1.0, 0.0))
        x = torch.randn(7, 16)
        torch.testing.assert_close(bcma(x), x, rtol=0, atol=0)

    def test_cal_init_and_size(self):
        bcma = BCMA(256, *BCMA_PRESETS[(1, "abdominal")])
        self.assertEqual(sum(p.numel() for p in bcma.parameters()), 65_536)
        cal = bcma.cal.detach()
        self.assertEqual(cal[0].tolist()[:3], [1.0, 0.0, 0.0])
        self.assertEqual(cal[255].tolist()[-3:], [0.0, 0.0, 1.0])
        torch.testing.assert_close(cal[100, 99:102], torch.tensor([0.2, 0.8, 0.2]))
        self.assertEqual(int((cal != 0).sum()), 2 + 3 * 254)

    @parameterized.expand([(key,) for key in BCMA_PRESETS])
    def test_constant_channel_smoothing(self, key):
        alpha, (w1, w2, w3) = BCMA_PRESETS[key]
        c = 12
        v = torch.tensor([1.0, -2.0, 0.5])
        x = v[:, None].expand(3, c).contiguous()  # each prototype constant over channels: G uniform, softmax = 1/c
        out = BCMA(c, alpha, (w1, w2, w3))(x)
        gain = 1.0 + alpha / c
        expected = v[:, None] * torch.full((c,), (w1 + w2 + w3) * gain)
        expected[:, 0] = expected[:, -1] = v * gain
        torch.testing.assert_close(out, expected)

    def test_mixing_matrix_literal(self):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(4, 3, generator=g)
        bcma = BCMA(3, alpha=0.5, weights=(0.1, 0.7, 0.3))
        gram = x.t() @ x
        soft = torch.softmax(gram, dim=1)
        cal = torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.7, 0.3], [0.0, 0.0, 1.0]])
        w = torch.ones(3, 3)
        for i in range(3):
            for j in range(3):
                if abs(i - j) <= 1:
                    w[i, j] += 0.5 * soft[i, j]
        w = w * cal
        torch.testing.assert_close(bcma.mixing_matrix(x), w)
        torch.testing.assert_close(bcma(x), (w @ x.t()).t())
        torch.testing.assert_close(bcma(x, alpha=0.0), x @ cal.t())

    def test_param_groups_and_gradients(self):
        bcma = BCMA(8, 0.2, (0.3, 0.6, 0.3))
        (group,) = bcma.param_groups(1e-3)
        self.assertIs(group["params"][0], bcma.cal)
        self.assertAlmostEqual(group["lr"], 1e-7)
        x = torch.randn(5, 8, requires_grad=True)
        bcma(x).square().sum().backward()
        self.assertGreater(float(bcma.cal.grad.abs().sum()), 0.0)
        self.assertGreater(float(x.grad.abs().sum()), 0.0)


class TestPresets(unittest.TestCase):
    @parameterized.expand(
        [
            ("chaos", 1, 0.3, (0.2, 0.8, 0.2)),
            ("synapse", 1, 0.3, (0.2, 0.8, 0.2)),
            ("cmr", 1, 0.3, (0.1, 0.9, 0.1)),
            ("phantom_cardiac", 1, 0.3, (0.1, 0.9, 0.1)),
            ("chaos", 2, 0.2, (0.3, 0.6, 0.3)),
            ("synapse", 2, 0.2, (0.3, 0.6, 0.3)),
        ]
    )
    def test_table(self, dataset, setting, alpha, weights):
        self.assertEqual(
            bcma_hyperparameters(dataset, setting), {"alpha": alpha, "alpha_bg": alpha, "weights": weights}
        )

    def test_overrides_and_errors(self):
        hp = bcma_hyperparameters("chaos", 2, alpha=0.5, alpha_bg=0.1, weights=[0.0, 1.0, 0.0])
        self.assertEqual(hp, {"alpha": 0.5, "alpha_bg": 0.1, "weights": (0.0, 1.0, 0.0)})
        self.assertEqual(bcma_hyperparameters("cmr", 2, alpha=0.1, weights=(0, 1, 0))["alpha"], 0.1)
        for args in [("cmr", 2), ("unknown", 1), ("chaos", 3)]:
            with self.assertRaises(ConfigError):
                bcma_hyperparameters(*args)
        with self.assertRaises(ConfigError):
            bcma_hyperparameters("chaos", 1, weights=(1.0, 2.0))


# ---------------------------------------------------------------------------------------------------- §5 head
def _masks(shots: int, size: int, kind: str) -> torch.Tensor:
    if kind == "big":  # local FG mode, clustering on
        return torch.cat([_rect(size, size // 8, 7 * size // 8, size // 16, 3 * size // 4) for _ in range(shots)])
    if kind == "small":  # global FG mode
        return torch.cat([_rect(size, size // 4, size // 4 + size // 16, size // 2, size // 2 + size // 8)] * shots)
    if kind == "all":  # BG fallback
        return torch.ones(shots, 1, size, size)
    raise ValueError(kind)


# (shots, queries, window, mask kind, query grid differs)
HEAD_CASES = [
    (1, 1, 4, "big", False),
    (1, 3, 2, "big", False),
    (3, 1, 4, "big", False),
    (3, 2, 2, "small", False),
    (2, 2, 4, "all", False),
    (1, 2, 2, "big", True),
]


class TestDSPNetHead(unittest.TestCase):
    @parameterized.expand(HEAD_CASES)
    def test_all_off_is_alp(self, shots, queries, window, kind, other_grid):
        g = torch.Generator().manual_seed(4)
        fs = torch.randn(shots, 16, 32, 32, generator=g)
        fq = torch.randn(queries, 16, 24 if other_grid else 32, 32, generator=g)
        masks = _masks(shots, 256, kind)
        head = DSPNetHead(16, use_fspa=False, use_bcma=False, use_cross_attention=False)
        self.assertEqual(len(list(head.parameters())), 0)
        self.assertTrue(torch.equal(head(fs, masks, fq, window=window), ALPHead()(fs, masks, fq, window=window)))
        info = dict(head.last_info)
        self.assertEqual((info.pop("fspa_clusters"), info.pop("fspa_empty_roi")), ([], []))
        alp = ALPHead()
        alp(fs, masks, fq, window=window)
        self.assertEqual(info, alp.last_info)

    def test_all_off_is_alp_in_par(self):
        g = torch.Generator().manual_seed(5)
        fq, fs = torch.randn(1, 16, 32, 32, generator=g), torch.randn(3, 16, 32, 32, generator=g)
        label = torch.randint(0, 2, (3, 256, 256), generator=g)
        for pred_fg in (True, False):
            low = torch.randn(1, 2, 32, 32, generator=g)
            low[:, 1] = low[:, 1] if pred_fg else -1e3  # second round: empty predicted FG
            head = DSPNetHead(16, use_fspa=False, use_bcma=False, use_cross_attention=False)
            a = prototype_alignment_loss(low, fq, fs, label, head=head)
            b = prototype_alignment_loss(low, fq, fs, label, head=ALPHead())
            self.assertTrue(torch.equal(a, b))

    def test_bcma_identity_in_head_is_alp(self):
        g = torch.Generator().manual_seed(6)
        fs, fq = torch.randn(2, 16, 32, 32, generator=g), torch.randn(2, 16, 32, 32, generator=g)
        masks = _masks(2, 256, "big")
        head = DSPNetHead(16, use_fspa=False, bcma_alpha=0.0, bcma_weights=(0.0, 1.0, 0.0))
        torch.testing.assert_close(head(fs, masks, fq, window=2), ALPHead()(fs, masks, fq, window=2))
        self.assertEqual(head.param_groups(1.0)[0]["params"], [head.bcma.cal])

    @parameterized.expand(HEAD_CASES)
    def test_full_head_shapes_and_batches(self, shots, queries, window, kind, other_grid):
        g = torch.Generator().manual_seed(7)
        fs = torch.randn(shots, 16, 32, 32, generator=g)
        fq = torch.randn(queries, 16, 24 if other_grid else 32, 32, generator=g)
        masks = _masks(shots, 256, kind)
        head = DSPNetHead(16, bcma_alpha=0.2, bcma_alpha_bg=0.4)
        out = head(fs, masks, fq, window=window, output_size=(64, 64))
        self.assertEqual(tuple(out.shape), (queries, 2, 64, 64))
        self.assertTrue(bool(torch.isfinite(out).all()))
        info = head.last_info
        self.assertEqual(len(info["fspa_clusters"]), shots)
        self.assertEqual(info["fg_local"], kind != "small")
        self.assertEqual(info["bg_fallback"], kind == "all")
        self.assertEqual(all(n >= 2 for n in info["fspa_clusters"]), kind in ("big", "all"))
        # a batch of queries equals the single-query calls (the FSPA prototype depends on the query)
        singles = torch.cat([head(fs, masks, fq[b : b + 1], window=window, output_size=64) for b in range(queries)])
        torch.testing.assert_close(out, singles, atol=1e-5, rtol=1e-5)

    def test_fg_prototype_literal(self):
        # global FG mode, 1 shot, 1 query: the FG score is 20·cos(F_q, FSPA prototype) with F_su from §2
        g = torch.Generator().manual_seed(8)
        fs, fq = torch.randn(1, 8, 32, 32, generator=g), torch.randn(1, 8, 32, 32, generator=g)
        masks = _masks(1, 256, "small")
        head = DSPNetHead(8)
        out = head(fs, masks, fq, window=4)
        m = F.interpolate(masks, size=(32, 32), mode="bilinear", align_corners=False)
        fsu = support_query_attention(fs, fq)[0, 0]
        proto = _literal_fspa(fs[0], fsu, m[0, 0], None)
        expected = 20.0 * F.cosine_similarity(fq, proto[None, :, None, None], dim=1, eps=1e-4)
        torch.testing.assert_close(out[:, 1], expected, atol=1e-4, rtol=1e-4)

    def test_cluster_switch(self):
        g = torch.Generator().manual_seed(9)
        fs, fq = torch.randn(1, 8, 32, 32, generator=g), torch.randn(1, 8, 32, 32, generator=g)
        full = _masks(1, 256, "big")
        grid = F.interpolate(full, size=(32, 32), mode="nearest")
        head = DSPNetHead(8)
        head(fs, full, fq)
        self.assertGreaterEqual(min(head.last_info["fspa_clusters"]), 2)
        head(fs, grid, fq)  # mask on the feature grid (PAR): fallback
        self.assertEqual(head.last_info["fspa_clusters"], [0])
        head(fs, grid, fq, cluster=True)
        self.assertGreaterEqual(min(head.last_info["fspa_clusters"]), 2)
        head.reset_counters()
        head(fs, full, fq, cluster=False)
        self.assertEqual((head.last_info["fspa_clusters"], head.fspa_fallback_count), ([0], 1))

    def test_mask_never_full_no_nan(self):
        head = DSPNetHead(8)
        out = head(torch.randn(1, 8, 32, 32), _never_full_mask(), torch.randn(2, 8, 32, 32), window=2)
        self.assertTrue(bool(torch.isfinite(out).all()))
        self.assertEqual((head.last_info["fspa_clusters"], head.last_info["fspa_empty_roi"]), ([0], [0]))

    def test_par_with_head_gradients(self):
        g = torch.Generator().manual_seed(10)
        fs = torch.randn(2, 8, 32, 32, generator=g).requires_grad_()
        fq = torch.randn(1, 8, 32, 32, generator=g).requires_grad_()
        head = DSPNetHead(8)
        logits = head(fs, _masks(2, 256, "big"), fq, window=4)
        label = torch.randint(0, 2, (2, 256, 256), generator=g)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            par = prototype_alignment_loss(logits, fq, fs, label, head=head)
        self.assertEqual(head.last_info["fspa_clusters"], [0])  # PAR: masks on the grid -> fallback
        (logits.square().mean() + par).backward()
        for t in (fs.grad, fq.grad, head.bcma.cal.grad):
            self.assertGreater(float(t.abs().sum()), 0.0)

    def test_par_empty_predicted_fg_full_head(self):
        g = torch.Generator().manual_seed(11)
        fs = torch.randn(2, 8, 32, 32, generator=g).requires_grad_()
        fq = torch.randn(1, 8, 32, 32, generator=g).requires_grad_()
        low = torch.zeros(1, 2, 32, 32)
        low[:, 0] = 1.0  # nothing predicted as FG: zero FSPA prototype, FG score 0 (ssl_alpnet.md §4.2 parity)
        head = DSPNetHead(8)
        par = prototype_alignment_loss(low, fq, fs, torch.randint(0, 2, (2, 64, 64), generator=g), head=head)
        self.assertTrue(bool(torch.isfinite(par)))
        self.assertEqual((head.last_info["fspa_clusters"], head.last_info["empty_fg_shots"]), ([0], [0]))
        par.backward()
        self.assertTrue(bool(torch.isfinite(fs.grad).all()) and bool(torch.isfinite(fq.grad).all()))

    def test_dtype_and_device_follow_input(self):
        head = DSPNetHead(8).double()
        fs, fq = torch.randn(1, 8, 16, 16, dtype=torch.float64), torch.randn(2, 8, 16, 16, dtype=torch.float64)
        out = head(fs, _masks(1, 128, "big"), fq)
        self.assertEqual((out.dtype, out.device.type), (torch.float64, "cpu"))
        if torch.cuda.is_available():
            head = DSPNetHead(8).cuda()
            out = head(torch.randn(1, 8, 32, 32).cuda(), _masks(1, 256, "big").cuda(), torch.randn(2, 8, 32, 32).cuda())
            self.assertEqual(out.device.type, "cuda")
            self.assertGreaterEqual(min(head.last_info["fspa_clusters"]), 2)

    def test_channel_mismatch(self):
        with self.assertRaises(ValueError):
            DSPNetHead(16)(torch.randn(1, 8, 32, 32), _masks(1, 256, "big"), torch.randn(1, 8, 32, 32))


# ---------------------------------------------------------------------------------------------------- builder
class TestBuilder(unittest.TestCase):
    def test_build_param_groups_forward(self):
        torch.manual_seed(0)
        kw = {"channels": (8, 16, 32), "out_channels": 32}
        model = build_dspnet_segmentor("tiny", dataset="chaos", setting=2, **kw)
        head = model.head
        self.assertIsInstance(head, DSPNetHead)
        self.assertEqual((head.bcma_alpha, head.bcma.weights), (0.2, (0.3, 0.6, 0.3)))
        n_base = sum(p.numel() for p in build_fewshot_segmentor("tiny", **kw).parameters())
        self.assertEqual(sum(p.numel() for p in model.parameters()), n_base + 32 * 32)
        enc_group, head_group = dspnet_param_groups(model, 1e-3)
        self.assertEqual(head_group["params"], [head.bcma.cal])
        self.assertAlmostEqual(head_group["lr"], 1e-7)
        self.assertEqual(sum(p.numel() for p in enc_group["params"]), n_base)
        sup, qry = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
        masks = _rect(64, 8, 56, 8, 48)
        out = model(sup, masks, qry, return_aux=True)
        self.assertEqual(tuple(out.logits.shape), (1, 2, 64, 64))
        model.eval()
        with torch.no_grad():
            self.assertEqual(tuple(model(sup, masks, torch.randn(3, 3, 64, 64)).shape), (3, 2, 64, 64))
        self.assertEqual(build_dspnet_segmentor("tiny", bcma_alpha=0.0, **kw).head.bcma_alpha_bg, 0.0)
        with self.assertRaises(ConfigError):
            build_dspnet_segmentor("tiny", dataset="chaos", **kw)
        with self.assertRaises(ConfigError):
            build_dspnet_segmentor("tiny", dataset="cmr", setting=2, **kw)


if __name__ == "__main__":
    unittest.main()
