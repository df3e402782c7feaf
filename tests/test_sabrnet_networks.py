# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of labelless.networks.sabrnet (sabrnet.md §4, §5, §8, §11): partial conv, masked attention, generator,
boundary heads, discriminators and the build profiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labelless.errors import ConfigError, DataError
from labelless.networks import sabrnet as sn
from labelless.networks.sabrnet import (
    BoundaryHeads,
    ImageDiscriminator,
    MappingNetwork,
    MaskedStage,
    MaskedTransformerBlock,
    MaskedWindowAttention,
    ModulatedConv2d,
    PartialConv2d,
    SABRGenerator,
    SABRGeneratorOutput,
    SABRNet,
    SABRNetOutput,
    SegDiscriminator,
    build_discriminators,
    build_sabrnet,
)

TINY = {"dim": 16, "heads": 2, "depths": (1, 1, 1, 1, 1), "windows": (4, 4, 4, 4, 4), "image_size": 64}


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def _hole_mask(b: int, h: int, w: int) -> torch.Tensor:
    m = torch.ones(b, 1, h, w)
    m[:, :, h // 4 : h // 2, w // 8 : w // 2] = 0
    return m


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads; one thread avoids OpenMP stalls on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_generator() -> SABRGenerator:
    torch.manual_seed(0)
    return SABRGenerator(**TINY).eval()


# ---------------------------------------------------------------------------------------------------- partial conv
def test_partial_conv_all_ones_equals_plain_conv():
    torch.manual_seed(0)
    pc = PartialConv2d(3, 5, 3)
    x = torch.randn(2, 3, 12, 10)
    y, m = pc(x, torch.ones(2, 1, 12, 10))
    plain = F.conv2d(x, pc.conv.weight, pc.conv.bias, padding=1)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1])
    assert torch.equal(m, torch.ones(2, 1, 12, 10))
    # zero padding counts as hole: border outputs are rescaled by k² / count
    torch.testing.assert_close(y[..., 0, 0], plain[..., 0, 0] * 9 / 4)
    torch.testing.assert_close(y[..., 0, 5], plain[..., 0, 5] * 9 / 6)


def test_partial_conv_fully_masked_window_is_zero():
    torch.manual_seed(0)
    pc = PartialConv2d(2, 4, 3, act=True)
    with torch.no_grad():
        pc.conv.bias.fill_(0.7)  # a bias alone must not leak into holes
    mask = torch.ones(1, 1, 9, 9)
    mask[..., 2:7, 2:7] = 0
    x = torch.randn(1, 2, 9, 9) * mask
    y, m = pc(x, mask)
    assert torch.all(y[..., 3:6, 3:6] == 0)
    assert torch.all(m[..., 3:6, 3:6] == 0)
    assert torch.all(m[..., 2, 2:7] == 1)  # windows touching a valid pixel become valid
    # the ratio on a half-valid window: 9 / 3 on the hole's edge row (3 valid pixels above it)
    plain = F.leaky_relu(F.conv2d(x, pc.conv.weight, pc.conv.bias, padding=1), 0.2)
    torch.testing.assert_close(y[..., 2, 4], plain[..., 2, 4] * 3.0)


def test_partial_conv_stride_and_errors():
    pc = PartialConv2d(4, 8, 3, stride=2, act=True)
    y, m = pc(torch.randn(1, 4, 16, 12), torch.ones(1, 1, 16, 12))
    assert y.shape == (1, 8, 8, 6) and m.shape == (1, 1, 8, 6)
    y, m = pc(torch.randn(1, 4, 16, 12), None)
    assert m is None
    with pytest.raises(ConfigError):
        PartialConv2d(4, 8, 2)


# ---------------------------------------------------------------------------------------------------- attention
def test_attention_masked_key_gets_no_weight():
    torch.manual_seed(0)
    attn = MaskedWindowAttention(8, 2, 4).eval()
    x = torch.randn(1, 16, 8)
    mask = torch.ones(1, 16, 1)
    mask[0, [5, 11]] = 0
    out, new_mask, weights = attn(x, mask, (4, 4), return_attention=True)
    assert weights.shape == (1, 2, 16, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 16))
    assert weights[..., [5, 11]].max() < 1e-30
    assert weights[..., 0].min() > 1e-4
    assert out.shape == (1, 16, 8) and torch.equal(new_mask, torch.ones(1, 16, 1))


