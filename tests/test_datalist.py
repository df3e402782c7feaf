# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""MONAI datalists, 2D image/mask folders and label loading with label maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized
from PIL import Image

from conftest import shared_data_dir
from labelless.data.datalist import binary_label_map, find_image_mask_pairs, load_datalist, read_label
from labelless.data.presets import get_preset
from labelless.errors import DataError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_load_datalist_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    for n in ("a", "b"):
        (tmp_path / "imgs" / f"{n}.nii.gz").write_bytes(b"x")
        (tmp_path / "imgs" / f"{n}_seg.nii.gz").write_bytes(b"x")
    spec = {
        "training": [{"image": "imgs/a.nii.gz", "label": "imgs/a_seg.nii.gz", "case": 1}],
        "validation": [{"image": "imgs/b.nii.gz", "label": "imgs/b_seg.nii.gz"}],
        "broken": [{"image": "imgs/missing.nii.gz"}],
    }
    js = tmp_path / "dataset.json"
    js.write_text(json.dumps(spec))
    tr = load_datalist(js)
    assert tr == [{"image": str(tmp_path / "imgs/a.nii.gz"), "label": str(tmp_path / "imgs/a_seg.nii.gz"), "case": 1}]
    assert load_datalist(js, "validation")[0]["label"] == str(tmp_path / "imgs/b_seg.nii.gz")
    with pytest.raises(DataError, match=r"dataset\.json.*'test'"):
        load_datalist(js, "test")
    with pytest.raises(DataError, match=r"missing\.nii\.gz does not exist"):
        load_datalist(js, "broken")
    assert load_datalist(js, "broken", check_files=False)[0]["image"].endswith("missing.nii.gz")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: cannot parse"):
        load_datalist(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_datalist(tmp_path / "none.json")


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
    res = find_image_mask_pairs(tmp_path)
    assert [p["name"] for p in res.pairs] == ["case1", "case2", "case10", "photo3"]  # natural order
    assert res.pairs[0]["label"].endswith("case1.gif") and res.pairs[3]["image"].endswith("photo3.jpg")
    assert [p.name for p in res.masks_without_image] == ["orphan.png"]
    assert res.images_without_mask == []


def test_image_mask_pairs_missing_and_suffix(tmp_path):
    z = np.zeros((4, 4), np.uint8)
    _png(tmp_path / "images" / "ISIC_0001.jpg", z)
    _png(tmp_path / "images" / "ISIC_0002.jpg", z)
    _png(tmp_path / "masks" / "ISIC_0001_segmentation.png", z)
    with pytest.raises(DataError, match=r"1 images have no mask: ISIC_0002\.jpg"):
        find_image_mask_pairs(tmp_path, mask_suffix="_segmentation")
    res = find_image_mask_pairs(tmp_path, mask_suffix="_segmentation", allow_missing_masks=True)
    assert [p.name for p in res.images_without_mask] == ["ISIC_0002.jpg"]
    assert [p["name"] for p in res.labelled()] == ["ISIC_0001"]
    unl = find_image_mask_pairs(tmp_path, masks_dir=None)
    assert all(p["label"] is None for p in unl.pairs) and unl.images_without_mask == []
    with pytest.raises(DataError, match="mask folder does not exist"):
        find_image_mask_pairs(tmp_path, masks_dir="labels")
    _png(tmp_path / "images" / "ISIC_0001.png", z)
    with pytest.raises(DataError, match="two images share the name 'ISIC_0001'"):
        find_image_mask_pairs(tmp_path, mask_suffix="_segmentation")


LABEL_CASES = [
    ("binary_255", np.array([[0, 255], [255, 0]], np.uint8), {"255": 1}, [[0, 1], [1, 0]]),
    ("binary_helper", np.array([[0, 255], [255, 0]], np.uint8), binary_label_map(255), [[0, 1], [1, 0]]),
    ("identity", np.array([[0, 2], [1, 0]], np.uint8), None, [[0, 2], [1, 0]]),
]


@parameterized.expand(LABEL_CASES)
def test_read_label_maps_png(_, raw, label_map, expected):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = _png(Path(d) / "m.png", raw)
        lab = read_label(p, label_map)
        assert lab.array.dtype == np.int16 and lab.shape == (1, 2, 2)
        np.testing.assert_array_equal(lab.array[0], expected)


def test_read_label_cmr_float_and_errors(tmp_path):
    raw = np.zeros((3, 4, 5), np.float64)
    raw[0, 1, 1], raw[1, 2, 2], raw[2, 3, 3] = 200.0, 500.0000001, 600.0
    p = tmp_path / "label_3.nii.gz"
    nib.save(nib.Nifti1Image(raw.transpose(2, 1, 0), np.eye(4)), str(p))
    lab = read_label(p, get_preset("cmr").label_map)
    assert lab.array[0, 1, 1] == 1 and lab.array[1, 2, 2] == 2 and lab.array[2, 3, 3] == 3
    assert set(np.unique(lab.array)) == {0, 1, 2, 3}
    lab2 = read_label(p, {"200": 1, "500": 2, "600": 3})  # config form: JSON keys, 0 implied
    np.testing.assert_array_equal(lab2.array, lab.array)
    with pytest.raises(DataError, match=r"label_3\.nii\.gz.*\[500, 600\]"):
        read_label(p, {"200": 1})


def test_read_label_threshold(tmp_path):
    p = _png(tmp_path / "resized.png", np.array([[0, 127], [128, 255]], np.uint8))
    np.testing.assert_array_equal(read_label(p, threshold=128).array[0], [[0, 0], [1, 1]])
    with pytest.raises(DataError, match=r"resized\.png.*\[127, 128\]"):
        read_label(p, {"255": 1})


def test_shared_2d_folders():
    ddti = find_image_mask_pairs(shared_data_dir("ddti"))
    assert len(ddti) == 223 and all(p["label"].endswith(".gif") for p in ddti.pairs)
    isic = find_image_mask_pairs(shared_data_dir("isic2016"))
    assert len(isic) == 127 and isic.pairs[0]["image"].endswith(".jpg")
    mask = read_label(isic.pairs[0]["label"], {"255": 1})
    assert set(np.unique(mask.array)) <= {0, 1}
