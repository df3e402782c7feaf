# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""HC18 head circumference from a mask (labelless.semisup.hc): ellipse fit, Ramanujan perimeter, grid mapping."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import shared_data_dir
from labelless.errors import ConfigError, DataError
from labelless.semisup.hc import (
    Ellipse,
    ellipse_circumference,
    ellipse_mask,
    fit_ellipse,
    fit_ellipse_points,
    hc_errors,
    head_circumference_mm,
)


def _nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].numpy() > 0.5


def test_ramanujan_circumference():
    assert ellipse_circumference(1.0, 1.0) == pytest.approx(2 * math.pi)
    assert ellipse_circumference(10.0, 0.0) == pytest.approx(40.0, rel=1e-3)  # flat ellipse: 4a
    # numerical perimeter of a = 3, b = 1
    t = np.linspace(0, 2 * np.pi, 200001)
    exact = np.sum(np.hypot(np.diff(3 * np.cos(t)), np.diff(np.sin(t))))
    assert ellipse_circumference(3.0, 1.0) == pytest.approx(exact, rel=1e-6)
    assert np.allclose(ellipse_circumference(np.array([1.0, 2.0]), np.array([1.0, 2.0])), [2 * np.pi, 4 * np.pi])


@pytest.mark.parametrize("method", ["contour", "moments"])
@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 125.0])
def test_drawn_ellipse_gives_its_circumference(method, angle_deg):
    true = Ellipse(210.3, 150.7, 100.0, 60.0, math.radians(angle_deg))
    mask = ellipse_mask((300, 400), true)
    fitted = fit_ellipse(mask, method)
    assert fitted.a >= fitted.b
    assert fitted.circumference == pytest.approx(true.circumference, rel=0.01)
    assert (fitted.cx, fitted.cy) == pytest.approx((true.cx, true.cy), abs=0.5)
    assert fitted.a == pytest.approx(100.0, rel=0.01) and fitted.b == pytest.approx(60.0, rel=0.01)
    assert min(abs(fitted.angle - true.angle), math.pi - abs(fitted.angle - true.angle)) < math.radians(1)
    assert head_circumference_mm(mask, 0.2, method=method) == pytest.approx(0.2 * true.circumference, rel=0.01)


@pytest.mark.parametrize("method", ["contour", "moments"])
def test_mask_on_network_grid_is_mapped_to_the_original_grid(method):
    true = Ellipse(400.3, 270.7, 250.0, 170.0, math.radians(110))
    original = ellipse_mask((540, 800), true)
    small = _nearest(original, (256, 256))  # non-uniform scale, like a 256×256 network output
    hc = head_circumference_mm(small, 0.1, original_size=(540, 800), method=method)
    assert hc == pytest.approx(0.1 * true.circumference, rel=0.01)
    back = fit_ellipse(torch.from_numpy(small)[None], method, original_size=(540, 800))  # tensors work too
    assert (back.cx, back.cy) == pytest.approx((true.cx, true.cy), abs=2.0)
    # without the original size the 256 grid is taken as is: a clearly wrong (smaller) circumference
    assert head_circumference_mm(small, 0.1, method=method) < 0.6 * hc


def test_anisotropic_pixel_size():
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 100.2) ** 2 + (xx - 99.7) ** 2 <= 50.0**2
    hc = head_circumference_mm(disk, (1.0, 2.0))  # rows 1 mm, columns 2 mm: a 100 × 50 mm ellipse
    assert hc == pytest.approx(ellipse_circumference(100.0, 50.0), rel=0.01)


def test_largest_component_holes_and_empty():
    true = Ellipse(60.0, 50.0, 30.0, 20.0, 0.3)
    mask = ellipse_mask((100, 130), true).astype(np.uint8) * 255
    mask[45:55, 55:65] = 0  # a hole
    mask[2:6, 120:126] = 255  # a small separate blob
    fitted = fit_ellipse(mask)
    assert fitted.circumference == pytest.approx(true.circumference, rel=0.01)
    assert fit_ellipse(np.zeros((20, 20), np.uint8)) is None
    assert math.isnan(head_circumference_mm(np.zeros((20, 20)), 0.1))
    probs = ellipse_mask((100, 130), true) * 0.9  # float probabilities thresholded at 0.5
    assert fit_ellipse(probs).circumference == pytest.approx(true.circumference, rel=0.01)


def test_point_fit_and_bad_inputs():
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    a, b, th = 8.0, 3.0, 0.7
    pts = np.stack(
        [
            5 + a * np.cos(t) * np.cos(th) - b * np.sin(t) * np.sin(th),
            -2 + a * np.cos(t) * np.sin(th) + b * np.sin(t) * np.cos(th),
        ],
        axis=1,
    )
    e = fit_ellipse_points(pts)
    assert (e.cx, e.cy, e.a, e.b, e.angle) == pytest.approx((5, -2, a, b, th), abs=1e-6)
    assert fit_ellipse_points(np.stack([t, 2 * t], axis=1)) is None  # collinear
    assert fit_ellipse_points(pts[:4]) is None
    with pytest.raises(ConfigError):
        fit_ellipse(ellipse_mask((50, 50), e), method="hough")
    with pytest.raises(ConfigError):
        head_circumference_mm(np.ones((5, 5)), 0.0)
    with pytest.raises(DataError):
        fit_ellipse(np.ones((2, 5, 5)))


def test_hc_errors():
    out = hc_errors([100.0, 152.0, float("nan")], [101.0, 150.0, 120.0], names=["a", "b", "c"])
    assert out["n"] == 3 and out["n_failed"] == 1
    assert out["mean_abs_diff_mm"] == pytest.approx(1.5)
    assert out["mean_diff_mm"] == pytest.approx(0.5)
    assert out["per_image"][0] == {"name": "a", "pred_mm": 100.0, "ref_mm": 101.0, "diff_mm": -1.0, "abs_diff_mm": 1.0}
    assert out["per_image"][2]["abs_diff_mm"] is None
    assert hc_errors([float("nan")], [1.0])["mean_abs_diff_mm"] is None
    with pytest.raises(DataError):
        hc_errors([1.0, 2.0], [1.0])


@pytest.mark.realdata
def test_hc18_ground_truth_masks_match_the_csv():
    root = shared_data_dir("hc18") / "labeled"
    with (root / "pixel_size_and_hc.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:5]
    for row in rows:
        mask = np.asarray(Image.open(root / "masks" / row["filename"]))
        ref, ps = float(row["head circumference (mm)"]), float(row["pixel size(mm)"])
        assert head_circumference_mm(mask, ps) == pytest.approx(ref, abs=3.0), row["filename"]
        small = _nearest(mask > 0, (256, 256))  # as a network on the 256 grid would predict it
        assert head_circumference_mm(small, ps, original_size=mask.shape) == pytest.approx(ref, abs=3.0)
