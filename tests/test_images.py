# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The 2D image/mask data layer (labelless.data.images): discovery, grey/RGB loading, pools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data_dir
from labelless.data.images import (
    ImageFolderPool,
    find_image_mask_pairs,
    find_mask,
    list_images,
    load_grey,
    load_rgb,
)
from labelless.errors import DataError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_image_mask_pairs_mixed_extensions(tmp_path):
    z = np.zeros((4, 4), np.uint8)
    for name in ("case10", "case2", "case1"):
        _png(tmp_path / "images" / f"{name}.png", z)
    _png(tmp_path / "images" / "photo3.jpg", z)
    _png(tmp_path / "masks" / "case1.gif", z)
    _png(tmp_path / "masks" / "case2.png", z)
    _png(tmp_path / "masks" / "case10.png", z)
    _png(tmp_path / "masks" / "photo3.png", z)
    _png(tmp_path / "masks" / "orphan.png", z)
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    res = find_image_mask_pairs(tmp_path / "images", tmp_path / "masks")
    assert [p["name"] for p in res.pairs] == ["case1", "case2", "case10", "photo3"]  # natural order
    assert res.pairs[0]["label"].endswith("case1.gif") and res.pairs[3]["image"].endswith("photo3.jpg")
    assert res.images_without_mask == []
    assert list(list_images(tmp_path / "images")) == ["case1", "case2", "case10", "photo3"]


def test_image_mask_pairs_missing_and_stems(tmp_path):
    z = np.zeros((4, 4), np.uint8)
    _png(tmp_path / "images" / "ISIC_0001.jpg", z)
    _png(tmp_path / "images" / "ISIC_0002.jpg", z)
    _png(tmp_path / "masks" / "ISIC_0001_segmentation.png", z)
    with pytest.raises(DataError, match=r"images: 1 image\(s\) have no mask .*ISIC_0002\.jpg"):
        find_image_mask_pairs(tmp_path / "images", tmp_path / "masks")
    res = find_image_mask_pairs(tmp_path / "images", tmp_path / "masks", allow_missing_masks="true")
    assert [p.name for p in res.images_without_mask] == ["ISIC_0002.jpg"]
    assert [p["name"] for p in res.labelled()] == ["ISIC_0001"]
    # only the plain stem: the ISIC mask is not found
    assert find_mask(tmp_path / "masks", "ISIC_0001") is None
    found = find_mask(tmp_path / "masks", "ISIC_0001", ("{id}", "{id}_segmentation"))
    assert found.name == "ISIC_0001_segmentation.png"
    unl = find_image_mask_pairs(tmp_path / "images", None)
    assert all(p["label"] is None for p in unl.pairs) and unl.images_without_mask == []
    with pytest.raises(DataError, match="mask folder does not exist"):
        find_image_mask_pairs(tmp_path / "images", tmp_path / "labels")
    _png(tmp_path / "images" / "ISIC_0001.png", z)
    with pytest.raises(DataError, match="two images with the id 'ISIC_0001'"):
        find_image_mask_pairs(tmp_path / "images", tmp_path / "masks")


def test_masks_beside_images_exclude_the_image(tmp_path):
    """Layout A (images and masks in one folder): the image itself is never its own mask."""
    z = np.zeros((4, 4), np.uint8)
    img = _png(tmp_path / "1.png", z)
    assert find_mask(tmp_path, "1", exclude=img) is None
    _png(tmp_path / "1.gif", z)
    assert find_mask(tmp_path, "1", exclude=img).name == "1.gif"


def test_grey_and_rgb_loading(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    p = _png(tmp_path / "c.png", rgb)
    g = load_grey(p, size=None)
    assert g.shape == (1, 6, 8)
    np.testing.assert_allclose(float(g[0, 0, 0]), (0.299 * 255 + 0.587 * 128) / 255, atol=1e-5)
    c = load_rgb(p, size=4)
    assert c.shape == (3, 4, 4) and float(c.max()) <= 1.0
    grey = _png(tmp_path / "g.png", np.full((5, 5), 51, np.uint8))
    np.testing.assert_allclose(load_grey(grey, size=None).numpy(), 0.2, atol=1e-6)
    np.testing.assert_allclose(load_rgb(grey, size=None).numpy(), 0.2, atol=1e-6)
    with pytest.raises(DataError, match="missing.png"):
        load_grey(tmp_path / "missing.png")


def test_pool_uses_the_pair_rules(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    _png(tmp_path / "images" / "a.png", np.full((8, 8, 3), 100, np.uint8))
    _png(tmp_path / "images" / "b.jpg", np.full((8, 8, 3), 100, np.uint8))
    _png(tmp_path / "masks" / "a_segmentation.png", m)
    _png(tmp_path / "masks" / "b_mask.png", m)
    pool = ImageFolderPool(tmp_path / "images", size=8, masks=tmp_path / "masks", grid=4)
    assert pool.image_ids == ["a", "b"] and pool.support_ids == ["a", "b"]
    assert pool.mask_path("b").name == "b_mask.png"


def test_shared_2d_folders():
    ddti = find_image_mask_pairs(shared_data_dir("ddti") / "images", shared_data_dir("ddti") / "masks")
    assert len(ddti) == 223 and all(p["label"].endswith(".gif") for p in ddti.pairs)
    isic = find_image_mask_pairs(shared_data_dir("isic2016") / "images", shared_data_dir("isic2016") / "masks")
    assert len(isic) == 127 and isic.pairs[0]["image"].endswith(".jpg")