def test_attention_mask_update_per_window():
    torch.manual_seed(0)
    attn = MaskedWindowAttention(8, 2, 4).eval()
    mask = torch.zeros(1, 8, 8, 1)
    mask[0, 1, 6] = 1  # one valid token in window (0, 1)
    mask[0, 4:8, 0:4] = 1  # window (1, 0) fully valid; window (0, 0) and (1, 1) empty
    _, new_mask = attn(torch.randn(1, 64, 8), mask.reshape(1, 64, 1), (8, 8))
    new_mask = new_mask.reshape(8, 8)
    assert torch.all(new_mask[0:4, 0:4] == 0)
    assert torch.all(new_mask[0:4, 4:8] == 1)
    assert torch.all(new_mask[4:8, 0:4] == 1)
    assert torch.all(new_mask[4:8, 4:8] == 0)


def test_attention_shift_mask_separates_regions_and_padding():
    torch.manual_seed(0)
    attn = MaskedWindowAttention(8, 2, 4, shift_size=2).eval()
    assert attn.effective_window((8, 8)) == (4, 2)
    _, _, weights = attn(torch.randn(1, 64, 8), None, (8, 8), return_attention=True)
    # last window of the shifted map mixes the 4 regions (rows/cols 6-7 vs the wrapped 0-1)
    rows = torch.tensor([0, 0, 1, 1]).repeat_interleave(4)
    cols = torch.tensor([0, 0, 1, 1]).repeat(4)
    region = rows * 2 + cols
    different = region[:, None] != region[None, :]
    assert weights[-1][:, different].max() < 1e-30
    assert weights[-1][:, ~different].min() > 1e-4
    # a 6×6 map is padded to 8×8; padded tokens are never attended to
    attn0 = MaskedWindowAttention(8, 2, 4).eval()
    out, m, w6 = attn0(torch.randn(2, 36, 8), None, (6, 6), return_attention=True)
    assert out.shape == (2, 36, 8) and m.shape == (2, 36, 1) and w6.shape == (8, 2, 16, 16)
    pad_cols = torch.tensor([2, 3, 6, 7, 10, 11, 12, 13, 14, 15])  # of the bottom-right window (rows/cols 6-7 padded)
    assert w6[3][..., pad_cols].max() < 1e-30
    # the window is clamped to the map side; a single-window map never shifts
    assert attn.effective_window((2, 4)) == (4, 0)


def test_attention_relative_position_bias_and_errors():
    attn = MaskedWindowAttention(8, 2, 8, shift_size=4, rel_pos_bias=True)
    out, _ = attn(torch.randn(1, 16 * 16, 8), None, (16, 16))
    out.sum().backward()
    assert attn.rel_pos_table.grad is not None
    out, _ = attn(torch.randn(1, 16, 8), None, (4, 4))  # window clamped to 4 < 8 uses part of the table
    assert out.shape == (1, 16, 8)
    with pytest.raises(ConfigError):
        MaskedWindowAttention(10, 3, 4)
    with pytest.raises(DataError):
        attn(torch.randn(1, 15, 8), None, (4, 4))


def test_block_and_stage_shapes():
    torch.manual_seed(0)
    blk = MaskedTransformerBlock(16, 2, 4, shift_size=2, drop_path=0.5)
    y, m = blk(torch.randn(2, 64, 16), torch.ones(2, 64, 1), (8, 8))
    assert y.shape == (2, 64, 16) and m.shape == (2, 64, 1)
    stage = MaskedStage(16, 3, 2, 4, drop_path=[0.0, 0.05, 0.1])
    assert [b.attn.shift_size for b in stage.blocks] == [0, 2, 0]
    mask = torch.ones(1, 1, 8, 12)
    mask[..., :4, :4] = 0
    y, m = stage(torch.randn(1, 16, 8, 12) * mask, mask)
    assert y.shape == (1, 16, 8, 12) and m.shape == (1, 1, 8, 12)
    assert torch.all(m == 1)  # each window of the hole has valid neighbours after the update
    with pytest.raises(ConfigError):
        MaskedStage(16, 2, 2, 4, drop_path=[0.1])


# ---------------------------------------------------------------------------------------------------- style parts
def test_modulated_conv_demodulation_unit_norm_and_equivalence():
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=7)
    style = torch.randn(3, 7)
    w = conv.effective_weight(style)
    assert w.shape == (3, 5, 6, 3, 3)
    torch.testing.assert_close(w.square().sum(dim=(2, 3, 4)).sqrt(), torch.ones(3, 5))
    # the fused computation equals the per-sample grouped convolution with the effective weights
    conv.eval()
    x = torch.randn(3, 6, 8, 8)
    grouped = F.conv2d(x.reshape(1, 18, 8, 8), w.reshape(15, 6, 3, 3), padding=1, groups=3).reshape(3, 5, 8, 8)
    torch.testing.assert_close(conv(x, style), F.leaky_relu(grouped + conv.bias[None, :, None, None], 0.2))
    up = ModulatedConv2d(6, 4, 1, 7, demodulate=False, upsample=True, activation=False, noise=False)
    assert up(x, style).shape == (3, 4, 16, 16)
    assert not torch.allclose(up.effective_weight(style).square().sum(dim=(2, 3, 4)), torch.ones(3, 4))


