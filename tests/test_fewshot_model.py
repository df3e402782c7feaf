# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.fewshot (ssl_alpnet.md §1, §3.6, §5, §8; fewshot_protocol.md §8.1)."""

from __future__ import annotations

import unittest
import warnings

import numpy as np
import torch
from parameterized import parameterized

from labelless.errors import ConfigError, DataError
from labelless.networks.fewshot import FewShotOutput, FewShotSegmentor, SupportEncoding, build_fewshot_segmentor
from labelless.networks.prototypes import ALPHead

# (n_shots, H, W, training)
SHAPE_CASES = [
    (1, 64, 64, True),
    (3, 64, 64, True),
    (1, 64, 64, False),
    (3, 64, 64, False),
    (1, 96, 128, True),
    (3, 96, 128, False),
]
# (support_images shape, support_masks shape, query shape, training, message fragment)
BAD_SHAPES = [
    ((1, 1, 3, 64, 64), (1, 1, 1, 64, 64), (1, 3, 64, 64), False, "batch of episodes"),
    ((1, 3, 64, 64), (1, 2, 64, 64), (1, 3, 64, 64), False, "multi-way"),
    ((2, 3, 64, 64), (1, 1, 64, 64), (1, 3, 64, 64), False, "one mask per support shot"),
    ((1, 3, 64, 64), (1, 1, 64, 64), (2, 3, 64, 64), True, "exactly one query"),
    ((1, 1, 64, 64), (1, 1, 64, 64), (1, 1, 64, 64), False, "channels"),
    ((1, 3, 64, 64), (1, 1, 64, 64), (3, 64, 64), False, "[B, C, H, W]"),
    ((1, 3, 64, 64), (1, 1, 32, 32), (1, 3, 64, 64), False, "differs from the support image size"),
    ((1, 3, 64, 64), (1, 1, 64, 64), (1, 3, 96, 96), True, "same size"),
]


_THREADS = torch.get_num_threads()


def setUpModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(1)  # tiny convolutions: threads only add contention on shared CPUs


def tearDownModule() -> None:  # noqa: N802 - unittest hook
    torch.set_num_threads(_THREADS)


def _tiny(seed: int = 0, **kwargs) -> FewShotSegmentor:
    torch.manual_seed(seed)
    return build_fewshot_segmentor("tiny", channels=(8, 16, 32), out_channels=32, **kwargs)


