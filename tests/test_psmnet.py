# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.psmnet (psmnet.md §2-§4, §6, §8): MCAM blocks, PSM splitting and the PSMNet head."""

from __future__ import annotations

import unittest
import warnings

import torch
import torch.nn.functional as F
from parameterized import parameterized

from labelless.errors import ConfigError, DataError
from labelless.losses import prototype_alignment_loss
from labelless.networks.fewshot import FewShotSegmentor, build_fewshot_segmentor
from labelless.networks.prototypes import ALPHead, masked_average_pooling
from labelless.networks.psmnet import (
    MCAM,
    CrossNonLocalBlock,
    PSMNetHead,
    PSMSplit,
    build_psmnet_segmentor,
    psm_split,
)

TINY = {"channels": (8, 16, 32), "out_channels": 32}


def _rect(size: int | tuple[int, int], r0: int, r1: int, c0: int, c1: int, shots: int = 1) -> torch.Tensor:
    hw = (size, size) if isinstance(size, int) else size
    m = torch.zeros(shots, 1, *hw)
    m[..., r0:r1, c0:c1] = 1.0
    return m


def _masks(shots: int, size: int, kind: str) -> torch.Tensor:
    if kind == "big":  # local FG mode
        return torch.cat([_rect(size, size // 8, 7 * size // 8, size // 16, 3 * size // 4) for _ in range(shots)])
    if kind == "small":  # global FG mode
        return torch.cat([_rect(size, size // 4, size // 4 + size // 16, size // 2, size // 2 + size // 8)] * shots)
    if kind == "all":  # no BG window (ALP fallback)
        return torch.ones(shots, 1, size, size)
    raise ValueError(kind)


def _randomize_w_out(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in module.modules():
            if isinstance(block, CrossNonLocalBlock):
                block.w_out.weight.copy_(torch.randn(block.w_out.weight.shape, generator=g) * 0.1)
                block.w_out.bias.copy_(torch.randn(block.w_out.bias.shape, generator=g) * 0.1)


def _literal_block(block: CrossNonLocalBlock, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§2.1 written literally: f[i, j] = <θ(X)_i, φ(Y)_j> / N_y, Z[:, i] = X[:, i] + W_out(Σ_j f[i, j] V[:, j])."""
    out = []
    for b in range(x.shape[0]):
        yb = y[b if y.shape[0] > 1 else 0 : (b if y.shape[0] > 1 else 0) + 1]
        q = block.theta(x[b : b + 1]).flatten(2)[0]  # [C, Nx]
        k = block.phi(yb).flatten(2)[0]  # [C, Ny]
        v = block.g(yb).flatten(2)[0]
        f = q.t() @ k / k.shape[1]  # [Nx, Ny]
        agg = torch.stack([(f[i][None, :] * v).sum(1) for i in range(q.shape[1])], dim=1)  # [C, Nx]
        out.append(x[b] + block.w_out(agg.reshape(1, *x.shape[1:]))[0])
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------- §2.1 block
# (spatial_dims, x shape, y shape)
BLOCK_CASES = [
    (2, (2, 8, 5, 7), (1, 8, 3, 4)),
    (2, (2, 8, 5, 7), (2, 8, 6, 6)),
    (2, (1, 8, 4, 4), (1, 8, 4, 4)),
    (3, (2, 4, 2, 3, 2), (1, 4, 3, 2, 2)),
]


class TestCrossNonLocalBlock(unittest.TestCase):
    @parameterized.expand(BLOCK_CASES)
    def test_identity_at_init(self, dims, xs, ys):
        torch.manual_seed(0)
        block = CrossNonLocalBlock(dims, xs[1])
        self.assertEqual(float((block.w_out.weight.abs().sum() + block.w_out.bias.abs().sum()).detach()), 0.0)
        x, y = torch.randn(xs), torch.randn(ys)
        self.assertTrue(torch.equal(block(x, y), x))

    @parameterized.expand(BLOCK_CASES)
    def test_literal_attention(self, dims, xs, ys):
        torch.manual_seed(1)
        block = CrossNonLocalBlock(dims, xs[1])
        _randomize_w_out(block)
        x, y = torch.randn(xs), torch.randn(ys)
        out = block(x, y)
        self.assertEqual(tuple(out.shape), xs)
        self.assertFalse(torch.allclose(out, x))
        torch.testing.assert_close(out, _literal_block(block, x, y), atol=1e-5, rtol=1e-4)
        n_y = torch.Size(ys[2:]).numel()
        f = block.affinity(x, y)
        self.assertEqual(tuple(f.shape), (xs[0], torch.Size(xs[2:]).numel(), n_y))

    def test_query_indexed(self):
        # the output at a query position depends on that query position only (plus the guidance), never on others
        torch.manual_seed(2)
        block = CrossNonLocalBlock(2, 6)
        _randomize_w_out(block)
        x, y = torch.randn(1, 6, 4, 5), torch.randn(1, 6, 3, 3)
        x2 = x.clone()
        x2[..., 0, 0] += 5.0
        d = (block(x2, y) - block(x, y)).abs().sum(1)[0]
        self.assertGreater(float(d[0, 0]), 0.0)
        self.assertEqual(float(d.flatten()[1:].abs().max()), 0.0)

    def test_parameter_count(self):
        self.assertEqual(sum(p.numel() for p in CrossNonLocalBlock(2, 256).parameters()), 263_168)
        self.assertEqual(sum(p.numel() for p in MCAM(2, 256).parameters()), 789_504)

    def test_bad_inputs(self):
        block = CrossNonLocalBlock(2, 4)
        with self.assertRaises(ValueError):
            block(torch.randn(1, 5, 3, 3), torch.randn(1, 4, 3, 3))
        with self.assertRaises(ValueError):
            block(torch.randn(3, 4, 3, 3), torch.randn(2, 4, 3, 3))
        with self.assertRaises(ValueError):
            block(torch.randn(1, 4, 3), torch.randn(1, 4, 3, 3))
        with self.assertRaises(ConfigError):
            CrossNonLocalBlock(2, 0)


# ---------------------------------------------------------------------------------------------------- §2 MCAM
class TestMCAM(unittest.TestCase):
    @parameterized.expand([(1, 2, (6, 6), (6, 6)), (3, 1, (6, 6), (4, 9)), (2, 3, (5, 8), (7, 3))])
    def test_identity_at_init_any_grids(self, shots, queries, s_grid, q_grid):
        torch.manual_seed(3)
        mcam = MCAM(2, 8)
        fs, fq = torch.randn(shots, 8, *s_grid), torch.randn(queries, 8, *q_grid)
        m = (torch.rand(shots, 1, *s_grid) > 0.5).float()
        g = masked_average_pooling(fs, m)
        self.assertTrue(torch.equal(mcam(fq, fs, m, g, torch.randn(4, 8)), fq))
        _randomize_w_out(mcam)
        out = mcam(fq, fs, m, g, torch.randn(4, 8))
        self.assertEqual(tuple(out.shape), (queries, 8, *q_grid))
        self.assertFalse(torch.allclose(out, fq))

    def test_guidance_literal(self):
        c = 3
        fs = torch.zeros(1, c, 2, 2)
        fs[0, :, 0, 0] = torch.tensor([1.0, 0.1, 0.0])  # closest to p0
        fs[0, :, 0, 1] = torch.tensor([0.0, 1.0, 0.2])  # closest to p1
        fs[0, :, 1, 0] = torch.tensor([0.2, 0.0, 1.0])  # closest to p2, outside the mask
        fs[0, :, 1, 1] = torch.tensor([0.9, 0.0, 0.3])  # closest to p0
        m = torch.tensor([[1.0, 0.5], [0.0, 1.0]]).reshape(1, 1, 2, 2)
        protos = torch.eye(c) * 2.0
        g = torch.tensor([[1.0, 2.0, 3.0]])
        y1, y2, y3 = MCAM(2, c).guidance(fs, m, g, protos)
        torch.testing.assert_close(y1, g[0][None, :, None, None] * m)
        expected2 = torch.stack([protos[0] * 1.0, protos[1] * 0.5, protos[2] * 0.0, protos[0] * 1.0], dim=1)
        torch.testing.assert_close(y2, expected2.reshape(1, c, 2, 2))
        torch.testing.assert_close(y3, fs * m)

    def test_shots_concatenate_positions(self):
        torch.manual_seed(4)
        mcam = MCAM(2, 6)
        _randomize_w_out(mcam)
        fs, fq = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 5, 5)
        m = (torch.rand(2, 1, 4, 4) > 0.3).float()
        g, protos = masked_average_pooling(fs, m), torch.randn(3, 6)
        ys = mcam.guidance(fs, m, g, protos)
        for y, y_single in zip(ys, mcam.guidance(fs[:1], m[:1], g[:1], protos)):
            self.assertEqual(tuple(y.shape), (1, 6, 4, 8))
            torch.testing.assert_close(y[..., :4], y_single)
        # the rule is "one set of S·h·w guidance positions": any layout of the same positions gives the same output
        out = mcam(fq, fs, m, g, protos)
        x = fq
        for block, y in zip(mcam.blocks, ys):
            x = block(x, torch.cat([y[..., :4], y[..., 4:]], dim=-2))  # stacked along rows instead of columns
        torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
        # the sum over positions is divided by N_y: a duplicated shot changes nothing
        dup = mcam(fq, torch.cat([fs[:1], fs[:1]]), torch.cat([m[:1], m[:1]]), g[:1], protos)
        torch.testing.assert_close(dup, mcam(fq, fs[:1], m[:1], g[:1], protos), atol=1e-5, rtol=1e-5)

    def test_gradients(self):
        torch.manual_seed(5)
        mcam = MCAM(2, 6)
        fs = torch.randn(1, 6, 4, 4, requires_grad=True)
        fq = torch.randn(1, 6, 4, 4, requires_grad=True)
        protos = torch.randn(3, 6, requires_grad=True)
        m = _rect(4, 0, 3, 0, 4)
        mcam(fq, fs, m, masked_average_pooling(fs, m), protos).square().sum().backward()
        # at initialisation only W_out (and the query) receives a gradient: the other convs sit behind W_out = 0
        for block in mcam.blocks:
            self.assertGreater(float(block.w_out.weight.grad.abs().sum()), 0.0)
        mcam.zero_grad()
        fs.grad = fq.grad = protos.grad = None
        _randomize_w_out(mcam)
        mcam(fq, fs, m, masked_average_pooling(fs, m), protos).square().sum().backward()
        for name, p in mcam.named_parameters():
            self.assertGreater(float(p.grad.abs().sum()), 0.0, name)
        for t in (fs, fq, protos):  # the argmax index is constant, the selected prototype values are not
            self.assertGreater(float(t.grad.abs().sum()), 0.0)

    def test_bad_inputs(self):
        mcam = MCAM(2, 4)
        fs, fq, m = torch.randn(2, 4, 3, 3), torch.randn(1, 4, 3, 3), torch.ones(2, 1, 3, 3)
        with self.assertRaises(ValueError):
            mcam(fq, fs, m, torch.randn(2, 4), torch.zeros(0, 4))
        with self.assertRaises(ValueError):
            mcam(fq, fs, torch.ones(1, 1, 3, 3), torch.randn(2, 4), torch.randn(2, 4))
        with self.assertRaises(ValueError):
            mcam(fq, fs, m, torch.randn(3, 4), torch.randn(2, 4))


# ---------------------------------------------------------------------------------------------------- §3 PSM
def _two_part_scene(b_columns: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """8×8 grid, C=4: BG (columns 0-3) = e0; FG part a (columns 4 to 7 − b_columns) = e1; FG part b (the last
    ``b_columns`` columns) resembles the BG."""
    bg_vec = torch.tensor([1.0, 0.0, 0.0, 0.0])
    a = torch.tensor([0.0, 1.0, 0.0, 0.0])
    b = torch.tensor([0.9, 0.1, 0.3, 0.0])
    feats = torch.zeros(4, 8, 8)
    feats[:, :, :4] = bg_vec[:, None, None]
    feats[:, :, 4 : 8 - b_columns] = a[:, None, None]
    feats[:, :, 8 - b_columns :] = b[:, None, None]
    m_fg = _rect(8, 0, 8, 4, 8)[0]  # [1, 8, 8]
    return feats, m_fg, a, b


class TestPSMSplit(unittest.TestCase):
    def test_depth_zero_is_global(self):
        g = torch.Generator().manual_seed(6)
        fs, m = torch.randn(5, 6, 6, generator=g), torch.rand(1, 6, 6, generator=g)
        out = psm_split(fs, m, torch.randn(5, generator=g), depth=0, min_mass=0.0)
        self.assertEqual(tuple(out.shape), (1, 5))
        self.assertTrue(torch.equal(out, masked_average_pooling(fs[None], m[None])))

    def test_constructed_children_are_a_and_b(self):
        feats, m_fg, a, b = _two_part_scene()
        g_bg = masked_average_pooling(feats[None], (1.0 - m_fg)[None])[0]
        res = psm_split(feats, m_fg, g_bg, depth=1, return_masks=True)
        self.assertIsInstance(res, PSMSplit)
        self.assertEqual(tuple(res.prototypes.shape), (3, 4))
        self.assertEqual(res.parents, [-1, 0, 0])
        torch.testing.assert_close(res.prototypes[0], (a + b) / 2)
        torch.testing.assert_close(res.prototypes[1], a)  # segmented: resembles the FG prototype
        torch.testing.assert_close(res.prototypes[2], b)  # unsegmented: resembles the BG
        self.assertTrue(torch.equal(res.masks[1], _rect(8, 0, 8, 4, 6)[0]))
        self.assertTrue(torch.equal(res.masks[2], _rect(8, 0, 8, 6, 8)[0]))
        # deeper: regions with constant features cannot split again
        self.assertEqual(psm_split(feats, m_fg, g_bg, depth=3).shape[0], 3)
        # a threshold above every δ leaves nothing "segmented": no split
        self.assertEqual(psm_split(feats, m_fg, g_bg, depth=1, tau=2.0).shape[0], 1)

    def test_sub_masks_partition_parent(self):
        g = torch.Generator().manual_seed(7)
        fs = torch.randn(8, 12, 12, generator=g)
        m = torch.rand(1, 12, 12, generator=g) * (torch.rand(1, 12, 12, generator=g) > 0.2)
        res = psm_split(fs, m, torch.randn(8, generator=g), depth=3, min_mass=0.0, return_masks=True)
        self.assertGreater(len(res.parents), 3)
        self.assertTrue(torch.equal(res.masks[0], m))
        for i, mk in enumerate(res.masks):
            self.assertFalse(mk.requires_grad)
            torch.testing.assert_close(res.prototypes[i], masked_average_pooling(fs[None], mk[None])[0])
            kids = [j for j, p in enumerate(res.parents) if p == i]
            self.assertIn(len(kids), (0, 2))
            if kids:
                seg, uns = res.masks[kids[0]], res.masks[kids[1]]
                self.assertEqual(kids[0], i + 1)  # depth-first: the segmented child follows its parent
                self.assertTrue(torch.equal(seg + uns, mk))
                self.assertEqual(float((seg * uns).abs().sum()), 0.0)
                self.assertGreater(float(seg.sum()), 0.0)
                self.assertGreater(float(uns.sum()), 0.0)

    def test_min_mass_stops_splitting(self):
        g = torch.Generator().manual_seed(8)
        fs = torch.randn(6, 10, 10, generator=g)
        other = torch.randn(6, generator=g)
        feats, m_fg, _, _ = _two_part_scene(b_columns=1)  # FG mass 32: part a 24 cells, part b 8 cells
        g_bg = masked_average_pooling(feats[None], (1.0 - m_fg)[None])[0]
        self.assertEqual(psm_split(feats, m_fg, g_bg, depth=2, min_mass=8.0).shape[0], 3)
        self.assertEqual(psm_split(feats, m_fg, g_bg, depth=2, min_mass=8.5).shape[0], 1)  # part b too small
        self.assertEqual(psm_split(feats, m_fg, g_bg, depth=2, min_mass=16.5).shape[0], 1)  # mass 32 < 2 · 16.5
        big = _rect(10, 0, 10, 0, 10)[0]
        res = psm_split(fs, big, other, depth=4, min_mass=10.0, return_masks=True)
        self.assertTrue(all(float(mk.sum()) >= 10.0 for mk in res.masks))
        self.assertGreater(len(res.masks), 1)

    @parameterized.expand([(d, mm, seed) for d in range(4) for mm in (0.0, 2.0) for seed in (0, 1)])
    def test_count_bound(self, depth, min_mass, seed):
        g = torch.Generator().manual_seed(seed)
        fs = torch.randn(4, 16, 16, generator=g)
        m = torch.rand(1, 16, 16, generator=g)
        n = psm_split(fs, m, torch.randn(4, generator=g), depth=depth, min_mass=min_mass).shape[0]
        self.assertLessEqual(n, 2 ** (depth + 1) - 1)
        self.assertGreaterEqual(n, 1)

    def test_gradients_and_empty_mask(self):
        fs = torch.randn(1, 4, 8, 8, requires_grad=True)
        mask = torch.rand(1, 8, 8, requires_grad=True)
        psm_split(fs, mask, torch.randn(4), depth=2, min_mass=0.0).sum().backward()
        self.assertGreater(float(fs.grad.abs().sum()), 0.0)
        self.assertIsNone(mask.grad)  # masks are constants
        out = psm_split(fs, torch.zeros(8, 8), torch.randn(4), depth=2, min_mass=0.0)
        self.assertEqual(tuple(out.shape), (1, 4))
        self.assertEqual(float(out.abs().sum()), 0.0)

    def test_bad_inputs(self):
        fs, m, o = torch.randn(4, 6, 6), torch.ones(1, 6, 6), torch.randn(4)
        for kwargs in ({"depth": -1}, {"depth": 1.5}, {"min_mass": -1.0}, {"tau": float("nan")}):
            with self.assertRaises(ConfigError):
                psm_split(fs, m, o, **kwargs)
        with self.assertRaises(DataError):
            psm_split(fs, torch.ones(1, 5, 6), o)
        with self.assertRaises(DataError):
            psm_split(fs, m * 2.0, o)
        with self.assertRaises(DataError):
            psm_split(fs, m, torch.randn(3))


# ---------------------------------------------------------------------------------------------------- head
# (shots, queries, window, mask kind, query grid differs)
HEAD_CASES = [
    (1, 1, 4, "big", False),
    (1, 3, 2, "big", False),
    (3, 1, 4, "big", False),
    (3, 2, 2, "small", False),
    (2, 2, 4, "all", False),
    (1, 2, 2, "big", True),
]


class TestPSMNetHead(unittest.TestCase):
    @parameterized.expand(HEAD_CASES)
    def test_all_off_is_alp(self, shots, queries, window, kind, other_grid):
        g = torch.Generator().manual_seed(9)
        fs = torch.randn(shots, 16, 32, 32, generator=g)
        fq = torch.randn(queries, 16, 24 if other_grid else 32, 32, generator=g)
        masks = _masks(shots, 256, kind)
        head = PSMNetHead(16, use_psm=False, use_mcam=False, psm_with_local=True)
        self.assertEqual(len(list(head.parameters())), 0)
        alp = ALPHead()
        self.assertTrue(torch.equal(head(fs, masks, fq, window=window), alp(fs, masks, fq, window=window)))
        info = head.last_info
        self.assertEqual({k: info[k] for k in alp.last_info}, alp.last_info)

    @parameterized.expand(HEAD_CASES)
    def test_full_head_shapes_batches_counts(self, shots, queries, window, kind, other_grid):
        g = torch.Generator().manual_seed(10)
        fs = torch.randn(shots, 16, 32, 32, generator=g)
        fq = torch.randn(queries, 16, 24 if other_grid else 32, 32, generator=g)
        masks = _masks(shots, 256, kind)
        head = PSMNetHead(16, allow_empty_fg=True)
        _randomize_w_out(head)
        out = head(fs, masks, fq, window=window, output_size=(64, 48))
        self.assertEqual(tuple(out.shape), (queries, 2, 64, 48))
        self.assertTrue(bool(torch.isfinite(out).all()))
        info = dict(head.last_info)
        self.assertEqual((len(info["n_fg_psm"]), len(info["n_bg_psm"])), (shots, shots))
        self.assertTrue(all(1 <= n <= 7 for n in info["n_fg_psm"] + info["n_bg_psm"]))
        self.assertEqual(info["n_fg_prototypes"], info["n_fg_local"] + sum(info["n_fg_psm"]))
        self.assertEqual(info["n_bg_prototypes"], info["n_bg_local"] + sum(info["n_bg_psm"]))
        self.assertEqual(info["fg_local"], kind != "small")
        self.assertFalse(info["bg_fallback"])
        if kind == "all":  # BG mask empty: no BG local window, the (zero) root remains, nothing to split
            self.assertEqual((info["n_bg_local"], info["n_bg_psm"]), (0, [1] * shots))
        else:
            self.assertGreater(max(info["n_fg_psm"]), 1)
        # a batch of queries equals the single-query calls
        singles = torch.cat(
            [head(fs, masks, fq[b : b + 1], window=window, output_size=(64, 48)) for b in range(queries)]
        )
        torch.testing.assert_close(out, singles, atol=1e-5, rtol=1e-5)

    def test_depth_zero_global_literal(self):
        # PSM depth 0, no local, no MCAM, 1 shot: BG and FG are the plain 20·cos with the global prototypes
        g = torch.Generator().manual_seed(11)
        fs, fq = torch.randn(1, 8, 16, 16, generator=g), torch.randn(2, 8, 16, 16, generator=g)
        masks = _masks(1, 128, "big")
        head = PSMNetHead(8, psm_depth=0, psm_with_local=False, use_mcam=False)
        out = head(fs, masks, fq)
        m = F.interpolate(masks, size=(16, 16), mode="bilinear", align_corners=False)
        for ch, mk in ((0, 1.0 - m), (1, m)):
            proto = (fs[0] * mk[0]).sum((1, 2)) / (mk.sum() + 1e-5)
            expected = 20.0 * F.cosine_similarity(fq, proto[None, :, None, None], dim=1, eps=1e-4)
            torch.testing.assert_close(out[:, ch], expected, atol=1e-4, rtol=1e-4)
        self.assertEqual((head.last_info["n_fg_psm"], head.last_info["n_bg_prototypes"]), ([1], 1))

    def test_switches(self):
        g = torch.Generator().manual_seed(12)
        fs, fq = torch.randn(2, 8, 16, 16, generator=g), torch.randn(1, 8, 16, 16, generator=g)
        masks = _masks(2, 128, "big")
        head = PSMNetHead(8, psm_on_background=False, psm_with_local=False)
        head(fs, masks, fq)
        self.assertEqual((head.last_info["n_bg_psm"], head.last_info["n_bg_prototypes"]), ([1, 1], 2))
        self.assertEqual((head.last_info["n_fg_local"], head.last_info["fg_local"]), (0, False))
        # untrained MCAM is the identity: the head gives the same logits with and without it
        with_mcam = PSMNetHead(8)(fs, masks, fq, window=2)
        self.assertTrue(torch.equal(with_mcam, PSMNetHead(8, use_mcam=False)(fs, masks, fq, window=2)))
        self.assertIsNone(PSMNetHead(8, use_mcam=False).mcam)
        # MCAM-only ablation: ALP prototype sets, refined query
        ablation = PSMNetHead(8, use_psm=False)
        _randomize_w_out(ablation)
        out = ablation(fs, masks, fq, window=2)
        self.assertEqual(ablation.last_info["n_fg_psm"], [])
        self.assertFalse(torch.allclose(out, ALPHead()(fs, masks, fq, window=2)))

    def test_errors(self):
        fs, fq = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
        with self.assertRaises(DataError):
            PSMNetHead(8)(fs, torch.zeros(1, 1, 128, 128), fq)
        with self.assertRaises(ValueError):
            PSMNetHead(16)(fs, _masks(1, 128, "big"), fq)
        for kwargs in ({"psm_depth": -1}, {"psm_min_mass": -0.5}, {"psm_tau": float("inf")}, {"channels": 0}):
            with self.assertRaises(ConfigError):
                PSMNetHead(**{"channels": 8, **kwargs})

    def test_par_with_head(self):
        g = torch.Generator().manual_seed(13)
        fs = torch.randn(2, 8, 16, 16, generator=g).requires_grad_()
        fq = torch.randn(1, 8, 16, 16, generator=g).requires_grad_()
        head = PSMNetHead(8)
        _randomize_w_out(head)
        logits = head(fs, _masks(2, 128, "big"), fq, window=4)
        label = torch.randint(0, 2, (2, 128, 128), generator=g)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            par = prototype_alignment_loss(logits, fq, fs, label, head=head)
        (logits.square().mean() + par).backward()
        self.assertTrue(bool(torch.isfinite(par)))
        for t in (fs.grad, fq.grad, head.mcam.blocks[0].theta.weight.grad):
            self.assertGreater(float(t.abs().sum()), 0.0)


# ---------------------------------------------------------------------------------------------------- builder
class TestBuilder(unittest.TestCase):
    def test_parameter_count_resnet101(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no pretrained weights
            with torch.device("meta"):
                model = build_psmnet_segmentor("resnet101")
        self.assertIsInstance(model.head, PSMNetHead)
        n_enc = sum(p.numel() for p in model.encoder.parameters())
        self.assertEqual((n_enc, sum(p.numel() for p in model.head.parameters())), (43_024_448, 789_504))
        self.assertEqual(sum(p.numel() for p in model.parameters()), 43_813_952)

    @parameterized.expand([((128, 128),), ((256, 256),), ((128, 192),)])
    def test_logits_shapes(self, size):
        torch.manual_seed(0)
        model = build_psmnet_segmentor("tiny", **TINY)
        self.assertIsInstance(model, FewShotSegmentor)
        masks = _rect(size, size[0] // 8, 7 * size[0] // 8, size[1] // 8, 3 * size[1] // 4)
        sup, qry = torch.randn(1, 3, *size), torch.randn(1, 3, *size)
        out = model(sup, masks, qry, return_aux=True)
        self.assertEqual(tuple(out.logits.shape), (1, 2, *size))
        self.assertEqual(tuple(out.low_res_logits.shape), (1, 2, size[0] // 8, size[1] // 8))
        model.eval()
        with torch.no_grad():
            sup3, masks3 = torch.randn(3, 3, *size), masks.expand(3, 1, *size).clone()
            self.assertEqual(tuple(model(sup3, masks3, torch.randn(2, 3, *size)).shape), (2, 2, *size))
            other = (size[0] + 64, size[1])  # query grid differs from the support grid
            self.assertEqual(tuple(model(sup, masks, torch.randn(2, 3, *other)).shape), (2, 2, *other))

    def test_gradients_reach_mcam_and_encoder(self):
        torch.manual_seed(1)
        model = build_psmnet_segmentor("tiny", **TINY)
        sup, qry = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
        masks, target = _rect(64, 8, 56, 8, 48), torch.randint(0, 2, (1, 64, 64))
        F.cross_entropy(model(sup, masks, qry), target).backward()
        for block in model.head.mcam.blocks:  # at initialisation W_out receives the gradient
            self.assertGreater(float(block.w_out.weight.grad.abs().sum()), 0.0)
        model.zero_grad()
        _randomize_w_out(model.head)
        F.cross_entropy(model(sup, masks, qry), target).backward()
        for name, p in model.head.named_parameters():
            self.assertGreater(float(p.grad.abs().sum()), 0.0, name)
        self.assertGreater(float(model.encoder.reduction.weight.grad.abs().sum()), 0.0)
        self.assertGreater(float(next(model.encoder.stages.parameters()).grad.abs().sum()), 0.0)

    def test_determinism_and_param_count(self):
        x = torch.Generator().manual_seed(2)
        sup, qry = torch.randn(2, 3, 64, 64, generator=x), torch.randn(1, 3, 64, 64, generator=x)
        masks = _rect(64, 8, 56, 8, 48, shots=2)
        outs = []
        for _ in range(2):
            torch.manual_seed(3)
            model = build_psmnet_segmentor("tiny", **TINY)
            for p in model.head.parameters():  # seeded non-trivial MCAM so the comparison covers it
                torch.nn.init.normal_(p, std=0.05)
            outs.append(model(sup, masks, qry))
        self.assertTrue(torch.equal(outs[0], outs[1]))
        n_base = sum(p.numel() for p in build_fewshot_segmentor("tiny", **TINY).parameters())
        self.assertEqual(sum(p.numel() for p in model.parameters()), n_base + 3 * 4 * (32 * 32 + 32))
        off = build_psmnet_segmentor("tiny", use_mcam=False, psm_depth=0, **TINY)
        self.assertEqual(sum(p.numel() for p in off.parameters()), n_base)
        self.assertEqual((off.head.psm_depth, off.head.mcam), (0, None))

    def test_config_errors(self):
        for kwargs in ({"psm_depth": -1}, {"psm_min_mass": -1.0}, {"psm_tau": float("nan")}, {"psm_depth": 1.5}):
            with self.assertRaises(ConfigError):
                build_psmnet_segmentor("tiny", **TINY, **kwargs)


if __name__ == "__main__":
    unittest.main()