def test_mapping_network():
    net = MappingNetwork(16, 8, n_layers=3)
    z = torch.randn(4, 16)
    w = net(z)
    assert w.shape == (4, 8)
    torch.testing.assert_close(net(z * 5.0), w)  # z is RMS-normalised
    with pytest.raises(DataError):
        net(torch.randn(4, 15))


# ---------------------------------------------------------------------------------------------------- generator
def test_generator_shapes_and_composite(tiny_generator):
    x = _image(1, 3, 64, 64)
    m = _hole_mask(1, 64, 64)
    with torch.no_grad():
        out = tiny_generator(x * m, m)
    assert isinstance(out, SABRGeneratorOutput)
    assert out.rgb.shape == (1, 3, 64, 64)
    assert out.seg.shape == (1, 2, 64, 64)
    assert out.features.shape == (1, 16, 64, 64)
    assert out.features_half.shape == (1, 16, 32, 32)
    keep = m.expand_as(x).bool()
    assert torch.equal(out.composite[keep], (x * m)[keep])
    torch.testing.assert_close(out.composite[~keep], out.rgb[~keep])
    assert torch.isfinite(out.rgb).all() and torch.isfinite(out.seg).all()


def test_generator_eval_deterministic_and_non_square(tiny_generator):
    x = _image(1, 3, 32, 48, seed=1)
    m = _hole_mask(1, 32, 48)
    a, b = tiny_generator(x * m, m), tiny_generator(x * m, m)
    for t, u in zip(a, b):
        assert torch.equal(t, u)
    assert a.seg.shape == (1, 2, 32, 48) and a.features_half.shape == (1, 16, 16, 24)
    feats = tiny_generator.perceptual_features(x)
    assert [tuple(f.shape) for f in feats] == [(1, 16, 8, 12), (1, 16, 8, 12), (1, 16, 4, 6), (1, 16, 2, 3)]


def test_generator_gradients_reach_seg_heads_and_encoder():
    torch.manual_seed(0)
    g = SABRGenerator(n_classes=3, drop_path=0.1, **TINY).train()
    m = _hole_mask(1, 32, 32)
    out = g(_image(1, 3, 32, 32) * m, m)
    out.seg.sum().backward()
    for p in (g.to_seg0.weight, g.dec_half.to_seg.weight, g.dec_full.to_seg.weight, g.conv_first.conv.weight,
              g.stage2.blocks[0].attn.q.weight, g.style_fc.weight):  # fmt: skip
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert g.to_rgb0.weight.grad is None  # the image head does not feed the segmentation


def test_generator_latent():
    torch.manual_seed(0)
    g = SABRGenerator(use_latent=True, latent_dim=32, n_mapping=2, **TINY)
    assert g.style_dim == 48
    x = _image(1, 3, 32, 32)
    m = torch.ones(1, 1, 32, 32)
    g.eval()
    torch.testing.assert_close(g(x, m).rgb, g(x, m, z=torch.zeros(1, 32)).rgb)
    assert not torch.allclose(g(x, m).rgb, g(x, m, z=torch.randn(1, 32)).rgb)
    w = g.latent(1, None, x.device, x.dtype).detach().requires_grad_(True)
    g(x, m, w=w).rgb.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_generator_bad_config_and_sizes(tiny_generator):
    with pytest.raises(ConfigError, match="60"):
        tiny_generator(_image(1, 3, 60, 64), torch.ones(1, 1, 60, 64))
    with pytest.raises(ConfigError, match="spatial_dims=2 only"):
        SABRGenerator(spatial_dims=3, **TINY)
    with pytest.raises(ConfigError):
        SABRGenerator(**{**TINY, "heads": 3})
    with pytest.raises(ConfigError):
        SABRGenerator(**{**TINY, "depths": (1, 1)})
    with pytest.raises(DataError):
        tiny_generator(_image(1, 1, 64, 64), torch.ones(1, 1, 64, 64))
    with pytest.raises(DataError):
        tiny_generator(_image(1, 3, 64, 64), torch.ones(1, 1, 32, 32))
    with pytest.raises(ConfigError):
        build_sabrnet("huge")
    with pytest.raises(ConfigError):
        build_sabrnet("tiny", image_size=64, bogus=1)


