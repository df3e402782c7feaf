# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.encoders (fewshot_protocol.md §8.1)."""

from __future__ import annotations

import os
import tempfile
import unittest
import warnings

import torch
from parameterized import parameterized

from labelless.errors import ConfigError, DataError
from labelless.networks.encoders import DilatedResNet, PretrainedReport, TinyEncoder, build_encoder

# torchvision's ResNet parameter counts without the 1000-class fc layer
BODY_COUNTS = [(18, 11_176_512), (34, 21_284_672), (50, 23_508_032), (101, 42_500_160)]
TINY_SHAPES = [
    ((1, 3, 256, 256), (1, 256, 32, 32)),
    ((2, 3, 128, 128), (2, 256, 16, 16)),
    ((3, 3, 96, 160), (3, 256, 12, 20)),
]
BAD_INPUTS = [((1, 3, 60, 64),), ((1, 3, 64, 70),), ((1, 1, 64, 64),), ((3, 64, 64),)]


def _resnet(depth: int = 18, seed: int = 0, **kwargs) -> DilatedResNet:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DilatedResNet(spatial_dims=2, depth=depth, **kwargs)


def _torchvision_keys(depth: int) -> set[str]:
    """State dict keys of torchvision's ResNet body (no fc), generated from its naming scheme."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    n_conv = 2 if depth < 50 else 3
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn}
    for li, nb in enumerate(blocks, start=1):
        for b in range(nb):
            p = f"layer{li}.{b}."
            for c in range(1, n_conv + 1):
                keys |= {f"{p}conv{c}.weight"} | {f"{p}bn{c}.{s}" for s in bn}
            if b == 0 and (li > 1 or depth >= 50):
                keys |= {f"{p}downsample.0.weight"} | {f"{p}downsample.1.{s}" for s in bn}
    return keys


class TestDilatedResNet(unittest.TestCase):
    def test_resnet101_parameter_counts(self):
        net = _resnet(101)
        total = sum(p.numel() for p in net.parameters())
        self.assertEqual(net.body_parameter_count(), 42_500_160)
        self.assertEqual(sum(p.numel() for p in net.reduction.parameters()), 524_288)
        self.assertEqual(total, 43_024_448)
        self.assertIsNone(net.reduction.bias)
        self.assertFalse(hasattr(net, "fc"))

    @parameterized.expand(BODY_COUNTS[:3])
    def test_body_counts(self, depth, expected):
        self.assertEqual(_resnet(depth).body_parameter_count(), expected)

    @parameterized.expand([(18,), (50,)])
    def test_torchvision_key_names(self, depth):
        keys = {k for k in _resnet(depth).state_dict() if not k.startswith("reduction.")}
        self.assertEqual(keys, _torchvision_keys(depth))

    def test_dilation_pattern_os8(self):
        net = _resnet(50)
        self.assertEqual(net.layer2[0].conv2.stride, (2, 2))
        self.assertEqual(net.layer2[0].downsample[0].stride, (2, 2))
        self.assertEqual([b.conv2.stride for b in net.layer3], [(1, 1)] * 6)
        self.assertEqual([b.conv2.dilation[0] for b in net.layer3], [1, 2, 2, 2, 2, 2])
        self.assertEqual([b.conv2.dilation[0] for b in net.layer4], [2, 4, 4])
        self.assertEqual([b.conv2.padding[0] for b in net.layer4], [2, 4, 4])
        self.assertEqual(net.layer4[0].downsample[0].stride, (1, 1))

    def test_resnet18_forward_shapes(self):
        net = _resnet(18).eval()
        with torch.no_grad():
            self.assertEqual(tuple(net(torch.randn(2, 3, 64, 64)).shape), (2, 256, 8, 8))
            self.assertEqual(tuple(net(torch.randn(1, 3, 48, 80)).shape), (1, 256, 6, 10))
            self.assertEqual(tuple(net.forward_body(torch.randn(1, 3, 64, 64)).shape), (1, 512, 8, 8))

    @parameterized.expand([(16, (1, 256, 4, 4)), (32, (1, 256, 2, 2))])
    def test_other_output_strides(self, stride, shape):
        net = _resnet(18, output_stride=stride).eval()
        with torch.no_grad():
            self.assertEqual(tuple(net(torch.randn(1, 3, 64, 64)).shape), shape)

    def test_random_init_warns(self):
        with self.assertWarnsRegex(UserWarning, "far below"):
            DilatedResNet(depth=18)

    def test_bad_config(self):
        with self.assertRaises(ConfigError):
            _resnet(19)
        with self.assertRaises(ConfigError):
            _resnet(18, output_stride=4)

    def test_seeded_init_is_reproducible(self):
        a, b = _resnet(18, seed=3), _resnet(18, seed=3)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            self.assertEqual(ka, kb)
            self.assertTrue(torch.equal(va, vb), ka)


class TestPretrainedLoading(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.src = _resnet(18, seed=1)
        body = {k: v.clone() for k, v in self.src.state_dict().items() if not k.startswith("reduction.")}
        self.body = body

    def tearDown(self):
        self.tmp.cleanup()

    def _save(self, name: str, obj) -> str:
        path = os.path.join(self.tmp.name, name)
        torch.save(obj, path)
        return path

    def _assert_body_equal(self, net: DilatedResNet) -> None:
        state = net.state_dict()
        for k, v in self.body.items():
            self.assertTrue(torch.equal(state[k], v), k)

    def test_torchvision_format(self):
        sd = dict(self.body)
        sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
        path = self._save("resnet18.pth", sd)
        net = _resnet(18, seed=2)
        red_before = net.reduction.weight.detach().clone()
        self.assertFalse(torch.equal(net.state_dict()["conv1.weight"], self.body["conv1.weight"]))
        report = net.load_pretrained(path)
        self._assert_body_equal(net)
        self.assertTrue(torch.equal(net.reduction.weight, red_before))  # not in the file: untouched
        self.assertIsInstance(report, PretrainedReport)
        self.assertEqual(report.prefix, "")
        self.assertEqual(sorted(report.ignored), ["fc.bias", "fc.weight"])
        self.assertEqual(report.missing, [])
        self.assertEqual(report.unexpected, [])
        self.assertFalse(report.reduction_loaded)
        self.assertEqual(len(report.loaded), len(self.body))
        self.assertIn("loaded", report.summary())

    def test_deeplabv3_format_via_constructor(self):
        sd = {f"backbone.{k}": v for k, v in self.body.items()}
        sd["classifier.0.convs.0.0.weight"] = torch.randn(256, 512, 1, 1)
        sd["classifier.4.weight"] = torch.randn(21, 256, 1, 1)
        sd["aux_classifier.0.weight"] = torch.randn(256, 256, 3, 3)
        path = self._save("deeplabv3.pth", {"state_dict": sd})
        torch.manual_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no random-init warning when weights are given
            net = DilatedResNet(depth=18, pretrained_path=path)
        self._assert_body_equal(net)
        self.assertEqual(net.pretrained_report.prefix, "backbone.")
        self.assertEqual(len(net.pretrained_report.ignored), 3)

    def test_reference_format_loads_reduction(self):
        sd = {f"encoder.backbone.{k}": v for k, v in self.body.items()}
        sd["encoder.localconv.weight"] = torch.randn(256, 512, 1, 1)
        sd["encoder.asppconv.weight"] = torch.randn(256, 256, 1, 1)
        net = _resnet(18, seed=2)
        report = net.load_pretrained(self._save("alpnet.pth", {"model": sd}))
        self._assert_body_equal(net)
        self.assertTrue(report.reduction_loaded)
        self.assertTrue(torch.equal(net.reduction.weight, sd["encoder.localconv.weight"]))
        self.assertEqual(report.ignored, ["encoder.asppconv.weight"])

    def test_roundtrip_own_state_dict(self):
        path = self._save("own.pth", self.src.state_dict())
        net = _resnet(18, seed=4)
        self.assertTrue(net.load_pretrained(path).reduction_loaded)
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            self.assertTrue(torch.equal(net.eval()(x), self.src.eval()(x)))

    def test_missing_file(self):
        path = os.path.join(self.tmp.name, "nope.pth")
        with self.assertRaisesRegex(DataError, "nope.pth.*does not exist"):
            _resnet(18).load_pretrained(path)
        with self.assertRaises(DataError):
            DilatedResNet(depth=18, pretrained_path=path)

    def test_unreadable_file(self):
        path = os.path.join(self.tmp.name, "garbage.pth")
        with open(path, "wb") as f:
            f.write(b"this is not a checkpoint")
        with self.assertRaisesRegex(DataError, "garbage.pth.*cannot read"):
            _resnet(18).load_pretrained(path)

    def test_not_a_state_dict(self):
        with self.assertRaisesRegex(DataError, "state dict"):
            _resnet(18).load_pretrained(self._save("list.pth", [torch.zeros(1)]))
        with self.assertRaisesRegex(DataError, "no ResNet body"):
            _resnet(18).load_pretrained(self._save("other.pth", {"weight": torch.zeros(1)}))

    def test_shape_mismatch(self):
        path = self._save("resnet18.pth", self.body)
        with self.assertRaisesRegex(DataError, "resnet18.pth.*shape mismatch for 'conv1.weight'"):
            _resnet(18, in_channels=1).load_pretrained(path)
        with self.assertRaisesRegex(DataError, "shape mismatch"):
            _resnet(50).load_pretrained(path)

    def test_missing_keys_strict_and_lenient(self):
        path = self._save("resnet18.pth", self.body)
        with self.assertRaisesRegex(DataError, "missing body keys.*layer1.2"):
            _resnet(34).load_pretrained(path)
        net = _resnet(34)
        with self.assertWarnsRegex(UserWarning, "missing body keys"):
            report = net.load_pretrained(path, strict=False)
        self.assertTrue(torch.equal(net.state_dict()["layer1.1.conv2.weight"], self.body["layer1.1.conv2.weight"]))
        self.assertIn("layer1.2.conv1.weight", report.missing)

    def test_unexpected_keys_strict(self):
        sd = dict(self.body)
        sd["layer5.0.conv1.weight"] = torch.zeros(1)
        with self.assertRaisesRegex(DataError, "unexpected keys.*layer5"):
            _resnet(18).load_pretrained(self._save("extra.pth", sd))

    def test_missing_num_batches_tracked_tolerated(self):
        sd = {k: v for k, v in self.body.items() if not k.endswith("num_batches_tracked")}
        net = _resnet(18, seed=2)
        net.load_pretrained(self._save("old.pth", sd))
        self.assertTrue(torch.equal(net.state_dict()["conv1.weight"], self.body["conv1.weight"]))


class TestTinyEncoder(unittest.TestCase):
    @parameterized.expand(TINY_SHAPES)
    def test_shapes(self, in_shape, out_shape):
        self.assertEqual(tuple(TinyEncoder()(torch.randn(*in_shape)).shape), out_shape)

    @parameterized.expand(BAD_INPUTS)
    def test_bad_input(self, shape):
        with self.assertRaises(ValueError):
            TinyEncoder()(torch.randn(*shape))

    def test_channels_and_3d(self):
        net = TinyEncoder(spatial_dims=3, in_channels=1, out_channels=8, channels=(4, 8, 8, 16))
        self.assertEqual(tuple(net(torch.randn(1, 1, 16, 16, 24)).shape), (1, 8, 2, 2, 3))
        with self.assertRaises(ConfigError):
            TinyEncoder(channels=(4, 8))

    def test_torchscript(self):
        torch.manual_seed(0)
        net = TinyEncoder().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in recent torch
            scripted = torch.jit.script(net)
        x = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            self.assertTrue(torch.equal(scripted(x), net(x)))
        with self.assertRaisesRegex(Exception, "multiple of 8"):  # torch.jit.Error wraps the ValueError
            scripted(torch.randn(1, 3, 60, 64))

    def test_gradients(self):
        net = TinyEncoder(out_channels=16)
        x = torch.randn(2, 3, 32, 32, requires_grad=True)
        net(x).square().mean().backward()
        self.assertGreater(float(x.grad.abs().sum()), 0.0)
        self.assertTrue(all(p.grad is not None for p in net.parameters()))


class TestBuildEncoder(unittest.TestCase):
    def test_names(self):
        self.assertIsInstance(build_encoder("tiny", out_channels=32), TinyEncoder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = build_encoder("ResNet18", out_channels=64)
        self.assertIsInstance(net, DilatedResNet)
        self.assertEqual((net.depth, net.out_channels, net.output_stride), (18, 64, 8))

    def test_unknown(self):
        with self.assertRaisesRegex(ConfigError, "unknown encoder"):
            build_encoder("vgg16")
        with self.assertRaisesRegex(ConfigError, "conflicts"):
            build_encoder("resnet18", depth=50)


if __name__ == "__main__":
    unittest.main()
