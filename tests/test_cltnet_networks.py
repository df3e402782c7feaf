# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.cltnet (cltnet.md §2, §3, §10): LIN/AdaLIN, generator, discriminators, CLTNet."""

from __future__ import annotations

import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

from labelless.errors import ConfigError, DataError
from labelless.networks.cltnet import (
    LIN,
    AdaLIN,
    CAMDiscriminator,
    CLTGenerator,
    CLTGeneratorOutput,
    CLTNet,
    build_cltnet,
    clip_rho_,
)

#: tiny configuration for 64×64 inputs (a global D with n_layers 7 needs inputs of at least 96)
TINY = {"ngf": 8, "ndf": 8, "n_res_blocks": 2, "n_layers_global": 6, "n_layers_local": 5}


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def _check_generator_output(tc: unittest.TestCase, out: CLTGeneratorOutput, x: torch.Tensor, down: int = 4) -> None:
    b, c, *spatial = x.shape
    low = [s // down for s in spatial]
    tc.assertIsInstance(out, CLTGeneratorOutput)
    for name in ("y", "y_comp", "x_rec"):
        tc.assertEqual(tuple(getattr(out, name).shape), (b, c, *spatial), name)
    tc.assertEqual(tuple(out.mask.shape), (b, 1, *spatial))
    tc.assertEqual(tuple(out.heatmap.shape), (b, 1, *low))
    tc.assertEqual(tuple(out.cam_logit.shape), (b, 2))
    tc.assertTrue(bool(((out.mask >= 0) & (out.mask <= 1)).all()), "mask outside [0, 1]")
    for name in ("y", "x_rec"):
        t = getattr(out, name)
        tc.assertTrue(bool(((t >= -1) & (t <= 1)).all()), f"{name} outside [-1, 1]")
    torch.testing.assert_close(out.y_comp, out.y * out.mask + x * (1 - out.mask))


class TestNorms(unittest.TestCase):
    def test_lin_limits_are_instance_and_layer_norm(self):
        x = torch.randn(2, 6, 9, 7)
        norm = LIN(6)
        self.assertTrue(bool((norm.rho == 0).all()))
        torch.testing.assert_close(norm(x), F.layer_norm(x, x.shape[1:]), atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            norm.rho.fill_(1.0)
            norm.gamma.fill_(2.0)
            norm.beta.fill_(0.5)
        torch.testing.assert_close(norm(x), 2 * F.instance_norm(x) + 0.5, atol=1e-5, rtol=1e-5)

    def test_adalin_per_sample_affine_and_3d(self):
        x = torch.randn(2, 4, 5, 6, 3)
        norm = AdaLIN(4)
        self.assertTrue(bool(torch.allclose(norm.rho, torch.full((4,), 0.9))))
        gamma = torch.stack([torch.ones(4), 3 * torch.ones(4)])
        beta = torch.stack([torch.zeros(4), -torch.ones(4)])
        y = norm(x, gamma, beta)
        base = norm(x, torch.ones(2, 4), torch.zeros(2, 4))
        torch.testing.assert_close(y[0], base[0])
        torch.testing.assert_close(y[1], 3 * base[1] - 1)
        expected = 0.9 * F.instance_norm(x) + 0.1 * F.layer_norm(x, x.shape[1:])
        torch.testing.assert_close(base, expected, atol=1e-5, rtol=1e-5)
        with self.assertRaisesRegex(DataError, "gamma must have shape"):
            norm(x, torch.ones(4), torch.zeros(2, 4))
        with self.assertRaisesRegex(DataError, "expects \\[B, 4"):
            norm(torch.randn(2, 3, 4, 4), gamma, beta)

    def test_clip_rho_after_an_optimiser_step(self):
        torch.manual_seed(0)
        net = build_cltnet(**TINY)
        norms = [m for m in net.modules() if isinstance(m, (LIN, AdaLIN))]
        self.assertGreater(len(norms), 0)
        opt = torch.optim.SGD(net.generator_parameters(), lr=1.0)
        out = net.gen_ab(_image(1, 3, 64, 64))
        push = sum(m.rho.sum() for m in norms if isinstance(m, AdaLIN)) - sum(
            m.rho.sum() for m in norms if isinstance(m, LIN)
        )
        (out.y.abs().mean() + 10.0 * push).backward()
        opt.step()
        rhos = torch.cat([m.rho.detach().flatten() for m in norms])
        self.assertLess(float(rhos.min()), 0.0)
        self.assertGreater(float(rhos.max()), 1.0)
        self.assertEqual(clip_rho_(net), len(norms))
        rhos = torch.cat([m.rho.detach().flatten() for m in norms])
        self.assertGreaterEqual(float(rhos.min()), 0.0)
        self.assertLessEqual(float(rhos.max()), 1.0)
        self.assertEqual(clip_rho_(net.dis_ga), 0)  # no LIN in discriminators


class TestGenerator(unittest.TestCase):
    def test_reference_size_ngf54_256(self):
        torch.manual_seed(0)
        gen = CLTGenerator(spatial_dims=2, in_channels=3, out_channels=3, ngf=54, n_res_blocks=4).eval()
        n_params = sum(p.numel() for p in gen.parameters())
        self.assertEqual(gen.bottleneck_channels, 216)
        x = _image(1, 3, 256, 256)
        with torch.no_grad():
            out = gen(x)
        _check_generator_output(self, out, x)
        self.assertEqual(n_params, 11_267_370, f"ngf=54 generator has {n_params:,} parameters")

    def test_tiny_64(self):
        torch.manual_seed(0)
        gen = CLTGenerator(ngf=8)
        x = _image(2, 3, 64, 64)
        _check_generator_output(self, gen(x), x)

    def test_rectangular_and_single_channel(self):
        gen = CLTGenerator(in_channels=1, out_channels=1, ngf=4, n_res_blocks=1)
        x = _image(1, 1, 32, 48)
        _check_generator_output(self, gen(x), x)

    def test_composite_equals_input_where_mask_is_zero(self):
        torch.manual_seed(0)
        gen = CLTGenerator(ngf=8, n_res_blocks=2)
        x = _image(1, 3, 64, 64)

        def hook(_module, _inputs, logits):  # left half of the 16×16 mask → sigmoid(-1e4) == 0 exactly
            col = torch.arange(logits.shape[-1], device=logits.device)
            return torch.where(col < logits.shape[-1] // 2, torch.full_like(logits, -1e4), logits)

        handle = gen.mask_head.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = gen(x)
        finally:
            handle.remove()
        zero = out.mask == 0
        self.assertGreaterEqual(int(zero.sum()), 25 * 64)  # columns 0..29 after align_corners upsampling
        self.assertTrue(bool(zero[..., :29].all()))
        self.assertTrue(bool((out.mask[..., 40:] > 0).all()))
        z3 = zero.expand_as(x)
        torch.testing.assert_close(out.y_comp[z3], x[z3], atol=0, rtol=0)
        self.assertFalse(torch.equal(out.y_comp[~z3], x[~z3]))

    def test_3d_smoke(self):
        torch.manual_seed(0)
        gen = CLTGenerator(spatial_dims=3, ngf=4, n_res_blocks=1)
        x = _image(1, 3, 16, 16, 16)
        out = gen(x)
        _check_generator_output(self, out, x)
        out.y_comp.mean().backward()
        self.assertIsNotNone(gen.mask_head[1].weight.grad)

    def test_float64_follows_input(self):
        gen = CLTGenerator(ngf=4, n_res_blocks=1).double()
        out = gen(_image(1, 3, 32, 32).double())
        self.assertTrue(all(t.dtype == torch.float64 for t in out))

    @parameterized.expand(
        [
            ("not_divisible", (1, 3, 62, 64), "multiples of 4"),
            ("too_small", (1, 3, 4, 4), "at least 8"),
            ("channels", (1, 1, 64, 64), "expects 3 input channels, got 1"),
            ("ndim", (3, 64, 64), "expects a \\[B, C, ..., ...\\] tensor"),
        ]
    )
    def test_input_errors(self, _name, shape, message):
        gen = CLTGenerator(ngf=4, n_res_blocks=1)
        with self.assertRaisesRegex(DataError, message) as ctx:
            gen(torch.zeros(*shape))
        self.assertNotIn("\n", str(ctx.exception))

    def test_config_errors(self):
        with self.assertRaisesRegex(ConfigError, "only the light variant"):
            CLTGenerator(light=False)
        with self.assertRaisesRegex(ConfigError, "spatial_dims 2 or 3"):
            CLTGenerator(spatial_dims=1)
        with self.assertRaisesRegex(ConfigError, "out_channels"):
            CLTGenerator(in_channels=3, out_channels=1)
        with self.assertRaisesRegex(ConfigError, "ngf"):
            CLTGenerator(ngf=0)


class TestDiscriminator(unittest.TestCase):
    @parameterized.expand([("global", 7, 6, 5), ("local", 5, 30, 3)])
    def test_output_sizes_256(self, _name, n_layers, size, n_strided):
        torch.manual_seed(0)
        d = CAMDiscriminator(spatial_dims=2, in_channels=3, ndf=8, n_layers=n_layers)
        self.assertEqual(d.n_strided, n_strided)
        self.assertEqual(d.cam_channels, 8 * 2**n_strided)
        self.assertEqual(d.output_size(256), size)
        logits, cam_logit, heatmap = d(_image(2, 3, 256, 256))
        self.assertEqual(tuple(logits.shape), (2, 1, size, size))
        self.assertEqual(tuple(cam_logit.shape), (2, 2))
        self.assertEqual(tuple(heatmap.shape), (2, 1, size + 1, size + 1))

    def test_reference_channels(self):
        d_g = CAMDiscriminator(ndf=54, n_layers=7)
        d_l = CAMDiscriminator(ndf=54, n_layers=5)
        self.assertEqual((d_g.cam_channels, d_l.cam_channels), (1728, 432))

    def test_spectral_norm_everywhere(self):
        d = CAMDiscriminator(ndf=4, n_layers=4)
        weighted = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        self.assertEqual(len(weighted), 2 + 1 + 2 + 1 + 1)  # 2 strided, 1 stride-1, gap/gmp, cam conv, head
        for m in weighted:
            self.assertTrue(torch.nn.utils.parametrize.is_parametrized(m, "weight"), repr(m))

    def test_3d_smoke(self):
        torch.manual_seed(0)
        for n_layers, size in ((4, 2), (3, 6)):
            d = CAMDiscriminator(spatial_dims=3, in_channels=3, ndf=4, n_layers=n_layers)
            logits, cam_logit, _ = d(_image(1, 3, 16, 16, 16))
            self.assertEqual(tuple(logits.shape), (1, 1, size, size, size))
            self.assertEqual(tuple(cam_logit.shape), (1, 2))

    def test_errors(self):
        d = CAMDiscriminator(ndf=4, n_layers=7)
        with self.assertRaisesRegex(DataError, "at least 96"):
            d(torch.zeros(1, 3, 64, 64))
        with self.assertRaisesRegex(DataError, "expects 3 input channels"):
            d(torch.zeros(1, 4, 256, 256))
        with self.assertRaisesRegex(ConfigError, "n_layers must be at least 3"):
            CAMDiscriminator(n_layers=2)


class TestCLTNet(unittest.TestCase):
    def test_parameter_groups_and_forward(self):
        torch.manual_seed(0)
        net = build_cltnet(**TINY)
        self.assertIsInstance(net, CLTNet)
        gen_ids = {id(p) for p in net.generator_parameters()}
        dis_ids = {id(p) for p in net.discriminator_parameters()}
        self.assertFalse(gen_ids & dis_ids)
        self.assertEqual(gen_ids | dis_ids, {id(p) for p in net.parameters()})
        self.assertEqual(net.dis_ga.n_layers, 6)
        self.assertEqual(net.dis_lb.n_layers, 5)
        net.eval()
        x = _image(1, 3, 64, 64)
        with torch.no_grad():
            out = net(x)
            torch.testing.assert_close(out.mask, net.gen_ab(x).mask)
            torch.testing.assert_close(net.segment(x), out.mask)

    def test_gradients_reach_generators_and_discriminators(self):
        torch.manual_seed(0)
        net = build_cltnet(**TINY)
        x_a, x_b = _image(1, 3, 64, 64, seed=1), _image(1, 3, 64, 64, seed=2)
        # D step: fakes detached
        fake_b, fake_a = net.gen_ab(x_a).y.detach(), net.gen_ba(x_b).y.detach()
        loss_d = x_a.new_zeros(())
        for d, real, fake in (
            (net.dis_ga, x_a, fake_a),
            (net.dis_la, x_a, fake_a),
            (net.dis_gb, x_b, fake_b),
            (net.dis_lb, x_b, fake_b),
        ):
            r_logit, r_cam, _ = d(real)
            f_logit, f_cam, _ = d(fake)
            loss_d = (
                loss_d + F.mse_loss(r_logit, torch.ones_like(r_logit)) + F.mse_loss(f_logit, torch.zeros_like(f_logit))
            )
            loss_d = loss_d + F.mse_loss(r_cam, torch.ones_like(r_cam)) + F.mse_loss(f_cam, torch.zeros_like(f_cam))
        loss_d.backward()
        for name, p in net.named_parameters():
            if name.startswith("dis_"):
                self.assertIsNotNone(p.grad, name)
                self.assertGreater(float(p.grad.abs().sum()), 0.0, name)
            else:
                self.assertIsNone(p.grad, name)
        net.zero_grad(set_to_none=True)

        # G step: adversarial (raw and composite), cycle, CAM and reconstruction terms
        ab, ba = net.gen_ab(x_a), net.gen_ba(x_b)
        loss_g = (net.gen_ba(ab.y).y - x_a).abs().mean() + (net.gen_ab(ba.y).y - x_b).abs().mean()
        loss_g = loss_g + (ab.x_rec - x_a).abs().mean() + (ba.x_rec - x_b).abs().mean()
        loss_g = loss_g + F.binary_cross_entropy_with_logits(ab.cam_logit, torch.ones_like(ab.cam_logit))
        loss_g = loss_g + F.binary_cross_entropy_with_logits(ba.cam_logit, torch.ones_like(ba.cam_logit))
        for d, fake in ((net.dis_gb, ab.y), (net.dis_lb, ab.y_comp), (net.dis_ga, ba.y), (net.dis_la, ba.y_comp)):
            logit, cam, _ = d(fake)
            loss_g = loss_g + F.mse_loss(logit, torch.ones_like(logit)) + F.mse_loss(cam, torch.ones_like(cam))
        loss_g.backward()
        for name, p in net.named_parameters():
            if name.startswith("gen_"):
                self.assertIsNotNone(p.grad, name)
                self.assertTrue(bool(torch.isfinite(p.grad).all()), name)
        for gen in net.generators:
            for module in (gen.encoder[1], gen.mask_head[1], gen.gap_fc, gen.gmp_fc, gen.gamma_fc, gen.beta_fc):
                self.assertGreater(float(module.weight.grad.abs().sum()), 0.0, repr(module))
            self.assertGreater(float(gen.transfer_blocks[0].conv1.weight.grad.abs().sum()), 0.0)
            self.assertGreater(float(gen.recon_blocks[-1].body[1].weight.grad.abs().sum()), 0.0)

    def test_seeded_construction_is_reproducible(self):
        states = []
        for _ in range(2):
            torch.manual_seed(123)
            states.append(build_cltnet(**TINY).state_dict())
        self.assertEqual(states[0].keys(), states[1].keys())
        for key in states[0]:
            self.assertTrue(torch.equal(states[0][key], states[1][key]), key)
        torch.manual_seed(124)
        other = build_cltnet(**TINY).state_dict()
        self.assertFalse(all(torch.equal(states[0][k], other[k]) for k in other))


if __name__ == "__main__":
    unittest.main()