def test_reference_dims_shapes_at_64():
    torch.manual_seed(0)
    net = build_sabrnet("reference", n_classes=2, image_size=64).eval()
    g = net.generator
    assert (g.dim, g.heads, g.depths, g.windows, g.use_latent) == (180, 6, (2, 3, 4, 3, 2), (8, 16, 16, 16, 8), True)
    with torch.no_grad():
        out = g(_image(1, 3, 64, 64), torch.ones(1, 1, 64, 64))
    assert out.rgb.shape == (1, 3, 64, 64) and out.seg.shape == (1, 2, 64, 64)
    assert out.features.shape == (1, 180, 64, 64) and out.features_half.shape == (1, 180, 32, 32)
    assert len(g.style_convs) == 2 and g.style_dim == 540


# ---------------------------------------------------------------------------------------------------- SABRNet
def test_sabrnet_outputs():
    torch.manual_seed(0)
    net = build_sabrnet("tiny", n_classes=2, image_size=64).eval()
    with torch.no_grad():
        out = net(_image(1, 3, 64, 64))
    assert isinstance(out, SABRNetOutput)
    assert out.seg.shape == (1, 2, 64, 64)
    assert out.boundary.shape == (1, 2, 64, 64)
    assert out.direction.shape == (1, 8, 64, 64)
    assert out.rgb.shape == (1, 3, 64, 64)
    assert isinstance(net.heads, BoundaryHeads) and net.heads.in_channels == 32
    assert set(k.split(".")[0] for k in net.state_dict()) == {"generator", "heads"}
    bare = SABRNet(net.generator, with_heads=False).eval()
    o = bare(_image(1, 3, 32, 32))
    assert o.boundary is None and o.direction is None and o.seg.shape == (1, 2, 32, 32)
    custom = SABRNet(net.generator, BoundaryHeads(32, hidden=8)).eval()
    assert custom(_image(1, 3, 32, 32), torch.ones(1, 1, 32, 32)).direction.shape == (1, 8, 32, 32)
    assert build_sabrnet("tiny", image_size=64, with_heads=False).heads is None


def test_cpu_profile_size():
    net = build_sabrnet("cpu", image_size=128)
    n_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    assert n_bytes <= 20e6
    assert net.generator.dim == 32 and len(net.generator.style_convs) == 3


# ---------------------------------------------------------------------------------------------------- §5
def test_image_discriminator():
    torch.manual_seed(0)
    d = ImageDiscriminator(3, 64, channel_base=256, channel_max=16)
    x = _image(3, 3, 64, 64).requires_grad_(True)  # batch not divisible by the group size 4
    y = d(x)
    assert y.shape == (3, 1)
    (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True)  # R1 needs input gradients
    assert grad.shape == x.shape
    ref = ImageDiscriminator(3, 256)
    assert [b.conv1.out_channels for b in ref.blocks] == [256, 512, 512, 512, 512, 512]
    assert ref.fc.in_features == 8192 and ref.from_rgb.out_channels == 128
    with pytest.raises(DataError):
        d(_image(1, 3, 32, 32))
    with pytest.raises(ConfigError):
        ImageDiscriminator(3, 64, channels=[8, 8])
    with pytest.raises(ConfigError, match="spatial_dims=2 only"):
        ImageDiscriminator(3, 64, spatial_dims=3)


def test_seg_discriminator_and_builders():
    torch.manual_seed(0)
    d = SegDiscriminator(5, ndf=8, n_layers=3, n_scales=3)
    out = d(torch.randn(1, 5, 32, 32))
    assert len(out) == 3 and all(len(scale) == 5 for scale in out)
    assert [f.shape[1] for f in out[0]] == [8, 16, 32, 64, 1]
    assert out[0][-1].shape[-1] > out[1][-1].shape[-1] > out[2][-1].shape[-1]
    with pytest.raises(DataError):
        d(torch.randn(2, 4, 64, 64))
    d_img, d_seg = build_discriminators("tiny", n_classes=2, image_size=64)
    assert d_img(_image(1, 3, 64, 64)).shape == (1, 1)
    assert d_seg(torch.randn(1, 5, 32, 32))[0][-1].shape[:2] == (1, 1)
    with pytest.raises(ConfigError):
        build_discriminators("huge", 2, 64)


def test_profiles_table():
    assert set(sn.SABRNET_PROFILES) == {"reference", "cpu", "tiny"}
