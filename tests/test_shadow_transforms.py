# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the SABR-Net shadow imitation (sabrnet.md §3, §11): free-form masks, acoustic shadows, inference masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from scipy import ndimage

from labelless.errors import ConfigError, DataError
from labelless.transforms.shadow import (
    AcousticShadowConfig,
    InferenceKeepMaskd,
    RandShadow,
    RandShadowD,
    RandShadowd,
    RandShadowDict,
    ShadowGeometry,
    acoustic_shadow,
    beam_coordinates,
    default_geometry,
    estimate_geometry,
    freeform_hole_mask,
    inference_keep_mask,
    ramp_keep_mask,
    valid_data_mask,
)

APEX = (128.0, -30.0)
THETA = math.radians(35.0)


def _fan(
    size: int = 256, apex: tuple[float, float] = APEX, theta: float = THETA, r_min: float = 45.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A sector scan in [0, 1]: Rayleigh speckle inside |φ| ≤ θ, r_min ≤ r ≤ 270, black outside; and its support."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - apex[0], yy - apex[1])
    phi = np.arctan2(xx - apex[0], yy - apex[1])
    inside = (np.abs(phi) <= theta) & (r >= r_min) & (r <= 270.0)
    img = np.clip(rng.rayleigh(0.25, (size, size)), 0.0, 1.0).astype(np.float32) * inside
    return img, inside


def _to_pm1(x01: np.ndarray, channels: int = 3) -> torch.Tensor:
    return torch.from_numpy(x01 * 2.0 - 1.0)[None].repeat(channels, 1, 1)


def _geometry(params: dict) -> ShadowGeometry:
    g = dict(params["geometry"])
    g["apex"] = None if g["apex"] is None else tuple(g["apex"])
    return ShadowGeometry(**g)


# ---------------------------------------------------------------------------------------------------- mode A
def test_freeform_statistics_match_reference():
    rng = np.random.RandomState(0)
    ratios = np.array([1.0 - freeform_hole_mask(rng).mean() for _ in range(2000)])
    assert ratios.min() > 0 and ratios.max() < 1
    stats = (ratios.mean(), np.median(ratios), np.percentile(ratios, 10), np.percentile(ratios, 90))
    np.testing.assert_allclose(stats, (0.220, 0.196, 0.046, 0.428), atol=0.02)


@pytest.mark.parametrize("shape", [(100, 180), (64, 64), (300, 120)])
def test_freeform_other_shapes(shape):
    rng = np.random.RandomState(1)
    for _ in range(5):
        m = freeform_hole_mask(rng, shape=shape)
        assert m.shape == shape and m.dtype == np.float32
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert 0 < m.mean() < 1
    assert freeform_hole_mask(rng, size=128).shape == (128, 128)
    with pytest.raises(ConfigError):
        freeform_hole_mask(rng, size=4)


def test_freeform_transform_mask_and_determinism():
    x = torch.rand(3, 96, 128) * 2 - 1
    t = RandShadow("freeform")
    outs = []
    for _ in range(2):
        t.set_random_state(7)
        outs.append(t(x))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert torch.equal(a, b)
    img, keep, soft = outs[0]
    assert img.shape == (3, 96, 128) and keep.shape == (1, 96, 128) and soft.shape == (1, 96, 128)
    assert img.dtype == keep.dtype == soft.dtype == torch.float32
    assert set(torch.unique(keep).tolist()) <= {0.0, 1.0}
    assert torch.equal(soft, 1 - keep)
    assert torch.equal(img, x * keep)  # holes become 0 (mid-grey)
    assert t.last_params["mode"] == "freeform" and t.last_params["applied"]
    assert t.last_params["hole_ratio"] == pytest.approx(1 - keep.mean().item())
    json.dumps(t.last_params)
    t.set_random_state(8)
    keep8 = t(x)[1]
    assert not torch.equal(keep8, keep)
    # randomize=False re-applies the last mask (to another image of the same size)
    assert torch.equal(t(torch.ones(1, 96, 128), randomize=False)[1], keep8)


def test_not_applied_and_metatensor():
    x = MetaTensor(torch.rand(1, 32, 40) * 2 - 1, meta={"filename_or_obj": "a.png"})
    t = RandShadow("acoustic", prob=0.0)
    img, keep, soft = t(x)
    assert torch.equal(img.as_tensor(), x.as_tensor()) and img.meta["filename_or_obj"] == "a.png"
    assert torch.equal(keep, torch.ones(1, 32, 40)) and torch.equal(soft, torch.zeros(1, 32, 40))
    assert t.last_params == {"mode": "acoustic", "applied": False, "hole_ratio": 0.0}


def test_dict_transform_labels_untouched_params_and_collate():
    lab = torch.randint(0, 2, (1, 64, 64))
    data = {"image": torch.rand(3, 64, 64) * 2 - 1, "label": lab}
    assert RandShadowD is RandShadowDict is RandShadowd
    t1 = RandShadowd(keys="image", mode="freeform").set_random_state(3)
    t2 = RandShadowd(keys="image", mode="freeform").set_random_state(3)
    d1, d2 = t1(data), t2(data)
    assert d1["label"] is lab
    for key in ("image", "image_shadow_mask", "image_shadow_soft"):
        assert torch.equal(d1[key], d2[key])
    assert torch.equal(d1["image"], data["image"] * d1["image_shadow_mask"])
    params = d1["image_shadow_params"]
    assert params["mode"] == "freeform" and params["applied"] and params["geometry"] == "none"
    assert json.loads(params["json"]) == t1.shadow.last_params
    # acoustic samples with different numbers of shadows still collate into a batch
    fan, _ = _fan(64, apex=(32.0, -8.0), r_min=12.0)
    ta = RandShadowd(keys="image", mode="acoustic", geometry="sector").set_random_state(0)
    batch = list_data_collate([ta({"image": _to_pm1(fan), "label": lab}) for _ in range(4)])
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image_shadow_mask"].shape == (4, 1, 64, 64)
    assert len(batch["image_shadow_params"]["json"]) == 4
    assert all(len(json.loads(j)["shadows"]) >= 1 for j in batch["image_shadow_params"]["json"])
    # prob 0: identity outputs, params say not applied
    d0 = RandShadowd(keys="image", prob=0.0)(data)
    assert torch.equal(d0["image"], data["image"]) and not d0["image_shadow_params"]["applied"]
    assert torch.equal(d0["image_shadow_mask"], torch.ones(1, 64, 64))


def test_dict_transform_same_shadow_for_all_keys():
    x = torch.rand(1, 48, 48) * 2 - 1
    d = RandShadowd(keys=["a", "b"], mode="freeform").set_random_state(0)({"a": x, "b": x.clone()})
    assert torch.equal(d["a_shadow_mask"], d["b_shadow_mask"]) and torch.equal(d["a"], d["b"])


# ---------------------------------------------------------------------------------------------------- mode B
def test_geometry_auto_sector_and_linear():
    img, inside = _fan()
    v = valid_data_mask(img)
    assert v.dtype == bool and (v != inside).mean() < 0.03
    g = estimate_geometry(v)
    assert g.kind == "sector"
    assert math.dist(g.apex, APEX) < 4.0, g.apex
    assert g.half_angle == pytest.approx(THETA, abs=math.radians(1.5))
    assert abs(g.centre) < math.radians(1.0)
    assert g.r_min == pytest.approx(45.0, abs=3.0)
    rect = np.zeros((256, 256), np.float32)
    rect[20:230, 40:200] = np.random.RandomState(1).rayleigh(0.25, (210, 160))
    g_rect = estimate_geometry(valid_data_mask(rect))
    assert g_rect.kind == "linear" and g_rect.apex is None
    assert 17 <= g_rect.r_min <= 20 and 229 <= g_rect.r_max <= 232  # V is widened by the smoothing
    assert estimate_geometry(valid_data_mask(np.full((64, 64), 0.5, np.float32))).kind == "linear"
    with pytest.raises(DataError, match="empty"):
        estimate_geometry(np.zeros((16, 16), bool))


def test_valid_mask_dark_fluid_and_hull_option():
    img, inside = _fan()
    img[100:160, 170:256] = 0.0  # dark fluid reaching the right edge of the fan
    fluid = inside & (np.arange(256)[None, :] >= 170) & (np.arange(256)[:, None] >= 100)
    fluid = ndimage.binary_erosion(fluid & (np.arange(256)[:, None] < 160), iterations=3)
    v = valid_data_mask(img)
    assert not v[fluid].any()  # the spec's V: not a hole, it touches the surround
    hull = valid_data_mask(img, convex_hull=True)
    assert hull[fluid].mean() > 0.99 and hull[inside].mean() > 0.99
    assert (hull & ~inside).sum() < 0.1 * inside.sum()  # the region above the near-field arc, the smoothing margin
    hull = valid_data_mask(img, convex_hull=True, stride=2)  # the transforms' default valid_stride
    _, _, soft, params = acoustic_shadow(img, np.random.RandomState(0), valid_hull=True)
    assert params["geometry"]["kind"] == "sector" and not soft[~hull].any()


def test_default_geometry_cached():
    g = default_geometry("sector", (200, 100))
    assert g is default_geometry("sector", (200, 100))
    assert g.apex == (50.0, -20.0) and g.r_min == pytest.approx(20.0)
    assert g.half_angle == pytest.approx(math.atan2(50.0, 219.0))
    r, phi = beam_coordinates(g, (200, 100))
    assert r.shape == (200, 100) and not r.flags.writeable
    assert phi[199, 50] == pytest.approx(0.0) and phi[199, 99] > 0
    lin = default_geometry("linear", (200, 100))
    assert lin.kind == "linear" and lin.r_max == 199.0


def test_valid_mask_stride_moves_the_edge_by_one_pixel_at_most():
    img, _ = _fan()
    full = valid_data_mask(img)
    for stride, size in ((2, 256), (2, 255), (3, 256)):
        fast = valid_data_mask(img[:size, :size], stride=stride)
        ref = full[:size, :size] if size == 256 else valid_data_mask(img[:size, :size])
        assert fast.shape == (size, size) and fast.dtype == bool
        diff = fast != ref
        near_edge = ndimage.binary_dilation(ref, iterations=stride) & ~ndimage.binary_erosion(ref, iterations=stride)
        assert diff.sum() < 0.02 * ref.sum() and not (diff & ~near_edge).any()
    tiny = np.full((12, 12), 0.5, np.float32)  # under 8 * stride: full resolution
    assert np.array_equal(valid_data_mask(tiny, stride=2), valid_data_mask(tiny))
    with pytest.raises(ConfigError, match="valid_stride"):
        AcousticShadowConfig(valid_stride=0)


@pytest.mark.parametrize("geometry", ["auto", "sector", "linear"])
def test_acoustic_shadow_inside_valid_and_bounded(geometry):
    img, _ = _fan()
    v = valid_data_mask(img, stride=2)  # the transforms' default valid_stride
    rng = np.random.RandomState(0)
    for _ in range(4):
        out, keep, soft, params = acoustic_shadow(img, rng, geometry=geometry)
        strengths = [s["strength"] for s in params["shadows"]]
        assert 1 <= len(strengths) <= 2
        assert soft.min() >= 0 and soft.max() <= 1 - np.prod([1 - s for s in strengths]) + 1e-6
        assert soft.max() > 0.5
        assert not soft[~v].any()  # shadows lie inside V
        assert np.array_equal(keep, (soft < 0.3).astype(np.float32))
        off = soft == 0
        assert np.array_equal(out[off], img[off])  # unchanged outside the shadow
        assert (out[soft > 0.5] <= img[soft > 0.5] + 0.1).all()
        json.dumps(params)


def test_acoustic_shadow_starts_at_onset_and_reaches_far_field():
    img, _ = _fan()
    v = valid_data_mask(img, stride=2)
    for seed in range(6):
        _, _, soft, params = acoustic_shadow(img, np.random.RandomState(seed), n_max=1)
        (sh,) = params["shadows"]
        g = _geometry(params)
        assert g.kind == "sector"
        r, phi = beam_coordinates(g, img.shape)
        assert soft.max() <= sh["strength"] + 1e-6
        beam = (np.abs(phi - sh["centre"]) <= sh["width"] / 2 - sh["edge"]) & v
        assert beam.sum() > 20
        assert not soft[beam & (r < sh["onset"])].any()
        started = beam & (r >= sh["onset"] + 1) & (r < sh["onset"] + 2)
        assert (soft[started] > 0).all()
        full = beam & (r >= sh["onset"] + sh["onset_length"])
        np.testing.assert_allclose(soft[full], sh["strength"], atol=1e-5)  # ρ = 0: full strength to the far field
        deepest = np.unravel_index(np.argmax(np.where(beam, r, -1)), r.shape)
        assert soft[deepest] == pytest.approx(sh["strength"], abs=1e-5)


def test_far_field_decay():
    img, _ = _fan()
    _, _, soft, params = acoustic_shadow(img, np.random.RandomState(2), n_max=1, rho=1.0, geometry="sector")
    (sh,) = params["shadows"]
    r, phi = beam_coordinates(_geometry(params), img.shape)
    beam = np.abs(phi - sh["centre"]) <= 0.2 * sh["width"]
    deep = beam & (r >= sh["onset"] + sh["onset_length"])
    order = np.argsort(r[deep])
    assert np.all(np.diff(soft[deep][order]) <= 1e-5)
    assert soft[deep].max() > soft[deep].min() + 0.1


@pytest.mark.parametrize("geometry", ["auto", "linear"])
def test_reflector_rule_finds_planted_line(geometry):
    if geometry == "auto":
        img, inside = _fan()
        yy, xx = np.mgrid[0:256, 0:256]
        r = np.hypot(xx - APEX[0], yy - APEX[1])
        img[inside & (r >= 149) & (r <= 152)] = 1.0  # a bright arc at depth ≈ 150.5 from the apex
        lo, hi = 151.0, 155.5
    else:
        img = np.clip(np.random.RandomState(4).rayleigh(0.25, (200, 160)), 0, 1).astype(np.float32)
        img[99:103] = 1.0  # a bright line at rows 99..102
        lo, hi = 101.0, 105.5
    for seed in range(4):
        _, _, soft, params = acoustic_shadow(img, np.random.RandomState(seed), geometry=geometry, p_reflector=1.0)
        assert params["geometry"]["kind"] == ("sector" if geometry == "auto" else "linear")
        for sh in params["shadows"]:
            assert sh["rule"] == "reflector"
            assert lo <= sh["onset"] <= hi, sh["onset"]


def test_reflector_rule_falls_back_without_peak():
    img = np.full((64, 64), 0.5, np.float32)
    _, _, _, params = acoustic_shadow(img, np.random.RandomState(0), p_reflector=1.0)
    assert {s["rule"] for s in params["shadows"]} == {"random_fallback"}
    g = params["geometry"]
    for s in params["shadows"]:
        assert g["r_min"] + 0.15 * 63 - 1e-6 <= s["onset"] <= g["r_min"] + 0.75 * 63 + 1e-6


def test_acoustic_transform_channels_params_and_determinism():
    img, _ = _fan(128, apex=(64.0, -15.0), r_min=22.0)
    x = _to_pm1(img)
    t = RandShadow("acoustic", geometry="auto", n_max=2)
    t.set_random_state(5)
    out, keep, soft = t(x)
    t.set_random_state(5)
    out2, keep2, soft2 = t(x)
    assert torch.equal(out, out2) and torch.equal(keep, keep2) and torch.equal(soft, soft2)
    assert out.shape == (3, 128, 128) and keep.shape == soft.shape == (1, 128, 128)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # the same attenuation on every channel
    assert torch.equal(out[:, soft[0] == 0], x[:, soft[0] == 0])
    assert out.min() >= -1.0 - 1e-6
    p = t.last_params
    assert p["mode"] == "acoustic" and p["applied"] and p["geometry"]["kind"] == "sector"
    assert len(p["geometry"]["apex"]) == 2
    assert set(p["shadows"][0]) >= {"width", "centre", "onset", "strength", "rule", "edge", "onset_length"}
    assert p["hole_ratio"] == pytest.approx(1 - keep.mean().item())
    json.dumps(p)
    # a black image: no valid data, nothing drawn
    out_b, keep_b, _ = RandShadow("acoustic")(-torch.ones(1, 32, 32))
    assert torch.equal(out_b, -torch.ones(1, 32, 32)) and keep_b.min() == 1


def test_bad_inputs():
    t = RandShadow("acoustic")
    with pytest.raises(DataError, match="image.*NaN"):
        t(torch.full((1, 32, 32), float("nan")))
    with pytest.raises(DataError, match="image.*shape"):
        t(torch.zeros(32, 32))
    with pytest.raises(DataError, match="image.*smaller than 8"):
        t(torch.zeros(1, 5, 32))
    with pytest.raises(DataError, match="image"):
        acoustic_shadow(np.zeros((2, 2, 4, 4)), np.random.RandomState(0))
    with pytest.raises(DataError, match="image"):
        RandShadowd(keys="image")({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(ConfigError):
        RandShadow("hard")
    with pytest.raises(ConfigError):
        RandShadow(prob=1.5)
    with pytest.raises(ConfigError):
        RandShadow("acoustic", geometry="convex")
    with pytest.raises(ConfigError):
        AcousticShadowConfig(strength=(0.9, 0.6))
    with pytest.raises(ConfigError):
        acoustic_shadow(np.zeros((16, 16)), np.random.RandomState(0), AcousticShadowConfig(), n_max=1)


# ---------------------------------------------------------------------------------------------------- inference
def test_inference_keep_masks():
    x = torch.linspace(-1, 1, 256).view(1, 16, 16).repeat(3, 1, 1)
    ones = inference_keep_mask(x)
    assert ones.shape == (1, 16, 16) and ones.dtype == torch.float32 and ones.min() == 1
    ramp = inference_keep_mask(x, "intensity_ramp")
    x01 = ((x[0] + 1) / 2).numpy()
    np.testing.assert_array_equal(ramp[0].numpy(), ramp_keep_mask(x01))
    np.testing.assert_array_equal(ramp[0].numpy(), (x01 >= 30.5 / 255).astype(np.float32))
    assert ramp_keep_mask(np.zeros((8, 8)))[0, 0] == 0 and ramp_keep_mask(np.full((8, 8), 60 / 255))[0, 0] == 1
    assert inference_keep_mask(torch.zeros(2, 3, 16, 16), "intensity_ramp").shape == (2, 1, 16, 16)
    d = InferenceKeepMaskd(keys="image")({"image": x})
    assert torch.equal(d["image_shadow_mask"], torch.ones(1, 16, 16))
    with pytest.raises(ConfigError):
        inference_keep_mask(x, "none")
    with pytest.raises(DataError, match="image"):
        inference_keep_mask(torch.zeros(16, 16))


@pytest.mark.parametrize("geometry", ["auto", "sector"])
def test_geometry_cache_gives_the_same_draws(geometry):
    img, _ = _fan()
    x = torch.from_numpy(np.stack([img] * 3) * 2 - 1)
    other = torch.flip(x, dims=[-1])
    cached = RandShadow("acoustic", geometry=geometry).set_random_state(3)
    plain = RandShadow("acoustic", geometry=geometry, geometry_cache=0).set_random_state(3)
    for t in (x, other, x, other, x):
        a, b = cached(t), plain(t)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
        assert cached.last_params == plain.last_params
    assert (cached.geometry_cache.hits, cached.geometry_cache.misses, len(cached.geometry_cache)) == (3, 2, 2)
    assert len(plain.geometry_cache) == 0 and plain.geometry_cache.misses == 5
    small = RandShadow("acoustic", geometry=geometry, geometry_cache=1).set_random_state(3)
    for t in (x, other, x):
        small(t)
    assert small.geometry_cache.hits == 0 and len(small.geometry_cache) == 1  # LRU of one entry
    with pytest.raises(ConfigError, match="cache size"):
        RandShadow("acoustic", geometry_cache=-1)