def _episode(n_shots: int, h: int, w: int, n_query: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n_shots, 3, h, w, generator=g)
    m = torch.zeros(n_shots, 1, h, w)
    for k in range(n_shots):
        m[k, :, 8 + 4 * k : h // 2 + 16, 16 : w // 2 + 8 + 4 * k] = 1.0
    q = torch.randn(n_query, 3, h, w, generator=g)
    return s, m, q


class _CallCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        module.register_forward_hook(lambda mod, inp, out: self.batches.append(int(inp[0].shape[0])))


class TestShapes(unittest.TestCase):
    @parameterized.expand(SHAPE_CASES)
    def test_output_shapes(self, n_shots, h, w, training):
        model = _tiny().train(training)
        s, m, q = _episode(n_shots, h, w)
        with torch.set_grad_enabled(training):
            out = model(s, m, q, return_aux=True)
        self.assertIsInstance(out, FewShotOutput)
        self.assertEqual(tuple(out.logits.shape), (1, 2, h, w))
        self.assertEqual(tuple(out.low_res_logits.shape), (1, 2, h // 8, w // 8))
        self.assertEqual(tuple(out.support_features.shape), (n_shots, 32, h // 8, w // 8))
        self.assertEqual(tuple(out.query_features.shape), (1, 32, h // 8, w // 8))
        self.assertEqual(out.window, 4 if training else 2)
        self.assertTrue(torch.isfinite(out.logits).all())
        plain = model(s, m, q)
        self.assertIsInstance(plain, torch.Tensor)
        self.assertEqual(tuple(plain.shape), (1, 2, h, w))

    def test_eval_many_queries(self):
        model = _tiny().eval()
        s, m, q = _episode(3, 64, 64, n_query=5)
        with torch.no_grad():
            self.assertEqual(tuple(model(s, m, q).shape), (5, 2, 64, 64))

    @parameterized.expand([(True, 4), (False, 2)])
    def test_default_window_matches_head(self, training, window):
        """The default window is the mode's; logits equal the head applied to the encoder features."""
        model = _tiny().train(training)
        s, m, q = _episode(1, 64, 64)
        with torch.no_grad():
            out = model(s, m, q, return_aux=True)
            expected = ALPHead()(out.support_features, m, out.query_features, window=window, output_size=(64, 64))
            other = ALPHead()(out.support_features, m, out.query_features, window=6 - window, output_size=(64, 64))
        torch.testing.assert_close(out.logits, expected)
        self.assertFalse(torch.allclose(out.logits, other))  # the window matters for this mask

    def test_explicit_window(self):
        model = _tiny().eval()
        s, m, q = _episode(1, 64, 64)
        with torch.no_grad():
            self.assertEqual(model(s, m, q, window=4, return_aux=True).window, 4)

    def test_training_encodes_in_one_pass_with_batch_statistics(self):
        model = _tiny().train()
        counter = _CallCounter(model.encoder)
        s, m, q = _episode(3, 64, 64)
        bn = next(mod for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        model(s, m, q)
        self.assertEqual(counter.batches, [4])  # S + 1 images, one encoder call
        self.assertFalse(torch.equal(before, bn.running_mean))  # BatchNorm in training mode
        model.eval()
        after = bn.running_mean.clone()
        with torch.no_grad():
            model(s, m, q)
        torch.testing.assert_close(after, bn.running_mean, rtol=0, atol=0)


class TestInference(unittest.TestCase):
    def test_batched_equals_per_slice(self):
        """encode_support once + segment_with in batches == one uncached forward per slice (1e-5)."""
        model = _tiny(seed=1, cache_support=False).eval()
        s, m, q = _episode(1, 64, 64, n_query=11, seed=3)
        with torch.no_grad():
            enc = model.encode_support(s, m)
            self.assertIsInstance(enc, SupportEncoding)
            self.assertEqual(enc.n_shots, 1)
            batched = model.segment_with(enc, q, batch_size=4)
            whole = model.segment_with(enc, q)
            per_slice = torch.cat([model(s, m, q[i : i + 1]) for i in range(q.shape[0])])
        self.assertEqual(tuple(batched.shape), (11, 2, 64, 64))
        torch.testing.assert_close(batched, per_slice, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(whole, per_slice, rtol=1e-5, atol=1e-5)

    def test_support_cache(self):
        """The predictor call re-encodes the support only when the support or the weights change."""
        model = _tiny(seed=2).eval()
        counter = _CallCounter(model.encoder)
        s, m, q = _episode(1, 64, 64, n_query=3)
        with torch.no_grad():
            ref = FewShotSegmentor(model.encoder, cache_support=False).eval()(s, m, q)
            counter.batches.clear()
            first = model(s, m, q)
            second = model(s.clone(), m.clone(), q)
            self.assertEqual(counter.batches, [1, 3, 3])  # support encoded once
            torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(second, first, rtol=0, atol=0)
            model(s + 1.0, m, q)  # a different support
            self.assertEqual(counter.batches[3:], [1, 3])
            next(model.encoder.parameters()).mul_(1.5)  # in-place weight change (optimizer step)
            changed = model(s + 1.0, m, q)
            self.assertEqual(counter.batches[5:], [1, 3])
            model.load_state_dict(model.state_dict())
            model(s + 1.0, m, q)
            self.assertEqual(counter.batches[7:], [1, 3])
        self.assertFalse(torch.allclose(changed, first))
        with torch.enable_grad():  # with gradients the cache is bypassed
            counter.batches.clear()
            model(s + 1.0, m, q)
            self.assertEqual(counter.batches, [4])

    def test_support_cache_holds_every_distinct_support(self):
        """Scans cycling through chunks of several supports encode each distinct support once (LRU of cache_size)."""
        s, m, q = _episode(1, 64, 64, n_query=2)
        supports = [(s + i, m) for i in range(3)]
        for size, expected in ((64, 3), (1, 9)):
            model = _tiny(seed=2, cache_size=size).eval()
            with torch.no_grad():
                outs = [model(si, mi, q) for _ in range(3) for si, mi in supports]
            self.assertEqual(model.support_encodings, expected)
            torch.testing.assert_close(outs[0], outs[3], rtol=0, atol=0)
        with self.assertRaises(ConfigError):
            _tiny(seed=2, cache_size=0)

    def test_usable_as_protocol_predictor(self):
        from labelless.fewshot.volume.protocol import segment_volume

        model = _tiny(seed=4).eval()
        rng = np.random.default_rng(0)
        volume = rng.standard_normal((6, 64, 64)).astype(np.float32)
        sup_img = rng.standard_normal((64, 64)).astype(np.float32)
        sup_msk = np.zeros((64, 64), np.uint8)
        sup_msk[16:48, 20:44] = 1
        pred = segment_volume(volume, [(sup_img, sup_msk)], [0] * 6, model, batch_size=4)
        with torch.no_grad():
            logits = model(
                torch.from_numpy(np.repeat(sup_img[None, None], 3, 1)),
                torch.from_numpy(sup_msk[None, None].astype(np.float32)),
                torch.from_numpy(np.repeat(volume[:, None], 3, 1)),
            )
        np.testing.assert_array_equal(pred, (logits[:, 1] > logits[:, 0]).numpy().astype(np.uint8))


class TestErrorsAndBuilder(unittest.TestCase):
    @parameterized.expand(BAD_SHAPES)
    def test_bad_shapes(self, s_shape, m_shape, q_shape, training, fragment):
        model = _tiny().train(training)
        with self.assertRaises(DataError) as ctx:
            model(torch.randn(*s_shape), torch.ones(*m_shape), torch.randn(*q_shape))
        self.assertIn(fragment, str(ctx.exception))

    def test_empty_support_mask(self):
        model = _tiny().eval()
        s, _, q = _episode(1, 64, 64)
        with self.assertRaises(DataError), torch.no_grad():
            model(s, torch.zeros(1, 1, 64, 64), q)

    @parameterized.expand([("resnet7", None), ("tiny", "/nonexistent/weights.pth")])
    def test_builder_errors(self, name, path):
        with self.assertRaises(ConfigError):
            build_fewshot_segmentor(name, pretrained_path=path)

    def test_bad_window(self):
        with self.assertRaises(ConfigError):
            FewShotSegmentor(torch.nn.Identity(), train_window=0)

    def test_resnet101_parameter_count(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-initialisation warning
            model = build_fewshot_segmentor("resnet101")
        self.assertEqual(sum(p.numel() for p in model.parameters()), 43_024_448)
        self.assertEqual(sum(p.numel() for p in model.head.parameters()), 0)
        self.assertEqual((model.train_window, model.test_window), (4, 2))


if __name__ == "__main__":
    unittest.main()
